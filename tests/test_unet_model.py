"""U-Net: shapes, class subsets, presets, invalid configs and inputs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from fundus_studio.labels import LESIONS, NUM_CLASSES
from fundus_studio.models.unet import UNET_PRESETS, UNet, UNetConfig


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
@pytest.mark.parametrize("size", [64, 128])
def test_shapes(upsample: str, norm: str, size: int) -> None:
    torch.manual_seed(0)
    cfg = UNetConfig(base_channels=4, depth=3, max_channels=16, upsample=upsample, norm=norm)
    out = UNet(cfg).eval()(torch.randn(2, 3, size, size))
    assert out.shape == (2, NUM_CLASSES, size, size)
    assert torch.isfinite(out).all()


def test_subset_of_classes_and_non_square_input() -> None:
    cfg = UNetConfig(classes=LESIONS, base_channels=4, depth=2)
    out = UNet(cfg).eval()(torch.randn(1, 3, 32, 48))
    assert out.shape == (1, len(LESIONS), 32, 48)


def test_seeded_construction_and_forward_are_deterministic() -> None:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        outs.append(UNet(UNET_PRESETS["smoke"]).eval()(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_paper_preset_matches_the_published_size() -> None:
    # PERF.md: the paper's U-Net (64 base channels, bilinear) has 17.3 M parameters.
    assert _params(UNet(UNET_PRESETS["paper-512"])) == pytest.approx(17.3e6, rel=0.01)


def test_demo_preset_is_much_lighter_than_the_paper() -> None:
    assert _params(UNet(UNET_PRESETS["demo-cpu"])) < _params(UNet(UNET_PRESETS["paper-512"])) / 2


def test_gradients_reach_the_first_layer() -> None:
    model = UNet(UNET_PRESETS["smoke"])
    model(torch.randn(2, 3, 32, 32)).square().mean().backward()
    assert model.inc.net[0].weight.grad is not None and model.inc.net[0].weight.grad.abs().sum() > 0


def test_config_round_trips_through_asdict_with_lists() -> None:
    cfg = UNetConfig(classes=(4, 5), base_channels=8)
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
    assert UNetConfig(**as_json) == cfg


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": ()}, "non-empty"),
        ({"classes": (NUM_CLASSES,)}, "taxonomy indices"),
        ({"classes": (4, 4)}, "distinct"),
        ({"depth": 0}, "depth"),
        ({"upsample": "nearest"}, "upsample"),
        ({"norm": "layer"}, "norm"),
        ({"base_channels": 32, "max_channels": 16}, "max_channels"),
    ],
)
def test_invalid_config_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        UNetConfig(**kwargs)


@pytest.mark.parametrize("shape", [(1, 3, 60, 64), (1, 3, 64, 36), (1, 1, 64, 64), (3, 64, 64)])
def test_wrong_input_raises(shape: tuple[int, ...]) -> None:
    model = UNet(UNetConfig(base_channels=4, depth=3))
    with pytest.raises(ValueError, match="UNet"):
        model(torch.randn(*shape))


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    from fundus_studio.checkpoint import load_model, save_model

    torch.manual_seed(0)
    model = UNet(UNetConfig(classes=LESIONS, base_channels=4, depth=2)).eval()
    loaded = load_model(save_model(model, tmp_path / "unet"), expected=UNet)
    assert loaded.config == model.config
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), loaded(x), rtol=0, atol=0)
