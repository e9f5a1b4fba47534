"""The SPADE trainer: run folder, resume, export → Renderer round trip, style encoder, DDP, losses."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from fundus_studio import labels
from fundus_studio.errors import CheckpointError, InputError
from fundus_studio.models.spade import SpadeGenerator, fold_spectral_norm
from fundus_studio.phantom import write_phantoms
from fundus_studio.pipeline import Renderer, one_hot_tensor, tensor_to_photo
from training import evaluate_renders, spade

ROOT = Path(__file__).resolve().parents[1]
SIZE = 32  # the smoke preset's resolution


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantoms(tmp_path_factory.mktemp("data") / "phantoms", count=6, grade=None, size=64, seed=0,
                          progress=False)


def smoke(data: Path, out: Path, *extra: str) -> Path:
    return spade.train(spade.parse_args(["--data", str(data), "--out", str(out), "--preset", "smoke", *extra]))


def metric_steps(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def styled_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished smoke run with the style encoder on."""
    out = tmp_path_factory.mktemp("runs") / "styled"
    smoke(dataset, out, "--set", "style_encoder=true")
    return out


def held_out_pair(dataset: Path, index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    pairs = spade.harness.load_pairs(dataset, resolution=SIZE)
    return pairs.images[index].numpy(), pairs.maps[index].numpy()


# --- the run folder -----------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", [False, True])
def test_smoke_run_writes_the_run_folder(dataset: Path, tmp_path: Path, encoder: bool) -> None:
    out = tmp_path / "run"
    ckpt = smoke(dataset, out, "--export-to", str(tmp_path / "ckpts"), "--set", f"style_encoder={str(encoder).lower()}")
    assert ckpt == out / "spade.safetensors" and (out / "spade.json").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "spade" and config["preset"] == "smoke" and config["config"]["resolution"] == SIZE
    assert (config["architecture"]["encoder"] is not None) == encoder
    assert metric_steps(out) == [1, 2, 3, 4]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"loss_d", "loss_g", "g_adv", "g_fm", "g_kl", "g_pix", "sec_per_step"} <= set(header)
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-000002.png", "step-000004.png"]
    assert {p.name for p in (out / "state").iterdir()} == {"state.json", "modules.safetensors",
                                                            "optim.safetensors", "rng.safetensors"}
    info = json.loads((out / "spade.json").read_text())
    assert info["step"] == 4 and info["class"].endswith("SpadeGenerator") and info["data"]["count"] == 6
    assert info["created_by"].startswith("python -m training.spade")
    assert (out / "spade_encoder.json").is_file() == encoder
    assert (tmp_path / "ckpts" / "spade_encoder.safetensors").is_file() == encoder
    assert (tmp_path / "ckpts" / "spade.safetensors").is_file()
    # The grid: label | render | [render in the photo's style] | photo, one row per fixed pair.
    from fundus_studio.imageio import read_image
    grid = read_image(out / "samples" / "step-000004.png")
    cols = 4 if encoder else 3
    assert grid.shape[:2] == (2 * SIZE + 2, cols * SIZE + 2 * (cols - 1))


def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(dataset: Path, tmp_path: Path) -> None:
    smoke(dataset, tmp_path / "a", "--steps", "2")
    assert json.loads((tmp_path / "a" / "state" / "state.json").read_text())["step"] == 2
    smoke(dataset, tmp_path / "a", "--steps", "4")
    assert metric_steps(tmp_path / "a") == [1, 2, 3, 4]
    assert "resumed spade from" in (tmp_path / "a" / "log.txt").read_text()
    assert json.loads((tmp_path / "a" / "spade.json").read_text())["step"] == 4
    smoke(dataset, tmp_path / "b", "--steps", "4")
    assert (tmp_path / "a" / "spade.safetensors").read_bytes() == (tmp_path / "b" / "spade.safetensors").read_bytes()


def test_other_architecture_is_refused_on_resume(dataset: Path, tmp_path: Path) -> None:
    smoke(dataset, tmp_path / "r", "--steps", "2")
    with pytest.raises(InputError, match="generator.channels"):
        smoke(dataset, tmp_path / "r", "--steps", "3", "--set", "generator.channels=[16,8,8]")


@pytest.mark.parametrize("bad", ["crop=30", "resolution=30", "style_encoder=true", "encoder.z_dim=4", "batch=0",
                                 "pixel_weight=-1"])
def test_cli_refuses_bad_values(dataset: Path, tmp_path: Path, bad: str) -> None:
    extra = ["--set", "style_encoder=true"] if bad.startswith("encoder.") else []
    args = ["--data", str(dataset), "--out", str(tmp_path), "--preset", "smoke", *extra, "--set", bad]
    if bad == "style_encoder=true":  # fine as such; mismatched z sizes are not
        args += ["--set", "generator.z_dim=0"]
    with pytest.raises(SystemExit):
        spade.parse_args(args)


def test_init_starts_a_new_run_from_an_exported_renderer(styled_run: Path, dataset: Path, tmp_path: Path) -> None:
    # Before any step the fine-tuned run's G renders as the exported one (the tolerance covers the
    # renderer's own folding of the spectral norm for inference).
    _, label = held_out_pair(dataset)
    source = Renderer.from_checkpoint(styled_run / "spade.safetensors")
    cfg = spade.parse_args(["--data", str(dataset), "--out", str(tmp_path / "ft"), "--preset", "smoke",
                            "--set", "style_encoder=true", "--init", str(styled_run / "spade.safetensors")])
    g = SpadeGenerator(cfg.generator)
    e = spade.StyleEncoder(cfg.encoder)
    spade.init_from(cfg.init, G=g, E=e, G_ema=None)
    g = fold_spectral_norm(g).eval().to(memory_format=torch.channels_last)
    with torch.inference_mode():
        z = torch.randn(1, cfg.generator.z_dim, generator=torch.Generator().manual_seed(5))
        mine = g(one_hot_tensor(label).contiguous(memory_format=torch.channels_last), z).float()
        theirs = source.generator(one_hot_tensor(label).contiguous(memory_format=torch.channels_last), z).float()
        fresh = fold_spectral_norm(SpadeGenerator(cfg.generator)).eval().to(memory_format=torch.channels_last)
        untrained = fresh(one_hot_tensor(label).contiguous(memory_format=torch.channels_last), z).float()
    assert (mine - theirs).abs().max() < 0.05 and (mine - theirs).abs().mean() < 0.005
    assert (untrained - theirs).abs().mean() > 10 * (mine - theirs).abs().mean()
    # The run itself logs the start and trains on from there; a resumed run does not re-initialise.
    spade.train(cfg)
    log = (tmp_path / "ft" / "log.txt").read_text()
    assert log.count("initialised G and E from") == 1 and metric_steps(tmp_path / "ft") == [1, 2, 3, 4]
    init = json.loads((tmp_path / "ft" / "spade.json").read_text())["data"]["init"]  # the checkpoint names its start
    assert init["sha256"] == json.loads((styled_run / "spade.json").read_text())["sha256"] and init["step"] == 4


def test_init_refuses_a_renderer_of_another_architecture(styled_run: Path, dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="architecture differs"):
        smoke(dataset, tmp_path / "other", "--set", "style_encoder=true", "--set", "generator.channels=[16,8,8]",
              "--set", f"init={styled_run / 'spade.safetensors'}")


# --- export → pipeline.Renderer ------------------------------------------------------------------


def test_loaded_renderer_matches_the_in_memory_generator_after_folding(styled_run: Path, dataset: Path) -> None:
    # The smoke preset exports G_ema: rebuild it from the saved training state, fold, render.
    weights = load_file(str(styled_run / "state" / "modules.safetensors"))
    cfg = spade.parse_args(["--data", str(dataset), "--out", str(styled_run), "--preset", "smoke"]).generator
    g = SpadeGenerator(cfg)
    g.load_state_dict({k[len("G_ema."):]: v for k, v in weights.items() if k.startswith("G_ema.")})
    g = fold_spectral_norm(g).eval().to(memory_format=torch.channels_last)
    _, label = held_out_pair(dataset)
    renderer = Renderer.from_checkpoint(styled_run / "spade.safetensors")
    with torch.inference_mode():
        z = torch.randn(1, cfg.z_dim, generator=torch.Generator().manual_seed(5))
        expected = tensor_to_photo(g(one_hot_tensor(label).contiguous(memory_format=torch.channels_last), z))[0]
    assert np.array_equal(renderer.render(label, seed=5), expected)
    assert not np.array_equal(renderer.render(label, seed=6), expected)


def test_style_photo_changes_the_render_and_same_style_gives_same_render(styled_run: Path, dataset: Path) -> None:
    renderer = Renderer.from_checkpoint(styled_run / "spade.json")
    assert renderer.encoder is not None
    photo_a, label = held_out_pair(dataset, 0)
    photo_b, _ = held_out_pair(dataset, 1)
    a = renderer.render(label, seed=0, style=photo_a)
    assert a.shape == (SIZE, SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, renderer.render(label, seed=1, style=photo_a))  # the style, not the seed, decides
    assert not np.array_equal(a, renderer.render(label, seed=0, style=photo_b))
    assert not np.array_equal(a, renderer.render(label, seed=0))


def test_a_style_photos_code_is_encoded_once(styled_run: Path, dataset: Path) -> None:
    renderer = Renderer.from_checkpoint(styled_run / "spade.json")
    photo, label = held_out_pair(dataset, 0)
    calls = []
    renderer.encoder.register_forward_hook(lambda *_: calls.append(1))
    first = renderer.render(label, seed=0, style=photo)
    again = renderer.render(label, seed=0, style=photo.copy())  # equal pixels: the same code
    assert np.array_equal(first, again) and len(calls) == 1 and renderer.codes.misses == 1


def test_renderer_without_encoder_refuses_a_style_photo(dataset: Path, tmp_path: Path) -> None:
    renderer = Renderer.from_checkpoint(smoke(dataset, tmp_path / "plain", "--steps", "1"))
    photo, label = held_out_pair(dataset)
    with pytest.raises(InputError, match="without a style encoder"):
        renderer.render(label, seed=0, style=photo)


@pytest.mark.parametrize("value", [labels.NUM_CLASSES, 255])
def test_unknown_class_values_are_refused(styled_run: Path, dataset: Path, value: int) -> None:
    _, label = held_out_pair(dataset)
    label = label.copy()
    label[3, 4] = value
    with pytest.raises(InputError, match=rf"1 pixels carry class values outside 0\.\.{labels.NUM_CLASSES - 1}"):
        Renderer.from_checkpoint(styled_run / "spade.safetensors").render(label, seed=0)


def test_evaluate_renders_reports_trained_and_untrained(styled_run: Path, dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    assert evaluate_renders.main(["--checkpoint", str(styled_run / "spade.safetensors"), "--data", str(dataset),
                                  "--count", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["count"] == 3 and report["resolution"] == SIZE and len(set(report["ids"])) == 3
    assert set(report["results"]) == {"trained", "untrained", "class-mean colours"}
    for name in ("trained", "untrained"):
        assert set(report["results"][name]) == {"seeded", "photo"}
    for modes in report["results"].values():
        assert all(0 <= m["l1"] <= 255 and -1 <= m["ssim"] <= 1 for m in modes.values())
    assert "| trained |" in report["table"]


# --- augmentation and losses ---------------------------------------------------------------------


def test_augment_moves_photo_and_label_together() -> None:
    label_idx = torch.randint(0, labels.NUM_CLASSES, (8, 16, 16))
    label = torch.nn.functional.one_hot(label_idx, labels.NUM_CLASSES).permute(0, 3, 1, 2).float()
    photo = (label_idx.float() / labels.NUM_CLASSES)[:, None].repeat(1, 3, 1, 1)  # the photo encodes the label
    gen = torch.Generator().manual_seed(0)
    p, lab = spade.augment(photo, label, crop=8, vflip=True, generator=gen)
    assert p.shape == (8, 3, 8, 8) and lab.shape == (8, labels.NUM_CLASSES, 8, 8)
    assert torch.equal(p[:, 0], lab.argmax(1).float() / labels.NUM_CLASSES)
    p, lab = spade.augment(photo, label, crop=0, vflip=False, generator=gen)
    flipped = ~torch.tensor([torch.equal(p[i], photo[i]) for i in range(8)])
    assert flipped.any() and (~flipped).any()  # per-sample flips
    assert torch.equal(p[flipped], photo[flipped].flip(-1)) and torch.equal(lab[flipped], label[flipped].flip(-1))


def test_class_balanced_l1_weighs_a_one_pixel_class_like_the_background() -> None:
    idx = torch.zeros(1, 10, 10, dtype=torch.long)
    idx[0, 4, 4] = labels.MICROANEURYSM
    label = torch.nn.functional.one_hot(idx, labels.NUM_CLASSES).permute(0, 3, 1, 2).float()
    real, fake = torch.zeros(1, 3, 10, 10), torch.zeros(1, 3, 10, 10)
    fake[0, :, 4, 4] = 1.0  # only the microaneurysm pixel is wrong
    assert spade.class_balanced_l1(fake, real, label).item() == pytest.approx(0.5)  # two classes: (1 + 0) / 2
    assert torch.nn.functional.l1_loss(fake, real).item() == pytest.approx(0.01)  # plain L1 barely sees it


def test_detail_l1_charges_a_faint_microaneurysm_and_ignores_the_background() -> None:
    idx = torch.full((1, 16, 16), labels.RETINA, dtype=torch.long)
    idx[0, 8, 8] = labels.MICROANEURYSM
    label = torch.nn.functional.one_hot(idx, labels.NUM_CLASSES).permute(0, 3, 1, 2).float()
    real = torch.zeros(1, 3, 16, 16)
    real[0, :, 8, 8] = -1.0  # a dark dot
    faint = real * 0.2
    assert spade.detail_l1(real, real, label, sigma=1.5).item() == 0.0
    assert spade.detail_l1(faint, real, label, sigma=1.5).item() > 0.5  # most of the dot's contrast is missing
    # Offsetting the whole image (a brighter render) changes no high-pass: no charge; background texture
    # is not charged either (only fine-structure pixels count).
    noisy = real + 0.3 + 0.05 * torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * (idx != labels.MICROANEURYSM)
    assert spade.detail_l1(real + 0.3, real, label, sigma=1.5).item() == pytest.approx(0.0, abs=1e-6)
    assert spade.detail_l1(noisy, real, label, sigma=1.5).item() < 0.1
    no_fine = torch.nn.functional.one_hot(torch.full_like(idx, labels.RETINA), labels.NUM_CLASSES).permute(0, 3, 1, 2).float()
    assert spade.detail_l1(faint, real, no_fine, sigma=1.5).item() == 0.0


def test_gaussian_blur_keeps_constants_and_mass() -> None:
    x = torch.full((1, 3, 9, 9), 0.7)
    assert torch.allclose(spade.gaussian_blur(x, sigma=1.5), x)
    dot = torch.zeros(1, 1, 21, 21)
    dot[0, 0, 10, 10] = 1.0
    blurred = spade.gaussian_blur(dot, sigma=1.5)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5) and blurred.max().item() < 0.1


def test_kl_and_hinge_have_their_known_values() -> None:
    assert spade.kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)).item() == 0.0
    assert spade.kl_divergence(torch.ones(2, 4), torch.zeros(2, 4)).item() == pytest.approx(2.0)  # ½ Σ μ²
    pred = [[torch.full((2, 1, 3, 3), 2.0)], [torch.full((2, 1, 2, 2), -0.5)]]
    assert spade.hinge_d(pred, real=True).item() == pytest.approx((0.0 + 1.5) / 2)
    assert spade.hinge_d(pred, real=False).item() == pytest.approx((3.0 + 0.5) / 2)


# --- DDP ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_process_ddp_keeps_weights_identical(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "training.spade", "--data", str(dataset), "--out", str(out), "--preset", "smoke",
                           "--set", "style_encoder=true", "--debug-checksums"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / "checksums" / f"rank{r}.json").read_text()) for r in (0, 1)]
    for key in ("G", "D", "E", "G_ema"):
        assert ranks[0][key] == ranks[1][key], key
    assert ranks[0]["step"] == 4 and json.loads((out / "config.json").read_text())["world_size"] == 2
    assert metric_steps(out) == [1, 2, 3, 4]


def test_class_mean_baseline_is_exact_on_flat_photos() -> None:
    maps = torch.randint(0, 3, (2, 16, 16), dtype=torch.uint8)
    images = torch.from_numpy(labels.COLORS[maps.numpy()])  # every class one flat colour
    pairs = spade.harness.Pairs(images, maps, torch.zeros(2, dtype=torch.long), ("a", "b"), {})
    flat = evaluate_renders.class_mean_baseline(pairs)["flat"]
    assert flat["l1"] == 0.0 and flat["ssim"] == pytest.approx(1.0)
