"""The U-Net trainer: run folder and resume, the synthetic share, losses and batch augmentation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fundus_studio import labels
from fundus_studio.dataset import StudioDataset
from fundus_studio.errors import DatasetError
from fundus_studio.metrics import score_histograms
from fundus_studio.phantom import write_phantoms
from training import unet

SIZE = 64  # phantom side


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("phantoms")
    return {"real": write_phantoms(root / "real", count=6, grade=None, size=SIZE, seed=1, progress=False),
            "synthetic": write_phantoms(root / "syn", count=4, grade=None, size=SIZE, seed=2, progress=False),
            "more": write_phantoms(root / "more", count=4, grade=None, size=SIZE, seed=3, progress=False)}


def smoke(out: Path, data: Path, *extra: str) -> Path:
    return unet.train(unet.parse_args(["--data", str(data), "--out", str(out), "--preset", "smoke", "--threads", "1",
                                       *extra]))


def metric_steps(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


# --- the run folder -------------------------------------------------------------------------------


def test_smoke_run_writes_the_run_folder_and_resume_continues(tmp_path: Path, phantoms: dict[str, Path]) -> None:
    run = tmp_path / "run"
    path = smoke(run, phantoms["real"], "--classes", "EX", "microaneurysm")
    assert path == run / "unet.safetensors"
    for name in ("config.json", "log.txt", "metrics.csv", "unet.json", "state", "samples/step-000004.png"):
        assert (run / name).exists(), name
    info = json.loads((run / "unet.json").read_text())
    assert info["step"] == 4 and info["config"]["classes"] == [labels.HARD_EXUDATE, labels.MICROANEURYSM]
    assert info["data"]["n_real"] == 6 and info["data"]["n_synthetic"] == 0
    assert metric_steps(run) == [1, 2, 3, 4]

    smoke(run, phantoms["real"], "--classes", "EX", "microaneurysm", "--steps", "6")
    assert metric_steps(run) == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "unet.json").read_text())["step"] == 6
    assert "resumed unet" in (run / "log.txt").read_text()


def test_validation_logs_f1_per_class(tmp_path: Path, phantoms: dict[str, Path]) -> None:
    run = tmp_path / "run"
    smoke(run, phantoms["real"], "--classes", "EX", "--val-fraction", "0.5")
    with (run / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert "val_f1_hard_exudate" in rows[0] and "val_f1_pooled_hard_exudate" in rows[0]
    assert rows[0]["val_f1_hard_exudate"] == "nan"  # step 1: not validated (smoke validates every 2 steps)
    data = json.loads((run / "unet.json").read_text())["data"]
    assert data["n_val"] > 0 and data["n_real"] + data["n_val"] == 6


def test_parse_args_classes_and_several_datasets(phantoms: dict[str, Path]) -> None:
    cfg = unet.parse_args(["--data", str(phantoms["real"]), "--data", str(phantoms["synthetic"]), "--out", "x",
                           "--preset", "smoke", "--classes", "hard_exudate", "HE"])
    assert cfg.data == (phantoms["real"], phantoms["synthetic"])
    assert cfg.model.classes == (labels.HARD_EXUDATE, labels.HAEMORRHAGE)
    assert unet.parse_args(["--data", "d", "--out", "x"]).model.classes == labels.LESIONS


@pytest.mark.parametrize("extra", [["--classes", "nonsense"], ["--synthetic-fraction", "0.5"],
                                   ["--synthetic", "s", "--synthetic-fraction", "1"]])
def test_parse_args_refuses_bad_values(extra: list[str]) -> None:
    with pytest.raises(SystemExit):
        unet.parse_args(["--data", "d", "--out", "x", *extra])


# --- the synthetic share --------------------------------------------------------------------------


@pytest.mark.parametrize(("n_real", "fraction", "expected"),
                         [(60, 0.0, 0), (60, 0.25, 20), (60, 0.5, 60), (60, 0.75, 180), (7, 0.25, 2)])
def test_synthetic_count_makes_the_share_of_the_training_set(n_real: int, fraction: float, expected: int) -> None:
    n = unet.synthetic_count(n_real, fraction)
    assert n == expected
    assert abs(n / (n + n_real) - fraction) <= 0.5 / (n + n_real)  # the share, up to rounding


def test_choose_synthetic_is_seeded_nested_and_refuses_a_small_pool() -> None:
    a = unet.choose_synthetic(100, count=10, seed=3)
    assert len(a) == 10 and np.array_equal(a, unet.choose_synthetic(100, count=10, seed=3))
    assert not np.array_equal(a, unet.choose_synthetic(100, count=10, seed=4))
    assert set(a) <= set(unet.choose_synthetic(100, count=30, seed=3))  # same seed: nested
    assert len(unet.choose_synthetic(100, count=0, seed=3)) == 0
    with pytest.raises(DatasetError, match="needs 90 synthetic samples, but the pool holds 50"):
        unet.choose_synthetic(50, count=90, seed=0)


@pytest.mark.parametrize(("n_real", "expected"),
                         [(54, [246, 738, 2214]), (40, [182, 547, 1640]), (738, [3362, 10086, 30258])])
def test_paper_counting_reproduces_the_papers_rows(n_real: int, expected: list[int]) -> None:
    """Son et al.'s rows (246 / 738 / 2214 synthetic) read against IDRiD's 54 training images, and the
    same ratios to other real sets; the paper's counts are also our share of a 738-unit training set."""
    counts = [unet.synthetic_count(n_real, f, counting="paper") for f in (0.25, 0.5, 0.75)]
    assert counts == expected and unet.synthetic_count(n_real, 0.0, counting="paper") == 0
    assert [unet.synthetic_count(738, f) for f in (0.25, 0.5, 0.75)] == [246, 738, 2214]
    assert unet.synthetic_count(40, 0.25, counting="paper", paper_real=738) == unet.synthetic_count(40, 0.25) == 13


def test_several_pools_share_the_count_evenly(tmp_path: Path, phantoms: dict[str, Path]) -> None:
    assert unet.split_count(7, 2) == [4, 3] and unet.split_count(6, 3) == [2, 2, 2] and sum(unet.split_count(0, 2)) == 0
    # 6 real at 50 %: 6 synthetic, 3 from each pool.
    smoke(tmp_path / "two", phantoms["real"], "--synthetic", str(phantoms["synthetic"]), "--synthetic",
          str(phantoms["more"]), "--synthetic-fraction", "0.5", "--steps", "1")
    data = json.loads((tmp_path / "two" / "unet.json").read_text())["data"]
    assert data["n_synthetic"] == 6 and data["synthetic"] == [str(phantoms["synthetic"]), str(phantoms["more"])]
    with pytest.raises(SystemExit):  # the paper counting knows its three rows only
        unet.parse_args(["--data", "d", "--out", "x", "--synthetic", "s", "--synthetic-fraction", "0.3", "--set",
                         "share_counting=paper"])


def test_training_mixes_the_synthetic_share(tmp_path: Path, phantoms: dict[str, Path]) -> None:
    # 6 real at 25 %: 2 synthetic; at 50 %: 6 > the pool of 4 → a clear error naming the pool.
    smoke(tmp_path / "mix", phantoms["real"], "--synthetic", str(phantoms["synthetic"]), "--synthetic-fraction", "0.25",
          "--steps", "1")
    data = json.loads((tmp_path / "mix" / "unet.json").read_text())["data"]
    assert (data["n_real"], data["n_synthetic"]) == (6, 2)
    with pytest.raises(DatasetError, match="pool holds 4"):
        smoke(tmp_path / "too-many", phantoms["real"], "--synthetic", str(phantoms["synthetic"]),
              "--synthetic-fraction", "0.5", "--steps", "1")


# --- loss -----------------------------------------------------------------------------------------


def test_loss_prefers_the_truth_and_pos_weights_follow_frequency() -> None:
    masks = torch.zeros(2, 1, 8, 8)
    masks[:, :, 2:4, 2:4] = 1
    w = torch.ones(1)
    good, _ = unet.segmentation_loss((masks * 2 - 1) * 10, masks, pos_weight=w, dice_weight=1, bce_weight=1)
    bad, _ = unet.segmentation_loss(-(masks * 2 - 1) * 10, masks, pos_weight=w, dice_weight=1, bce_weight=1)
    assert good < 0.01 < 1.5 < bad
    maps = torch.full((1, 10, 10), labels.RETINA, dtype=torch.uint8)
    maps[0, 0, :2] = labels.HARD_EXUDATE  # 2 of 100 pixels: 98 : 2 = 49, clipped
    assert unet.pos_weights(maps, (labels.HARD_EXUDATE, labels.MICROANEURYSM), cap=10.0).tolist() == [10.0, 10.0]
    assert unet.pos_weights(maps, (labels.HARD_EXUDATE,), cap=100.0).tolist() == [49.0]


# --- augmentation ---------------------------------------------------------------------------------


def _label_and_photo(seed: int = 0, size: int = 32, block: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Random index maps of block × block squares and the photo that is their colour image, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, labels.NUM_CLASSES, (4, size // block, size // block)).repeat(block, 1).repeat(block, 2)
    onehot = torch.from_numpy(np.stack([labels.to_one_hot(m.astype(np.uint8)) for m in maps]))
    photo = torch.from_numpy(labels.COLORS[maps]).permute(0, 3, 1, 2).float() / 127.5 - 1
    return photo, onehot


def _colour_of(masks: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(labels.COLORS[masks.argmax(1).numpy()]).permute(0, 3, 1, 2).float() / 127.5 - 1


NO_COLOUR = dict(brightness=0.0, contrast=0.0, saturation=0.0, gamma=0.0)


def test_symmetries_keep_photo_and_label_aligned() -> None:
    photo, masks = _label_and_photo()
    cfg = unet.AugmentConfig(flip=True, rotate_prob=0.0, **NO_COLOUR)
    gen = torch.Generator().manual_seed(0)
    changed = 0
    for _ in range(4):
        p, m = unet.augment(photo, masks, cfg=cfg, generator=gen)
        assert torch.allclose(p, _colour_of(m), atol=1e-6)
        assert torch.equal(m.sum(1), torch.ones_like(m[:, 0]))  # still one-hot
        changed += int(not torch.equal(m, masks))
    assert changed > 0


def test_small_rotations_keep_photo_and_label_aligned() -> None:
    photo, masks = _label_and_photo(size=64, block=8)
    cfg = unet.AugmentConfig(flip=False, rotate_prob=1.0, rotate_degrees=10.0, **NO_COLOUR)
    p, m = unet.augment(photo, masks, cfg=cfg, generator=torch.Generator().manual_seed(1))
    other, _ = unet.augment(photo, masks, cfg=cfg, generator=torch.Generator().manual_seed(5))
    assert not torch.equal(m, masks)
    inside = m.sum(1) > 0  # the rotated-in corners hold no class

    def agreement(x: torch.Tensor) -> float:  # block interiors agree exactly; bilinear photo edges blend
        return float(((x - _colour_of(m)).abs().amax(1) < 1e-3)[inside].float().mean())

    assert agreement(p) > 0.75 and agreement(p) > agreement(other) + 0.2  # other angles do not match
    assert torch.equal(m.unique(), torch.tensor([0.0, 1.0]))  # nearest: masks stay binary


def test_colour_jitter_touches_photos_only() -> None:
    photo, masks = _label_and_photo()
    cfg = unet.AugmentConfig(flip=False, rotate_prob=0.0)
    p, m = unet.augment(photo, masks, cfg=cfg, generator=torch.Generator().manual_seed(2))
    assert torch.equal(m, masks) and not torch.allclose(p, photo)
    assert p.min() >= -1 and p.max() <= 1
    p0, _ = unet.augment(photo, masks, cfg=unet.AugmentConfig(flip=False, rotate_prob=0.0, **NO_COLOUR),
                         generator=torch.Generator().manual_seed(2))
    assert torch.allclose(p0, photo, atol=1e-5)


def test_random_crop_cuts_the_same_window() -> None:
    photo, masks = _label_and_photo(size=32)
    p, m = unet.random_crop(photo, masks, size=16, generator=torch.Generator().manual_seed(0))
    assert p.shape == (4, 3, 16, 16) and m.shape == (4, labels.NUM_CLASSES, 16, 16)
    assert torch.allclose(p, _colour_of(m), atol=1e-6)


# --- the operating point --------------------------------------------------------------------------


def _draw(rng: np.random.Generator, *, positives: int, negatives: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores of an over-predicting segmenter: lesion pixels ~ U(0.7, 1), background mostly low but a
    broad shoulder of it ~ U(0.4, 0.8), as a BCE positive weight of 10 leaves them."""
    scores = np.concatenate([rng.uniform(0.7, 1.0, positives), rng.uniform(0.0, 0.3, negatives),
                             rng.uniform(0.4, 0.8, negatives // 10)])
    truth = np.concatenate([np.ones(positives, bool), np.zeros(negatives + negatives // 10, bool)])
    return scores, truth


def _f1(scores: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    pred = scores >= threshold
    tp = int((pred & truth).sum())
    return 2 * tp / (2 * tp + int((pred & ~truth).sum()) + int((~pred & truth).sum()))


def test_the_threshold_chosen_on_validation_beats_half_on_held_out_data() -> None:
    """0.5 calls the background shoulder lesion; the F1-maximising cut on validation pixels sits near
    0.7, and it is better on a fresh draw the choice never saw."""
    val_scores, val_truth = _draw(np.random.default_rng(0), positives=300, negatives=3000)
    pos, neg = score_histograms(val_scores, val_truth, bins=unet.THRESHOLD_BINS)
    chosen, f1 = unet.choose_thresholds(pos[None], neg[None])
    assert 0.6 < chosen[0] <= 0.72 and f1[0] == pytest.approx(_f1(val_scores, val_truth, chosen[0]))
    held_scores, held_truth = _draw(np.random.default_rng(1), positives=300, negatives=3000)
    assert _f1(held_scores, held_truth, chosen[0]) > _f1(held_scores, held_truth, 0.5) + 0.1  # 0.88 vs 0.72


def test_threshold_ties_go_to_the_one_nearest_half_and_no_lesion_keeps_half() -> None:
    pos, neg = np.zeros((2, 100), np.int64), np.zeros((2, 100), np.int64)
    pos[0, 80], neg[0, 10] = 5, 5  # any cut in (0.10, 0.80] separates them perfectly
    neg[1, 60] = 7  # class 1: no lesion pixel at all
    chosen, f1 = unet.choose_thresholds(pos, neg)
    assert chosen.tolist() == [0.5, 0.5] and f1.tolist() == [1.0, 0.0]
    pos[0, 80], pos[0, 30] = 0, 5  # now the cut must lie in (0.10, 0.30]
    assert unet.choose_thresholds(pos, neg)[0][0] == pytest.approx(0.3)


def test_holdout_by_grade_is_stratified_seeded_and_sized() -> None:
    grades = np.repeat(np.arange(5), 10)  # 50 pairs, 10 per grade
    train, val = unet.holdout_by_grade(grades, fraction=0.2, seed=0)
    assert len(val) == 10 and np.bincount(grades[val]).tolist() == [2] * 5
    assert not set(train) & set(val) and len(train) + len(val) == 50
    assert np.array_equal(val, unet.holdout_by_grade(grades, fraction=0.2, seed=0)[1])
    assert not np.array_equal(val, unet.holdout_by_grade(grades, fraction=0.2, seed=1)[1])
    odd = np.array([0] * 7 + [1] * 2 + [-1])  # largest remainder: 0.2 × (7, 2, 1) → 2 held out, from grade 0 first
    assert np.bincount(odd[unet.holdout_by_grade(odd, fraction=0.2, seed=0)[1]] + 1).tolist() == [0, 2]


def test_training_records_thresholds_chosen_on_real_validation_images(tmp_path: Path,
                                                                      phantoms: dict[str, Path]) -> None:
    run = tmp_path / "run"
    smoke(run, phantoms["real"], "--classes", "EX", "HE", "--val-fraction", "0.5", "--synthetic",
          str(phantoms["synthetic"]), "--synthetic-fraction", "0.25", "--set", "val_split=grade", "--set",
          "threshold_min_positive=1", "--set", "threshold_min_images=1")
    data = json.loads((run / "unet.json").read_text())["data"]
    real_ids = {s.id for s in StudioDataset.open(phantoms["real"]).samples}
    assert data["n_val"] == 3 and set(data["val_ids"]) <= real_ids and data["val_split"] == "grade"
    point = data["operating_point"]
    assert set(data["thresholds"]) == {"hard_exudate", "haemorrhage"} == set(point["source"])
    assert point["source"] == {"hard_exudate": "validation", "haemorrhage": "validation"}  # minimums lowered
    for name, t in data["thresholds"].items():
        assert 0 < t < 1 and point["val_positive_pixels"][name] > 0
        assert point["val_f1_pooled"][name] >= point["val_f1_pooled_at_0.5"][name]  # 0.5 is a candidate too
    # Too few validation lesions to choose from: 0.5, with the reason recorded.
    smoke(tmp_path / "few", phantoms["real"], "--classes", "EX", "--val-fraction", "0.5", "--set",
          "threshold_min_positive=1000000")
    data = json.loads((tmp_path / "few" / "unet.json").read_text())["data"]
    assert data["thresholds"] == {"hard_exudate": 0.5}
    assert "validation lesion pixels < 1000000" in data["operating_point"]["source"]["hard_exudate"]
    smoke(tmp_path / "none", phantoms["real"], "--classes", "EX")
    assert "no validation split" in json.loads((tmp_path / "none" / "unet.json").read_text())[
        "data"]["operating_point"]["source"]["hard_exudate"]
