"""The recorded operating point: per-class thresholds in a U-Net checkpoint are what
``training.evaluate_segmentation`` and ``pipeline.Segmenter`` threshold at (0.5 without them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fundus_studio import labels
from fundus_studio.checkpoint import save_model
from fundus_studio.errors import CheckpointError
from fundus_studio.models.unet import UNET_PRESETS, UNet, UNetConfig
from fundus_studio.phantom import write_phantoms
from fundus_studio.pipeline import Segmenter
from training.evaluate_segmentation import evaluate_checkpoint, main

SIZE = 64
CLASSES = (labels.HARD_EXUDATE, labels.HAEMORRHAGE)


def constant_unet(p: float) -> UNet:
    """A smoke U-Net whose every output pixel is sigmoid⁻¹(p) for both classes."""
    unet = UNet(UNetConfig(**{**UNET_PRESETS["smoke"].__dict__, "classes": CLASSES}))
    with torch.no_grad():
        unet.outc.weight.zero_()
        unet.outc.bias.fill_(float(np.log(p / (1 - p))))
    return unet.eval()


@pytest.fixture(scope="module")
def test_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantoms(tmp_path_factory.mktemp("op") / "test", count=6, grade=4, size=SIZE, seed=3, progress=False)


def _save(tmp_path: Path, name: str, thresholds: dict[str, float] | None) -> Path:
    data = {"resolution": SIZE, **({"thresholds": thresholds} if thresholds is not None else {})}
    return save_model(constant_unet(0.7), tmp_path / name, data=data, step=1, created_by="tests")


def test_evaluation_thresholds_each_class_where_its_checkpoint_says(tmp_path: Path, test_set: Path) -> None:
    """Every pixel scores 0.7: at 0.5 every lesion pixel is found; at a recorded 0.8 none is."""
    old = evaluate_checkpoint(_save(tmp_path, "old", None), test_set)  # a checkpoint from before operating points
    assert old["thresholds"] == {"hard_exudate": 0.5, "haemorrhage": 0.5} and old["threshold_source"] == "default 0.5"
    assert old["metrics"]["pooled"]["recall"] == {"hard_exudate": 1.0, "haemorrhage": 1.0}
    new = evaluate_checkpoint(_save(tmp_path, "new", {"hard_exudate": 0.8}), test_set)
    assert new["thresholds"] == {"hard_exudate": 0.8, "haemorrhage": 0.5} and new["threshold_source"] == "checkpoint"
    assert new["metrics"]["pooled"]["recall"] == {"hard_exudate": 0.0, "haemorrhage": 1.0}
    forced = evaluate_checkpoint(tmp_path / "new.safetensors", test_set, threshold=0.5)  # --threshold overrides
    assert forced["metrics"]["pooled"]["recall"]["hard_exudate"] == 1.0 and forced["threshold_source"] == "given"


def test_evaluation_cli_prints_the_thresholds_and_refuses_a_bad_record(tmp_path: Path, test_set: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--checkpoint", str(_save(tmp_path, "new", {"hard_exudate": 0.8})), "--data", str(test_set)]) == 0
    assert "thresholds hard_exudate 0.8, haemorrhage 0.5 (checkpoint)" in capsys.readouterr().out
    assert main(["--checkpoint", str(_save(tmp_path, "bad", {"hard_exudate": 1.5})), "--data", str(test_set)]) == 2
    err = capsys.readouterr().err
    assert "bad.json" in err and "data.thresholds['hard_exudate'] must lie in (0, 1)" in err


def test_segmenter_uses_the_recorded_thresholds(tmp_path: Path) -> None:
    photo, fov = np.full((SIZE, SIZE, 3), 120, np.uint8), np.ones((SIZE, SIZE), bool)
    old = Segmenter.from_checkpoint(_save(tmp_path, "old", None))
    assert old.thresholds == (0.5, 0.5)
    assert all(m.all() for m in old.segment_preprocessed(photo, fov).values())
    new = Segmenter.from_checkpoint(_save(tmp_path, "new", {"hard_exudate": 0.8, "vessel": 0.3}))  # extras ignored
    assert new.thresholds == (0.8, 0.5)
    masks = new.segment_preprocessed(photo, fov)
    assert not masks[labels.HARD_EXUDATE].any() and masks[labels.HAEMORRHAGE].all()
    with pytest.raises(CheckpointError, match="bad.json"):
        Segmenter.from_checkpoint(_save(tmp_path, "bad", {"haemorrhage": 0}))
    with pytest.raises(ValueError, match="one per class"):
        Segmenter(constant_unet(0.7), threshold=(0.5,))
