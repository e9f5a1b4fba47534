"""Inference checkpoints: safetensors + JSON, rebuilt without pickle; clear errors when broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fundus_studio.checkpoint import config_from_dict, config_to_dict, load_model, read_info, save_model
from fundus_studio.errors import CheckpointError
from fundus_studio.models import ACGANConfig, Discriminator, GradeClassifier, GradeClassifierConfig, Generator

TINY = ACGANConfig(resolution=16, z_dim=8, grade_dim=4, g_channels=8, g_max_channels=16, d_channels=8,
                   d_max_channels=16)


def _inputs(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    if isinstance(model, Generator):
        return torch.randn(3, TINY.z_dim, generator=g), torch.tensor([0, 2, 4])
    if isinstance(model, Discriminator):
        return (torch.rand(3, TINY.num_classes, 16, 16, generator=g).softmax(1),)
    return (torch.rand(3, model.config.num_classes, 32, 32, generator=g),)


def _outputs(model: torch.nn.Module) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model.eval()(*_inputs(model))
    return list(out) if isinstance(out, tuple) else [out]


@pytest.mark.parametrize("make", [lambda: Generator(TINY), lambda: Discriminator(TINY),
                                  lambda: GradeClassifier(GradeClassifierConfig(resolution=32, channels=8))])
def test_round_trip_gives_identical_outputs(tmp_path: Path, make) -> None:
    torch.manual_seed(0)
    model = make()
    path = save_model(model, tmp_path / "m", data={"dataset": "x"}, step=7, metrics={"loss": 1.5})
    assert path.name == "m.safetensors" and (tmp_path / "m.json").is_file()
    loaded = load_model(path)
    assert type(loaded) is type(model) and loaded.config == model.config
    for a, b in zip(_outputs(model), _outputs(loaded)):
        assert torch.equal(a, b)
    info = read_info(tmp_path / "m.json")
    assert info["step"] == 7 and info["data"] == {"dataset": "x"} and info["metrics"] == {"loss": 1.5}


def test_half_precision_storage_is_smaller_and_close(tmp_path: Path) -> None:
    torch.manual_seed(0)
    g = Generator(TINY)
    full = save_model(g, tmp_path / "full")
    half = save_model(g, tmp_path / "half", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    assert read_info(half)["dtype"] == "float16"
    a, b = _outputs(g)[0], _outputs(load_model(half))[0]
    assert torch.allclose(a, b, atol=1e-2) and not torch.equal(a, b)


def _saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_model(Generator(TINY), tmp_path / "g")


def _flip_byte(path: Path, offset_from_end: int = 10) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing_weights", "missing_json", "bad_json",
                                    "wrong_format", "foreign_class", "bad_config", "other_shape"])
def test_broken_checkpoints_raise_checkpoint_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = _saved(tmp_path)
    js = tmp_path / "g.json"
    info = json.loads(js.read_text())
    if damage == "flip":
        _flip_byte(path)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
        info.pop("sha256")  # the safetensors parser must catch it on its own
        js.write_text(json.dumps(info))
    elif damage == "missing_weights":
        path.unlink()
    elif damage == "missing_json":
        js.unlink()
    elif damage == "bad_json":
        js.write_text("{not json")
    elif damage == "wrong_format":
        js.write_text(json.dumps({**info, "format": "something-else"}))
    elif damage == "foreign_class":
        js.write_text(json.dumps({**info, "class": "os.system"}))
    elif damage == "bad_config":
        js.write_text(json.dumps({**info, "config": {**info["config"], "resolution": 15}}))
    elif damage == "other_shape":
        js.write_text(json.dumps({**info, "sha256": None, "config": {**info["config"], "g_channels": 16,
                                                                   "g_max_channels": 32}}))
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert "g." in str(err.value) and "regenerate" in str(err.value)


def test_expected_class_is_enforced(tmp_path: Path) -> None:
    path = save_model(Discriminator(TINY), tmp_path / "d")
    with pytest.raises(CheckpointError, match="expected a Generator"):
        load_model(path, expected=Generator)


def test_nested_config_round_trip() -> None:
    from training.acgan import TrainConfig

    cfg = TrainConfig(data=Path("a/b"), model=TINY, betas=(0.5, 0.9), export_to=None)
    back = config_from_dict(TrainConfig, json.loads(json.dumps(config_to_dict(cfg))))
    assert back == cfg and isinstance(back.betas, tuple) and isinstance(back.data, Path)
    with pytest.raises(ValueError, match="unknown fields"):
        config_from_dict(ACGANConfig, {"resolution": 32, "bogus": 1})
