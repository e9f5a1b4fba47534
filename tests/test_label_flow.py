"""The two-stage label-map generator: flow-matching prior, label upsampler, their trainers and sampler."""

from __future__ import annotations

import dataclasses

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fundus_studio import labels
from fundus_studio.checkpoint import load_model
from fundus_studio.errors import CheckpointError, InputError
from fundus_studio.models.label_flow import FlowUNet, LabelFlowConfig, LabelUpsampler, UpsamplerConfig
from fundus_studio.pipeline import (
    FlowSamplingConfig,
    LabelSampler,
    LabelSamplingConfig,
    flow_state_to_fractions,
    integrate_flow,
)
from test_acgan import write_blob_dataset
from training import label_flow, label_upsampler

TINY_FLOW = LabelFlowConfig(resolution=16, channels=(8, 16), emb_dim=16)
TINY_UP = UpsamplerConfig(coarse_resolution=16, factor=4, channels=(8, 8, 8), coarse_blocks=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_blob_dataset(tmp_path_factory.mktemp("data") / "blobs")


def seeded(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (zero-initialised output layers too) small seeded random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return module.eval()


# --- networks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
def test_flow_unet_maps_shapes_and_accepts_the_unconditional_grade(batch: int) -> None:
    model = seeded(FlowUNet(TINY_FLOW))
    x = torch.randn(batch, labels.NUM_CLASSES, 16, 16)
    grades = torch.full((batch,), labels.NUM_GRADES)  # "no grade"
    v = model(x, torch.rand(batch), grades)
    assert v.shape == x.shape and torch.isfinite(v).all()
    v_graded = model(x, torch.rand(batch), torch.zeros(batch, dtype=torch.long))
    assert not torch.allclose(v, v_graded)


def test_flow_unet_starts_at_zero_velocity() -> None:
    """The output layer is zero-initialised: an untrained prior predicts no motion."""
    v = FlowUNet(TINY_FLOW)(torch.randn(2, labels.NUM_CLASSES, 16, 16), torch.rand(2), torch.tensor([0, 4]))
    assert torch.count_nonzero(v) == 0


def test_untrained_upsampler_equals_bilinear_upsampling() -> None:
    """Its output is a correction to log(bilinear fractions): zero-initialised, it is bilinear upsampling."""
    frac = torch.rand(2, labels.NUM_CLASSES, 16, 16).softmax(dim=1)
    logits = LabelUpsampler(TINY_UP)(frac)
    bilinear = F.interpolate(frac, scale_factor=4.0, mode="bilinear", align_corners=False)
    assert logits.shape == (2, labels.NUM_CLASSES, 64, 64)
    assert torch.equal(logits.argmax(1), bilinear.argmax(1))


@pytest.mark.parametrize("kwargs", [{"channels": ()}, {"resolution": 12}, {"channels": (6, 8), "norm_groups": 4},
                                    {"resolution": 8, "channels": (8, 8, 8)}])
def test_flow_config_rejects_impossible_architectures(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LabelFlowConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"factor": 1, "channels": (8,)}, {"factor": 6}, {"channels": (8, 8)},
                                    {"coarse_resolution": 48}])
def test_upsampler_config_rejects_impossible_architectures(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        UpsamplerConfig(**kwargs)


# --- sampling -----------------------------------------------------------------------------------


def test_flow_state_to_fractions_is_a_distribution_per_pixel() -> None:
    x = torch.randn(3, labels.NUM_CLASSES, 8, 8) * 3
    x[0, :, 0, 0] = -5.0  # every class below zero: falls back to uniform, never NaN
    f = flow_state_to_fractions(x)
    assert (f >= 0).all() and torch.allclose(f.sum(dim=1), torch.ones(3, 8, 8))
    assert torch.allclose(f[0, :, 0, 0], torch.full((labels.NUM_CLASSES,), 1 / labels.NUM_CLASSES))


def test_integrate_flow_follows_a_constant_velocity() -> None:
    """A model whose velocity is x1 − x0 for fixed x1 carries the noise straight to x1."""
    target = torch.full((1, labels.NUM_CLASSES, 16, 16), -1.0)
    target[:, labels.RETINA] = 1.0

    class Straight(torch.nn.Module):
        config = TINY_FLOW

        def forward(self, x: torch.Tensor, t: torch.Tensor, grade: torch.Tensor) -> torch.Tensor:
            return (target - x) / (1 - t.view(-1, 1, 1, 1))  # the velocity that reaches target at t = 1

    noise = torch.randn(1, labels.NUM_CLASSES, 16, 16, generator=torch.Generator().manual_seed(0))
    frac = integrate_flow(Straight(), noise, torch.tensor([2]), config=FlowSamplingConfig(steps=4, guidance=2.0))
    assert torch.allclose(frac[:, labels.RETINA], torch.ones(1, 16, 16), atol=1e-5)


def tiny_sampler(*, upsampler: bool = True) -> LabelSampler:
    return LabelSampler(seeded(FlowUNet(TINY_FLOW)), upsampler=seeded(LabelUpsampler(TINY_UP), 1) if upsampler else None,
                        config=LabelSamplingConfig(size=64, batch_size=3, upsample_batch=2,
                                                   flow=FlowSamplingConfig(steps=3)))


def test_flow_sampler_is_seeded_and_latent_i_does_not_depend_on_count() -> None:
    sampler = tiny_sampler()
    a = sampler.sample_grades([0, 3, 4, 1], seed=5)
    b = sampler.sample_grades([0, 3, 4, 1], seed=5)
    c = sampler.sample_grades([0], seed=5)
    assert a.shape == (4, 64, 64) and a.dtype == np.uint8
    assert np.array_equal(a, b) and np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], sampler.sample_grades([0], seed=6)[0])
    assert set(np.unique(a)) <= set(range(labels.NUM_CLASSES))
    assert (a[:, 0, 0] == labels.OUTSIDE).all()  # corners lie outside the clean circular FOV


def test_sampler_uses_the_upsampler_and_resizes_to_any_side() -> None:
    with_up, without = tiny_sampler(), tiny_sampler(upsampler=False)
    assert with_up.output_resolution == 64 and without.output_resolution == 16
    assert not np.array_equal(with_up.sample_grades([2], seed=0), without.sample_grades([2], seed=0))
    assert with_up.sample_grades([2], seed=0, size=40).shape == (1, 40, 40)  # area-downsampled probabilities


def test_the_vessel_tree_changes_only_vessel_pixels_of_the_argmax_map() -> None:
    tree = tiny_sampler()
    argmax = LabelSampler(tree.prior, upsampler=tree.upsampler,
                          config=dataclasses.replace(tree.config, vessel_tree=None))
    a, b = tree.sample_grades([0, 4], seed=3), argmax.sample_grades([0, 4], seed=3)
    changed = a != b
    assert changed.any()  # the tiny prior's vessel probability has tips: a tree was drawn
    vessel_related = (labels.VESSEL, labels.RETINA, labels.OPTIC_DISC)
    assert np.isin(a[changed], vessel_related).all() and np.isin(b[changed], vessel_related).all()


def test_sampler_refuses_an_upsampler_of_another_side() -> None:
    with pytest.raises(InputError, match="32"):
        LabelSampler(FlowUNet(TINY_FLOW), upsampler=LabelUpsampler(UpsamplerConfig(coarse_resolution=32, factor=2,
                                                                                   channels=(8, 8))))


@pytest.mark.parametrize("grades", [[], [5], [-1]])
def test_sampler_refuses_bad_grades(grades: list[int]) -> None:
    with pytest.raises(InputError):
        tiny_sampler().sample_grades(grades, seed=0)


# --- trainers -----------------------------------------------------------------------------------


def metric_steps(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


def test_flow_trainer_runs_resumes_and_exports_a_loadable_prior(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "flow"
    label_flow.train(label_flow.parse_args(["--data", str(dataset), "--out", str(run), "--preset", "smoke",
                                            "--steps", "2", "--set", "keep_every=2"]))
    path = label_flow.train(label_flow.parse_args(["--data", str(dataset), "--out", str(run), "--preset", "smoke",
                                                   "--steps", "4", "--set", "keep_every=2"]))
    assert metric_steps(run) == [1, 2, 3, 4]
    assert (run / "label_flow-000002.safetensors").is_file() and (run / "samples" / "step-000004.png").is_file()
    prior = load_model(path, expected=FlowUNet)
    assert prior.config.resolution == 16
    sampler = LabelSampler.from_checkpoint(path, config=LabelSamplingConfig(size=32, flow=FlowSamplingConfig(steps=2)))
    assert sampler.sample(grade=1, count=2, seed=0).shape == (2, 32, 32)


def test_flow_training_is_reproducible(dataset: Path, tmp_path: Path) -> None:
    paths = [label_flow.train(label_flow.parse_args(["--data", str(dataset), "--out", str(tmp_path / name),
                                                     "--preset", "smoke", "--steps", "3"])) for name in "ab"]
    a, b = (load_model(p, expected=FlowUNet).state_dict() for p in paths)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_upsampler_trainer_learns_beyond_bilinear_and_loads_into_a_sampler(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "up"
    args = ["--data", str(dataset), "--out", str(run), "--preset", "smoke", "--set", "model.coarse_resolution=16",
            "--set", "crop=32", "--set", "lr=0.01"]
    path = label_upsampler.train(label_upsampler.parse_args([*args, "--steps", "30", "--set", "log_every=5"]))
    with (run / "metrics.csv").open() as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert losses[-1] < losses[0]
    up = load_model(path, expected=LabelUpsampler)
    assert up.config.resolution == 64
    LabelSampler(FlowUNet(TINY_FLOW), upsampler=up)  # same coarse side: accepted


def test_prior_checkpoint_refuses_to_load_as_an_upsampler(dataset: Path, tmp_path: Path) -> None:
    path = label_flow.train(label_flow.parse_args(["--data", str(dataset), "--out", str(tmp_path / "f"),
                                                   "--preset", "smoke", "--steps", "1"]))
    with pytest.raises(CheckpointError, match="expected a LabelUpsampler"):
        LabelSampler.from_checkpoint(path, upsampler=path)


def test_thin_dice_is_zero_for_a_perfect_prediction_and_ignores_absent_classes() -> None:
    target = torch.full((1, 8, 8), labels.RETINA)
    target[0, 2:4, :] = labels.VESSEL
    perfect = F.one_hot(target, labels.NUM_CLASSES).permute(0, 3, 1, 2).float() * 50
    assert label_upsampler.thin_dice_loss(perfect, target) < 1e-3
    wrong = torch.zeros_like(perfect)
    wrong[:, labels.RETINA] = 50
    assert label_upsampler.thin_dice_loss(wrong, target) > 0.9
    assert label_upsampler.thin_dice_loss(perfect, torch.full((1, 8, 8), labels.RETINA)) == 0


def test_random_crops_are_aligned_to_the_coarse_grid() -> None:
    maps = torch.arange(64 * 64, dtype=torch.int32).view(1, 64, 64).repeat(3, 1, 1)
    crops = label_upsampler.random_crops(maps, torch.tensor([0, 1, 2, 0]), crop=16, align=8,
                                         generator=torch.Generator().manual_seed(0))
    assert crops.shape == (4, 16, 16)
    for c in crops:
        corner = int(min(c[0, 0], c[0, -1]))  # a flipped crop has its left corner on the right
        assert (corner // 64) % 8 == 0 and (corner % 64) % 8 == 0


def test_learning_rate_warms_up_then_decays_by_cosine_to_its_floor() -> None:
    from training.label_flow import TrainConfig, lr_factor
    constant = TrainConfig(steps=100, warmup=10)
    assert lr_factor(0, cfg=constant) == pytest.approx(0.1) and lr_factor(99, cfg=constant) == 1.0
    decayed = TrainConfig(steps=100, warmup=10, decay_start=60, lr_min=0.1)
    assert lr_factor(60, cfg=decayed) == 1.0
    assert lr_factor(80, cfg=decayed) == pytest.approx(0.55)  # half way down the cosine
    assert lr_factor(100, cfg=decayed) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="decay_start"):
        TrainConfig(steps=100, decay_start=100)


def test_sampling_batches_on_worker_threads_does_not_change_the_maps() -> None:
    parallel = tiny_sampler()
    assert parallel.config.workers is None and torch.get_num_threads() >= 1
    serial = LabelSampler(parallel.prior, upsampler=parallel.upsampler,
                          config=dataclasses.replace(parallel.config, workers=1))
    wide = LabelSampler(parallel.prior, upsampler=parallel.upsampler,
                        config=dataclasses.replace(parallel.config, workers=3))
    grades = [4, 3, 2, 4, 0, 1, 2]  # three prior batches of 3 (the last short), upsampler calls of 2
    before = torch.get_num_threads()
    maps = serial.sample_grades(grades, seed=4)
    assert wide.workers(batches=3) == min(3, before) and serial.workers(batches=3) == 1
    assert np.array_equal(wide.sample_grades(grades, seed=4), maps)
    assert np.array_equal(parallel.sample_grades(grades, seed=4), maps)
    assert torch.get_num_threads() == before  # the workers' thread share stays on their threads


def test_guidance_interval_guides_only_the_steps_it_covers() -> None:
    model = seeded(FlowUNet(TINY_FLOW))
    calls: list[int] = []
    model.register_forward_hook(lambda _m, args, _out: calls.append(args[0].shape[0]))
    noise = torch.randn(2, TINY_FLOW.num_classes, TINY_FLOW.resolution, TINY_FLOW.resolution,
                        generator=torch.Generator().manual_seed(0))
    grades = torch.tensor([1, 4])
    half = integrate_flow(model, noise, grades, config=FlowSamplingConfig(steps=4, guidance=2.0,
                                                                         guidance_interval=(0.0, 0.5)))
    assert calls == [4, 4, 2, 2]  # t = 0, 0.25 guided (both branches in one call), t = 0.5, 0.75 not
    never = integrate_flow(model, noise, grades, config=FlowSamplingConfig(steps=4, guidance=2.0,
                                                                          guidance_interval=(0.0, 0.0)))
    off = integrate_flow(model, noise, grades, config=FlowSamplingConfig(steps=4, guidance=1.0))
    full = integrate_flow(model, noise, grades, config=FlowSamplingConfig(steps=4, guidance=2.0,
                                                                         guidance_interval=(0.0, 1.0)))
    assert torch.equal(never, off) and not torch.allclose(half, off) and not torch.allclose(half, full)
    with pytest.raises(ValueError, match="guidance_interval"):
        FlowSamplingConfig(guidance_interval=(0.6, 0.4))
