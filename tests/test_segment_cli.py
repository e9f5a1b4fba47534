"""`fundus-studio segment` and `extract` with a U-Net checkpoint: lesions painted over FOV, disc and vessels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fundus_studio import cli, labels
from fundus_studio.checkpoint import save_model
from fundus_studio.imageio import read_label_map
from fundus_studio.models.unet import UNet, UNetConfig
from fundus_studio.phantom import write_phantoms

SIZE = 64


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = write_phantoms(tmp_path_factory.mktemp("ph") / "ph", count=1, grade=4, size=SIZE, seed=3, progress=False)
    return next((root / "images").iterdir())


def tiny_unet(folder: Path, *, depth: int = 2) -> Path:
    """A random U-Net for hard exudates whose output bias makes it predict the lesion everywhere."""
    torch.manual_seed(0)
    model = UNet(UNetConfig(classes=(labels.HARD_EXUDATE,), base_channels=4, depth=depth, max_channels=16))
    with torch.no_grad():
        model.outc.bias.fill_(20.0)
    return save_model(model, folder / "unet.safetensors")


def test_segment_paints_unet_lesions_over_the_classical_classes(tmp_path: Path, photo: Path) -> None:
    out = tmp_path / "label.png"
    ckpt = tiny_unet(tmp_path / "ck")
    assert cli.main(["segment", str(photo), "--out", str(out), "--checkpoint", str(ckpt), "--size", str(SIZE)]) == 0
    m = read_label_map(out)
    assert m.shape == (SIZE, SIZE)
    assert (m == labels.HARD_EXUDATE).sum() > 0.5 * (m != labels.OUTSIDE).sum()  # the U-Net's "everywhere", in the FOV
    assert (m[0, 0], m[-1, -1]) == (labels.OUTSIDE, labels.OUTSIDE)  # nothing outside the field of view


def test_extract_adds_lesions_only_with_a_checkpoint(tmp_path: Path, photo: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    tiny_unet(tmp_path / "ck")
    out = tmp_path / "label.png"
    base = ["extract", str(photo), "--out", str(out), "--size", str(SIZE)]
    assert cli.main([*base, "--checkpoints", str(tmp_path / "ck")]) == 0
    assert (read_label_map(out) == labels.HARD_EXUDATE).any()
    assert cli.main([*base, "--checkpoints", str(tmp_path / "ck"), "--no-lesions"]) == 0
    assert not np.isin(read_label_map(out), labels.LESIONS).any()
    assert cli.main([*base, "--checkpoints", str(tmp_path / "empty")]) == 0
    assert not np.isin(read_label_map(out), labels.LESIONS).any()
    assert "no U-Net checkpoint" in capsys.readouterr().out


def test_missing_corrupt_or_unfit_checkpoint_is_a_one_line_error(tmp_path: Path, photo: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "label.png"
    missing = tmp_path / "nowhere" / "unet.safetensors"
    assert cli.main(["segment", str(photo), "--out", str(out), "--checkpoint", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fundus-studio segment: error:" in err and "unet.json: missing" in err

    ckpt = tiny_unet(tmp_path / "bad")
    ckpt.write_bytes(b"not a safetensors file")
    assert cli.main(["extract", str(photo), "--out", str(out), "--checkpoints", str(ckpt.parent)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "corrupt" in err and "Traceback" not in err

    deep = tiny_unet(tmp_path / "deep", depth=5)  # stride 32: 80 px cannot be segmented
    assert cli.main(["segment", str(photo), "--out", str(out), "--checkpoint", str(deep), "--size", "80"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert not out.exists()
