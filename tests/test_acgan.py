"""The label-map ACGAN: networks, the trainer's run folder and resume, DDP, and label sampling."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fundus_studio import labels
from fundus_studio.dataset import DatasetWriter
from fundus_studio.errors import InputError
from fundus_studio.models.acgan import ACGANConfig, Discriminator, Generator
from fundus_studio.pipeline import LabelSampler, LabelSamplingConfig, fov_disc, probabilities_to_labels
from training import acgan, harness

ROOT = Path(__file__).resolve().parents[1]
DATA_SIZE = 64


def write_blob_dataset(root: Path, *, count: int = 20, seed: int = 0) -> Path:
    """A studio dataset of discs with lesion blobs whose number grows with the grade."""
    rng = np.random.default_rng(seed)
    s = DATA_SIZE
    yy, xx = np.mgrid[:s, :s]
    writer = DatasetWriter(root, size=s, created_by="tests")
    for i in range(count):
        grade = i % labels.NUM_GRADES
        m = np.full((s, s), labels.OUTSIDE, np.uint8)
        m[(yy - s / 2 + 0.5) ** 2 + (xx - s / 2 + 0.5) ** 2 < (0.45 * s) ** 2] = labels.RETINA
        for _ in range(3 * grade):
            cy, cx = rng.integers(s // 4, 3 * s // 4, 2)
            m[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(1, 4) ** 2] = rng.choice(labels.LESIONS)
        writer.add(sample_id=f"s{i:03d}", image=np.zeros((s, s, 3), np.uint8), label=m,
                   grade=None if i == count - 1 else grade, source="tests")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_blob_dataset(tmp_path_factory.mktemp("data") / "blobs")


def smoke(data: Path, out: Path, *extra: str) -> Path:
    cfg = acgan.parse_args(["--data", str(data), "--out", str(out), "--preset", "smoke", *extra])
    return acgan.train(cfg)


def metric_steps(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


# --- networks -------------------------------------------------------------------------------------

TINY = ACGANConfig(resolution=32, z_dim=16, grade_dim=4, g_channels=8, g_max_channels=32, d_channels=8,
                   d_max_channels=16)


@pytest.mark.parametrize("resolution", [16, 32, 64])
@pytest.mark.parametrize("batch", [1, 3])
def test_network_shapes(resolution: int, batch: int) -> None:
    cfg = ACGANConfig(resolution=resolution, z_dim=16, grade_dim=4, g_channels=8, g_max_channels=16,
                      d_channels=8, d_max_channels=16)
    g, d = Generator(cfg), Discriminator(cfg)
    logits = g(torch.randn(batch, 16), torch.randint(0, labels.NUM_GRADES, (batch,)))
    assert logits.shape == (batch, labels.NUM_CLASSES, resolution, resolution)
    realness, grade_logits = d(logits.softmax(1))
    assert realness.shape == (batch,) and grade_logits.shape == (batch, labels.NUM_GRADES)


def test_grade_conditions_the_generator_and_gradients_reach_it() -> None:
    torch.manual_seed(0)
    g, d = Generator(TINY), Discriminator(TINY)
    torch.nn.init.normal_(g.embed.weight)
    z = torch.randn(2, TINY.z_dim).repeat(2, 1)
    out = g(z, torch.tensor([0, 0, 4, 4]))
    assert not torch.allclose(out[:2], out[2:])
    _, grade_logits = d(out.softmax(1))
    torch.nn.functional.cross_entropy(grade_logits, torch.tensor([0, 0, 4, 4])).backward()
    assert g.embed.weight.grad is not None and g.embed.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [{"resolution": 48}, {"resolution": 4}, {"z_dim": 0}, {"g_channels": 12}])
def test_invalid_architecture_raises(bad: dict) -> None:
    with pytest.raises(ValueError):
        ACGANConfig(**{**TINY.__dict__, **bad})


def test_discriminator_has_spectral_norm_and_ratio_follows_widths() -> None:
    d = Discriminator(TINY)
    assert any("parametrizations" in k for k, _ in d.named_parameters())
    wide = ACGANConfig(**{**TINY.__dict__, "d_max_channels": 32})
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(Discriminator(wide)) > n(d)


def test_minibatch_stddev_lets_d_see_batch_variety() -> None:
    torch.manual_seed(0)
    d = Discriminator(TINY).eval()
    assert TINY.mbstd_group == 4 and d.mbstd_conv is not None
    x = torch.randn(8, labels.NUM_CLASSES, 32, 32).softmax(1)
    varied, _ = d(x)
    same = x.clone()
    same[1:4] = x[0]  # sample 0's group of four made identical: zero spread in that group
    collapsed, _ = d(same)
    assert not torch.allclose(varied[0], collapsed[0])
    # Groups are consecutive samples: the second group [4:8] does not see the first.
    assert torch.allclose(varied[4:], collapsed[4:])
    plain = Discriminator(ACGANConfig(**{**TINY.__dict__, "mbstd_group": 0})).eval()
    assert plain.mbstd_conv is None
    assert torch.allclose(plain(x)[0][0], plain(same)[0][0])


@pytest.mark.parametrize(("batch", "group", "expected"), [(8, 4, 4), (6, 4, 3), (1, 4, 1), (5, 4, 1)])
def test_minibatch_stddev_group_size(batch: int, group: int, expected: int) -> None:
    from fundus_studio.models.acgan import mbstd_group_size, minibatch_stddev

    assert mbstd_group_size(batch, group) == expected
    out = minibatch_stddev(torch.randn(batch, 3, 4, 4), group=group)
    assert out.shape == (batch, 4, 4, 4) and (out[:, 3] >= 0).all()


def test_batch_that_would_mix_reals_and_fakes_in_a_stddev_group_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        acgan.parse_args(["--data", str(tmp_path), "--out", str(tmp_path), "--batch", "6"])
    acgan.parse_args(["--data", str(tmp_path), "--out", str(tmp_path), "--batch", "6",
                      "--set", "model.mbstd_group=0"])


def test_within_grade_disagreement() -> None:
    maps = np.zeros((2, 3, 4, 4), np.uint8)
    assert acgan.within_grade_disagreement(maps) == 0.0
    maps[:, 0] = 1  # map 0 differs everywhere from maps 1 and 2: 2 of 3 pairs
    assert acgan.within_grade_disagreement(maps) == pytest.approx(2 / 3)


def test_straight_through_input_is_one_hot_with_gradients() -> None:
    logits = torch.randn(2, labels.NUM_CLASSES, 8, 8, requires_grad=True)
    x = acgan.to_d_input(logits, mode="straight-through")
    assert torch.allclose(x, (x > 0.5).float()) and torch.allclose(x.sum(1), torch.ones(2, 8, 8))
    (x * torch.randn_like(x)).sum().backward()
    assert logits.grad.abs().sum() > 0


# --- trainer ----------------------------------------------------------------------------------------


def test_smoke_run_writes_the_run_folder(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    ckpt = smoke(dataset, out, "--export-to", str(tmp_path / "ckpts"))
    assert ckpt == out / "acgan.safetensors" and (out / "acgan.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "smoke" and config["architecture"]["model"]["resolution"] == 32
    assert config["config"]["steps"] == 4 and "command" in config and "torch" in config["versions"]
    assert metric_steps(out) == [1, 2, 3, 4]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss_d", "loss_g", "ada_p", "r_t"} <= set(header)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-000002.png", "step-000004.png"]
    assert {p.name for p in (out / "state").iterdir()} == {"state.json", "modules.safetensors",
                                                            "optim.safetensors", "rng.safetensors"}
    assert (out / "log.txt").read_text().count("graded maps") == 1
    info = json.loads((out / "acgan.json").read_text())
    assert info["step"] == 4 and info["data"]["skipped_without_grade"] == 1 and info["data"]["count"] == 19
    assert (tmp_path / "ckpts" / "acgan.safetensors").is_file()
    maps = LabelSampler.from_checkpoint(ckpt, config=LabelSamplingConfig(size=48)).sample(grade=2, count=3, seed=1)
    assert maps.shape == (3, 48, 48) and maps.dtype == np.uint8


def test_anti_collapse_options_train(dataset: Path, tmp_path: Path) -> None:
    ckpt = smoke(dataset, tmp_path / "ac", "--set", "aux_d_on_fakes=false", "--set", "aux_label_smoothing=0.1",
                 "--set", "g_steps=1")
    info = json.loads(ckpt.with_suffix(".json").read_text())
    assert info["step"] == 4 and info["config"]["mbstd_group"] == 4
    assert "within-grade disagreement" in (tmp_path / "ac" / "log.txt").read_text()


def test_resume_continues_to_the_total_and_matches_an_uninterrupted_run(dataset: Path, tmp_path: Path) -> None:
    smoke(dataset, tmp_path / "a", "--steps", "3")
    assert json.loads((tmp_path / "a" / "state" / "state.json").read_text())["step"] == 3
    smoke(dataset, tmp_path / "a", "--steps", "6")
    assert metric_steps(tmp_path / "a") == [1, 2, 3, 4, 5, 6]
    assert "resumed acgan" in (tmp_path / "a" / "log.txt").read_text()
    assert json.loads((tmp_path / "a" / "acgan.json").read_text())["step"] == 6
    smoke(dataset, tmp_path / "b", "--steps", "6")
    assert (tmp_path / "a" / "acgan.safetensors").read_bytes() == (tmp_path / "b" / "acgan.safetensors").read_bytes()
    # A finished run asked for no more steps trains nothing and keeps its step.
    smoke(dataset, tmp_path / "a", "--steps", "6")
    assert metric_steps(tmp_path / "a") == [1, 2, 3, 4, 5, 6]


def test_other_architecture_is_refused_on_resume(dataset: Path, tmp_path: Path) -> None:
    smoke(dataset, tmp_path / "r", "--steps", "2")
    with pytest.raises(InputError, match="g_channels"):
        smoke(dataset, tmp_path / "r", "--steps", "3", "--set", "model.g_channels=16")
    assert acgan.main(["--data", str(dataset), "--out", str(tmp_path / "r"), "--preset", "smoke",
                       "--set", "model.g_channels=16"]) == 2


def test_same_seed_same_samples(dataset: Path, tmp_path: Path) -> None:
    maps = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        ckpt = smoke(dataset, tmp_path / name, "--steps", "2", "--seed", seed)
        maps.append(LabelSampler.from_checkpoint(ckpt).sample(grade=1, count=2, seed=0, size=32))
    assert np.array_equal(maps[0], maps[1])
    assert not np.array_equal(maps[0], maps[2])


def test_cli_refuses_bad_values(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        acgan.parse_args(["--data", str(dataset), "--out", str(tmp_path), "--set", "batch=0"])
    with pytest.raises(SystemExit):
        acgan.parse_args(["--data", str(dataset), "--out", str(tmp_path), "--set", "nonsense=1"])


def _torchrun(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "training.acgan", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_two_process_ddp_keeps_weights_identical(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    proc = _torchrun("--data", str(dataset), "--out", str(out), "--preset", "smoke", "--steps", "4",
                     "--debug-checksums")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / "checksums" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for key in ("G", "D", "G_ema", "ada_p"):
        assert ranks[0][key] == ranks[1][key], key
    assert ranks[0]["step"] == 4 and json.loads((out / "config.json").read_text())["world_size"] == 2
    assert metric_steps(out) == [1, 2, 3, 4]
    # The run resumes under DDP as well.
    proc = _torchrun("--data", str(dataset), "--out", str(out), "--preset", "smoke", "--steps", "6",
                     "--debug-checksums")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert metric_steps(out) == [1, 2, 3, 4, 5, 6]
    assert json.loads((out / "checksums" / "rank1.json").read_text())["G"] == \
        json.loads((out / "checksums" / "rank0.json").read_text())["G"]


@pytest.mark.slow
def test_ctrl_c_saves_state_then_exits(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "int"
    proc = subprocess.Popen([sys.executable, "-m", "training.acgan", "--data", str(dataset), "--out", str(out),
                             "--preset", "smoke", "--steps", "100000", "--set", "snapshot_every=100000"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ((out / "metrics.csv").is_file() and len(metric_steps(out)) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    step = json.loads((out / "state" / "state.json").read_text())["step"]
    assert 3 <= step < 100000 and "state saved at step" in err
    assert json.loads((out / "acgan.json").read_text())["step"] == step


# --- label sampling (pipeline) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def sampler() -> LabelSampler:
    torch.manual_seed(0)
    return LabelSampler(Generator(TINY), config=LabelSamplingConfig(size=64, batch_size=2))


def test_sampling_is_seeded_and_independent_of_batching(sampler: LabelSampler) -> None:
    a = sampler.sample(grade=3, count=5, seed=11)
    assert a.shape == (5, 64, 64) and a.dtype == np.uint8
    assert np.array_equal(a, sampler.sample(grade=3, count=5, seed=11))
    assert not np.array_equal(a, sampler.sample(grade=3, count=5, seed=12))
    other = LabelSampler(sampler.generator, config=LabelSamplingConfig(size=64, batch_size=4))
    assert np.array_equal(a[:3], other.sample(grade=3, count=3, seed=11))


@pytest.mark.parametrize("fov_radius", [None, 0.9])
def test_sampled_maps_have_a_clean_circular_fov(sampler: LabelSampler, fov_radius: float | None) -> None:
    s = LabelSampler(sampler.generator, config=LabelSamplingConfig(size=64, fov_radius=fov_radius))
    for m in s.sample(grade=0, count=3, seed=0):
        inside = m != labels.OUTSIDE
        ys, xs = np.nonzero(inside)
        r = np.sqrt((ys - 31.5) ** 2 + (xs - 31.5) ** 2).max() / 32
        disc = fov_disc(64, torch.tensor([r + 1e-4])).numpy()[0]  # the smallest disc holding the FOV
        assert np.array_equal(inside, disc)  # exactly a centred disc: outside class nowhere inside it
        if fov_radius is not None:
            assert r == pytest.approx(0.9, abs=0.05)


def test_upsampling_uses_probabilities_and_estimates_the_fov() -> None:
    probs = torch.zeros(1, labels.NUM_CLASSES, 8, 8)
    probs[0, labels.OUTSIDE] = 1.0
    disc = fov_disc(8, torch.tensor([0.8]))[0]
    probs[0, labels.OUTSIDE, disc] = 0.0
    probs[0, labels.RETINA, disc] = 1.0
    out = probabilities_to_labels(probs, size=32)
    assert out.shape == (1, 32, 32)
    frac = (out != labels.OUTSIDE).float().mean().item()
    assert frac == pytest.approx(disc.float().mean().item(), abs=0.08)
    assert set(out.unique().tolist()) == {labels.OUTSIDE, labels.RETINA}


@pytest.mark.parametrize("kwargs", [{"grade": 5, "count": 1}, {"grade": -1, "count": 1}, {"grade": 0, "count": 0}])
def test_sampling_rejects_bad_requests(sampler: LabelSampler, kwargs: dict) -> None:
    with pytest.raises(InputError):
        sampler.sample(seed=0, **kwargs)


# --- evaluation -------------------------------------------------------------------------------------


def test_kappa_and_lesion_statistics_on_known_maps() -> None:
    from training.evaluate_labels import disagreement, lesion_stats, quadratic_weighted_kappa

    y = np.array([0, 1, 2, 3, 4, 4])
    assert quadratic_weighted_kappa(y, y) == pytest.approx(1.0)
    assert quadratic_weighted_kappa(y, 4 - y) < 0
    maps = np.full((2, 10, 10), labels.RETINA, np.uint8)
    maps[0, 1:3, 1:3] = labels.HAEMORRHAGE  # one component of 4 px
    maps[0, 6, 6] = labels.HAEMORRHAGE  # a second component
    stats = lesion_stats(maps)[labels.HAEMORRHAGE]
    assert stats["components"].tolist() == [2, 0]
    assert stats["fraction"].tolist() == pytest.approx([0.05, 0.0])
    rng = np.random.default_rng(0)
    assert disagreement(np.stack([maps[1], maps[1]]), pairs=5, rng=rng) == 0.0
    assert disagreement(maps, pairs=5, rng=rng) == pytest.approx(0.05)


def test_heldout_rows_use_the_whole_dataset_when_it_is_not_the_classifiers(tmp_path: Path) -> None:
    from training.evaluate_labels import _same_dataset

    assert _same_dataset(tmp_path / "train", str(tmp_path / "train"))
    assert _same_dataset(tmp_path / "train", None)  # an old checkpoint without a dataset entry
    assert not _same_dataset(tmp_path / "test", str(tmp_path / "train"))


def test_classifier_and_evaluation_end_to_end(dataset: Path, tmp_path: Path) -> None:
    from training import evaluate_labels, grade_classifier

    ckpt = smoke(dataset, tmp_path / "gan", "--steps", "2")
    clf = grade_classifier.train(grade_classifier.parse_args(
        ["--data", str(dataset), "--out", str(tmp_path / "clf"), "--preset", "smoke"]))
    info = json.loads(clf.with_suffix(".json").read_text())
    assert info["data"]["heldout_ids"] and "heldout_accuracy" in info["metrics"]
    report_path = tmp_path / "report.json"
    assert evaluate_labels.main(["--checkpoint", str(ckpt), "--data", str(dataset), "--classifier", str(clf),
                                 "--per-grade", "3", "--out", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["grade_fidelity"]["generated"]["count"] == 3 * labels.NUM_GRADES
    assert 0.0 <= report["grade_fidelity"]["heldout_real"]["accuracy"] <= 1.0
    g4 = report["per_grade"]["4"]
    assert g4["lesion_fraction_real"] > report["per_grade"]["0"]["lesion_fraction_real"] == 0.0
    assert set(g4["classes"]) == {labels.NAMES[k] for k in labels.LESIONS}
    assert "w1_fraction" in g4["classes"]["haemorrhage"]
    # Without a classifier beside the checkpoint the command says how to make one.
    assert evaluate_labels.main(["--checkpoint", str(ckpt), "--data", str(dataset)]) == 2


def test_soft_reals_train_against_soft_fakes(dataset: Path, tmp_path: Path) -> None:
    """downsample=fractions: D sees reals as class fractions (rows summing to 1), fakes as softmax."""
    ckpt = smoke(dataset, tmp_path / "soft", "--set", "downsample=fractions", "--set", "fake_input=softmax")
    assert json.loads(ckpt.with_suffix(".json").read_text())["data"]["downsample"] == "fractions"
    data = harness.load_label_maps(dataset, resolution=8, downsample="fractions")
    soft = data.soft(torch.arange(len(data)))
    assert torch.allclose(soft.sum(dim=1), torch.ones(len(data), 8, 8), atol=1e-2)
    assert ((soft > 0.05) & (soft < 0.95)).any()  # partial occupancies survive: it is not one-hot
    with pytest.raises(ValueError, match="softmax"):
        acgan.TrainConfig(downsample="fractions", fake_input="straight-through")
