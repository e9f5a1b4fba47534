"""SPADE renderer: generator, style encoder, multi-scale discriminator, configs and presets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils import parametrize

from fundus_studio.labels import MICROANEURYSM, NUM_CLASSES, RETINA
from fundus_studio.models.spade import (
    SPADE_PRESETS,
    MultiscalePatchDiscriminator,
    PatchDiscriminatorConfig,
    SpadeGenerator,
    SpadeGeneratorConfig,
    StyleEncoder,
    StyleEncoderConfig,
    fold_spectral_norm,
    label_pyramid,
    reparameterize,
)

SMOKE = SPADE_PRESETS["smoke"]


def _label(size: int, *, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """A random one-hot map ``(B, NUM_CLASSES, size, size)`` in blobs of 4×4 pixels."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, NUM_CLASSES, (batch, size // 4, size // 4), generator=g)
    idx = idx.repeat_interleave(4, 1).repeat_interleave(4, 2)
    return F.one_hot(idx, NUM_CLASSES).permute(0, 3, 1, 2).float()


def _generator(cfg: SpadeGeneratorConfig, seed: int = 0) -> SpadeGenerator:
    torch.manual_seed(seed)
    return SpadeGenerator(cfg).eval()


def _small(**overrides: object) -> SpadeGeneratorConfig:
    return dataclasses.replace(SMOKE.generator, **overrides)


GENERATOR_CONFIGS = {
    "smoke": SMOKE.generator,
    "no-latent": _small(z_dim=0),
    "all-spade": _small(norm=("spade",) * 3, spade_hidden=(8, 8, 4), spade_kernel=(3, 3, 3)),
    "all-clade": _small(norm=("clade",) * 3, spade_hidden=(0, 0, 0)),
    "batch-stats-nearest": _small(param_free_norm="batch", label_downsample="nearest", spectral_norm=False),
    "deep-two-blocks": _small(channels=(16, 16, 8, 8, 4), blocks=(2, 1, 1, 2, 1), norm=("spade",) * 3 + ("clade",) * 2,
                              spade_hidden=(8, 8, 8, 0, 0), spade_kernel=(3, 3, 1, 1, 1), z_grid=1),
}


@pytest.mark.parametrize("name", list(GENERATOR_CONFIGS))
@pytest.mark.parametrize("size", [64, 128])
def test_generator_shapes(name: str, size: int) -> None:
    g = _generator(GENERATOR_CONFIGS[name])
    with torch.no_grad():
        out = g(_label(size, batch=2), generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, size, size)
    assert out.abs().max() <= 1.0 and torch.isfinite(out).all()


def test_generator_accepts_non_square_and_channels_last() -> None:
    g = _generator(SMOKE.generator).to(memory_format=torch.channels_last)
    label = _label(64)[:, :, :, :48].contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        out = g(label, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 64, 48)


def test_seeded_render_is_deterministic_and_the_seed_matters() -> None:
    g = _generator(SMOKE.generator)
    label = _label(64)
    with torch.no_grad():
        a = g(label, generator=torch.Generator().manual_seed(1))
        b = g(label, generator=torch.Generator().manual_seed(1))
        c = g(label, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c).abs().max() > 1e-3


def test_seeded_construction_is_deterministic() -> None:
    label, z = _label(64), torch.zeros(1, SMOKE.generator.z_dim)
    with torch.no_grad():
        a = _generator(SMOKE.generator, seed=3)(label, z)
        b = _generator(SMOKE.generator, seed=3)(label, z)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_inference_path_matches_autograd_path() -> None:
    """The in-place shortcuts taken under inference_mode must not change the result."""
    g = _generator(GENERATOR_CONFIGS["deep-two-blocks"])
    label, z = _label(64, batch=2), torch.randn(2, SMOKE.generator.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        fast = g(label, z)
    slow = g(label.requires_grad_(), z)
    assert slow.requires_grad
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-4, atol=1e-5)
    # Single-image statistics take another code path (batch-norm kernel): same answer per image.
    with torch.inference_mode():
        single = g(label[1:].detach(), z[1:])
    torch.testing.assert_close(single, fast[1:], rtol=1e-4, atol=1e-5)


def test_style_encoder_path() -> None:
    torch.manual_seed(0)
    enc = StyleEncoder(SMOKE.encoder).eval()
    g = _generator(SMOKE.generator)
    photo = torch.rand(1, 3, 96, 96) * 2 - 1  # any size: the encoder resizes to its input_size
    with torch.no_grad():
        mu, logvar = enc(photo)
        assert mu.shape == logvar.shape == (1, SMOKE.encoder.z_dim)
        z1 = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(5))
        z1_again = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(5))
        z2 = reparameterize(mu, logvar, generator=torch.Generator().manual_seed(6))
        label = _label(64)
        r1, r1_again, r2 = g(label, z1), g(label, z1_again), g(label, z2)
        r_mean = g(label, mu)  # "in the style of" without sampling
    torch.testing.assert_close(r1, r1_again, rtol=0, atol=0)
    assert (r1 - r2).abs().max() > 1e-4
    assert r_mean.shape == (1, 3, 64, 64)


def test_discriminator_returns_features_per_scale() -> None:
    cfg = SMOKE.discriminator
    d = MultiscalePatchDiscriminator(cfg)
    label, photo = _label(64, batch=2), torch.rand(2, 3, 64, 64) * 2 - 1
    outs = d(label, photo)
    assert len(outs) == cfg.num_scales
    for scale, feats in enumerate(outs):
        assert len(feats) == cfg.num_layers + 1
        logits = feats[-1]
        assert logits.shape[:2] == (2, 1)
        # Each coarser scale sees the input downsampled 2×: its patch map is smaller.
        if scale > 0:
            assert logits.shape[-1] < outs[scale - 1][-1].shape[-1]
    # Gradients reach the discriminator and, through the photo, the generator.
    g = SpadeGenerator(SMOKE.generator)
    fake = g(label, generator=torch.Generator().manual_seed(0))
    loss = sum(f[-1].mean() for f in d(label, fake))
    loss.backward()
    assert g.head.weight.grad is not None and g.head.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.parameters())


def test_discriminator_rejects_mismatched_inputs() -> None:
    d = MultiscalePatchDiscriminator(SMOKE.discriminator)
    with pytest.raises(ValueError, match="differ"):
        d(_label(64), torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="photo"):
        d(_label(64), torch.zeros(1, 1, 64, 64))


def test_fold_spectral_norm_keeps_outputs() -> None:
    torch.manual_seed(0)
    g = SpadeGenerator(SMOKE.generator)
    enc = StyleEncoder(SMOKE.encoder)
    d = MultiscalePatchDiscriminator(SMOKE.discriminator)
    label, photo = _label(64), torch.rand(1, 3, 64, 64) * 2 - 1
    # A few training-mode passes move the power-iteration vectors away from their initial state.
    for _ in range(3):
        g(label, generator=torch.Generator().manual_seed(0))
        enc(photo)
        d(label, photo)
    models = (g.eval(), enc.eval(), d.eval())
    assert all(any(parametrize.is_parametrized(m) for m in model.modules()) for model in models)
    with torch.no_grad():
        before = (g(label, generator=torch.Generator().manual_seed(0)), enc(photo)[0], d(label, photo)[0][-1])
        for model in models:
            fold_spectral_norm(model)
        after = (g(label, generator=torch.Generator().manual_seed(0)), enc(photo)[0], d(label, photo)[0][-1])
    assert not any(parametrize.is_parametrized(m) for model in models for m in model.modules())
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_one_pixel_lesion_reaches_the_output_at_full_resolution() -> None:
    """A 1-px microaneurysm changes the render at its own pixel (CLADE at the top level)."""
    g = _generator(_small(z_dim=0))
    with torch.no_grad():
        for block in g.levels[-1].blocks:  # a trained class table: make the classes' γ, β differ
            block.modulation.conv.weight.add_(
                torch.randn(block.modulation.conv.weight.shape, generator=torch.Generator().manual_seed(0))
            )
    idx = torch.full((1, 64, 64), RETINA)
    base = F.one_hot(idx, NUM_CLASSES).permute(0, 3, 1, 2).float()
    idx[0, 30, 41] = MICROANEURYSM
    with_ma = F.one_hot(idx, NUM_CLASSES).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        diff = (g(with_ma) - g(base)).abs().sum(1)[0]
    assert diff[30, 41] > 1e-3
    assert diff[30, 41] >= diff.max() * 0.5  # the change is centred on the lesion, not diffuse


def test_label_pyramid_keeps_thin_structures_as_fractions() -> None:
    label = torch.zeros(1, 2, 8, 8)
    label[:, 0] = 1
    label[:, 0, 3, 5], label[:, 1, 3, 5] = 0, 1  # one pixel of class 1
    area = label_pyramid(label, levels=3, mode="area")
    nearest = label_pyramid(label, levels=3, mode="nearest")
    assert [t.shape[-1] for t in area] == [2, 4, 8]
    assert area[0][0, 1].sum() == pytest.approx(1 / 16)  # still present, as a 1/16 fraction
    torch.testing.assert_close(area[0].sum(1), torch.ones(1, 2, 2))
    assert nearest[0][0, 1].sum() == 0  # official nearest subsampling drops it


def test_config_round_trips_through_asdict_with_lists() -> None:
    for preset in SPADE_PRESETS.values():
        for cfg in (preset.generator, preset.encoder, preset.discriminator):
            as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}
            assert type(cfg)(**as_json) == cfg


def test_presets_build_and_demo_renders() -> None:
    demo = SPADE_PRESETS["demo-cpu"]
    g = _generator(demo.generator)
    assert demo.encoder is not None and demo.encoder.z_dim == demo.generator.z_dim
    with torch.inference_mode():
        out = g(_label(64), generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3, 64, 64)
    # Modulation: SPADE at the low levels (semantics), CLADE at the two highest (cost).
    assert demo.generator.norm[0] == "spade" and demo.generator.norm[-1] == "clade"


@pytest.mark.slow
def test_paper_preset_matches_official_spade_size() -> None:
    cfg = dataclasses.replace(SPADE_PRESETS["paper-512"].generator, num_classes=11, z_dim=0)
    n = sum(p.numel() for p in SpadeGenerator(cfg).parameters())
    assert n == pytest.approx(92.3e6, rel=0.01)  # PERF.md: official ngf 64, 11 classes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": ()}, "at least one level"),
        ({"blocks": (1, 1)}, "blocks has 2 entries"),
        ({"norm": ("spade", "spade", "batch")}, r"norm\[2\]"),
        ({"spade_hidden": (8, 0, 0)}, r"spade_hidden\[1\]"),
        ({"spade_kernel": (3, 2, 1)}, "odd"),
        ({"channels": (16, 0, 8)}, "positive"),
        ({"z_dim": -1}, "z_dim"),
        ({"label_downsample": "bilinear"}, "label_downsample"),
        ({"param_free_norm": "layer"}, "param_free_norm"),
    ],
)
def test_invalid_generator_config_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _small(**kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (StyleEncoderConfig, {"input_size": 100, "num_layers": 3}, "multiple"),
        (StyleEncoderConfig, {"width": 0}, "width"),
        (PatchDiscriminatorConfig, {"norm": "batch"}, "norm"),
        (PatchDiscriminatorConfig, {"num_scales": 0}, "num_scales"),
    ],
)
def test_invalid_other_configs_raise(cls: type, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cls(**kwargs)


def test_wrong_inputs_raise() -> None:
    g = _generator(SMOKE.generator)  # stride 4
    with pytest.raises(ValueError, match="multiples of the network stride 4"):
        g(_label(64)[:, :, :62])
    with pytest.raises(ValueError, match=rf"\(B, {NUM_CLASSES}, H, W\)"):
        g(_label(64)[:, :5])
    with pytest.raises(ValueError, match="expected z of shape"):
        g(_label(64), torch.zeros(1, SMOKE.generator.z_dim + 1))
    with pytest.raises(ValueError, match="takes no latent"):
        _generator(_small(z_dim=0))(_label(64), torch.zeros(1, 8))
    demo = _generator(SPADE_PRESETS["demo-cpu"].generator)
    with pytest.raises(ValueError, match="stride 32"):
        demo(_label(48))


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    from fundus_studio.checkpoint import load_model, save_model

    torch.manual_seed(0)
    for model in (SpadeGenerator(SMOKE.generator), StyleEncoder(SMOKE.encoder), MultiscalePatchDiscriminator(SMOKE.discriminator)):
        model.eval()
        path = save_model(model, tmp_path / type(model).__name__)
        loaded = load_model(path, expected=type(model))
        assert loaded.config == model.config
        label, photo = _label(64), torch.rand(1, 3, 64, 64) * 2 - 1
        with torch.no_grad():
            if isinstance(model, SpadeGenerator):
                a, b = model(label, torch.zeros(1, 8)), loaded(label, torch.zeros(1, 8))
            elif isinstance(model, StyleEncoder):
                a, b = model(photo)[0], loaded(photo)[0]
            else:
                a, b = model(label, photo)[0][-1], loaded(label, photo)[0][-1]
        torch.testing.assert_close(a, b, rtol=0, atol=0)
