"""Train the U-Net lesion segmenter (Son et al. §2.3) on real photo + label pairs, optionally plus synthetic ones.

    python -m training.unet --data data/idrid --out runs/unet --classes hard_exudate --preset demo-cpu
    python -m training.unet --data DIR --synthetic SYN --synthetic-fraction 0.25 --out RUN   # the paper's mix

One sigmoid per predicted class (multi-label, as ``pipeline.Segmenter`` reads the output). Loss per
class: soft Dice over the batch + binary cross-entropy whose positive weight is the class's
negative : positive pixel ratio in the training set, clipped to ``pos_weight_max``; AdamW.
Augmentation acts on whole batches: the square's 8 symmetries (flips and 90° rotations), small
rotations (photo bilinear, masks nearest) and colour jitter on photos only. ``--synthetic-fraction``
is the synthetic share of the training set, as in the paper: 25 % → n_synthetic = n_real / 3, drawn
from the pool by the run seed (several ``--synthetic`` pools share the count evenly;
``share_counting=paper`` counts it as Son et al.'s rows did instead, see :func:`synthetic_count`).

The operating point: BCE's positive weight shifts the sigmoid (at weight w, 0.5 is a calibrated
probability of 1 / (1 + w)), so a fixed 0.5 over-predicts, by how much depending on the training mix.
At export each class's threshold is chosen on the run's own validation split of real images (the
F1-maximising one, pooled over pixels; :func:`choose_thresholds`) and recorded in the checkpoint's
``data.thresholds``, which ``pipeline.Segmenter`` and ``training.evaluate_segmentation`` use. Too
few validation lesions to choose from: 0.5, said so in ``data.operating_point``. Re-running resumes;
``--steps`` is the total.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fundus_studio import labels
from fundus_studio.checkpoint import config_to_dict
from fundus_studio.errors import DatasetError
from fundus_studio.metrics import SegmentationMetrics, score_histograms
from fundus_studio.models.unet import UNET_PRESETS, UNet, UNetConfig
from training import harness
from training.evaluate_segmentation import score_batch
from training.harness.data import DOWNSAMPLE_MODES

SHARE_COUNTINGS: tuple[str, ...] = ("training-set", "paper")  # how a synthetic share becomes a count
# Son et al.'s synthetic counts per share row (246 / 738 / 2214 = 738 · f / (1 − f): the training-set
# counting on a real set of 738 units), and the real set our "paper" counting reads them against:
# IDRiD's 54 training images with hard-exudate masks (docs/segmentation.md, "Counting the share").
PAPER_SYNTHETIC: dict[float, int] = {0.25: 246, 0.5: 738, 0.75: 2214}
PAPER_REAL: int = 54
VAL_SPLITS: tuple[str, ...] = ("hash", "grade")  # how real samples are held out for validation
DEFAULT_THRESHOLD: float = 0.5  # used where no threshold could be chosen (and by older checkpoints)
THRESHOLD_BINS: int = 100  # candidate thresholds k / 100, k = 1 … 99 (finer would fit the few val images' noise)
DICE_SMOOTH: float = 1.0  # pixels added to the soft Dice's numerator and denominator (an absent class scores 1)
LUMA: tuple[float, float, float] = (0.299, 0.587, 0.114)  # RGB → grey (ITU-R BT.601), for saturation/contrast


@dataclass(frozen=True)
class AugmentConfig:
    flip: bool = True  # random transpose + h-flip + v-flip: all 8 symmetries of the square (90° rotations included)
    rotate_prob: float = 0.5  # share of images also rotated by a small angle
    rotate_degrees: float = 15.0  # that angle ~ U(±rotate_degrees); photo bilinear, masks nearest
    brightness: float = 0.2  # photo ×= U(1 ± brightness)
    contrast: float = 0.2  # (photo − mean grey) ×= U(1 ± contrast)
    saturation: float = 0.2  # (photo − its grey) ×= U(1 ± saturation)
    gamma: float = 0.2  # photo (in [0, 1]) ** exp(U(± gamma))

    def __post_init__(self) -> None:
        if not 0.0 <= self.rotate_prob <= 1.0 or self.rotate_degrees < 0:
            raise ValueError("rotate_prob must lie in [0, 1] and rotate_degrees be ≥ 0")
        if not all(0.0 <= v < 1.0 for v in (self.brightness, self.contrast, self.saturation)) or self.gamma < 0:
            raise ValueError("brightness/contrast/saturation must lie in [0, 1) and gamma be ≥ 0")


@dataclass(frozen=True)
class TrainConfig:
    data: tuple[Path, ...] = (Path("data/phantoms"),)  # real studio datasets (photos + label maps), concatenated
    out: Path = Path("runs/unet")  # run folder; re-running resumes it
    preset: str = "demo-cpu"  # the preset these values came from (recorded)
    seed: int = 0  # seeds the model, batches, augmentation, the synthetic subset and the held-out split
    steps: int = 2000  # TOTAL optimisation steps
    resume: bool = False  # fail unless RUN/state exists (resuming is automatic anyway)
    device: str = "auto"  # auto | cpu | cuda
    export_to: Path | None = None  # also copy unet.safetensors/.json here
    model: UNetConfig = field(default_factory=lambda: UNetConfig(classes=labels.LESIONS))  # the architecture
    resolution: int = 256  # side the data is loaded at: photos area-resized, maps by `downsample`
    crop: int = 0  # train on random crop × crop windows of it (0 = whole images); validation uses whole images
    downsample: str = "area"  # how maps reach `resolution` (harness.resize_index_map)
    synthetic: tuple[Path, ...] = ()  # pools of synthetic pairs (studio datasets); they share the count evenly
    synthetic_fraction: float = 0.0  # synthetic share of the training set (Son et al.: 0, .25, .5, .75)
    share_counting: str = "training-set"  # training-set: F = n_syn / (n_real + n_syn); paper: Son et al.'s rows
    paper_real: int = PAPER_REAL  # paper counting: n_syn = n_real · PAPER_SYNTHETIC[F] / paper_real
    val_fraction: float = 0.0  # share of the real samples held out and scored every val_every steps
    val_split: str = "hash"  # hash: by a hash of (seed, id), stable as data grows; grade: seeded, stratified by grade
    val_every: int = 250  # steps between validations (and at the end)
    choose_threshold: bool = True  # at export, per-class threshold maximising pooled F1 on the validation split
    threshold_min_positive: int = 100  # fewer validation lesion pixels of a class than this: keep 0.5
    threshold_min_images: int = 2  # fewer validation images holding the class than this: keep 0.5
    batch: int = 8  # images per rank per step
    lr: float = 1e-3  # AdamW learning rate (constant)
    weight_decay: float = 1e-4  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    dice_weight: float = 1.0  # weight of the soft Dice term
    bce_weight: float = 1.0  # weight of the class-weighted BCE term
    pos_weight_max: float = 10.0  # cap on BCE's positive weight (negative : positive pixels per class)
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # batch augmentation
    log_every: int = 10  # steps between metrics rows
    sample_every: int = 250  # steps between sample grids (photo | truth | prediction)
    sample_rows: int = 4  # images in a grid
    snapshot_every: int = 250  # steps between saved states
    amp: bool = False  # bf16 autocast (CUDA only)
    compile: bool = False  # torch.compile the U-Net
    channels_last: bool = True  # NHWC: about 2× faster convolutions on CPU (PERF.md)
    threads: int = 0  # torch CPU threads per process; 0 = torch's default (1 on a busy shared machine)
    tensorboard: bool = True  # also RUN/tensorboard (unless --no-tensorboard); the experiment's short runs skip it

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "log_every", "val_every", "sample_every", "sample_rows", "snapshot_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.data:
            raise ValueError("data: give at least one real dataset")
        if self.resolution % self.model.stride:
            raise ValueError(f"resolution {self.resolution} must be a multiple of 2**model.depth = {self.model.stride}")
        if self.crop and (self.crop % self.model.stride or not 0 < self.crop <= self.resolution):
            raise ValueError(f"crop {self.crop} must be 0 or a multiple of {self.model.stride} "
                             "no larger than resolution")
        if self.downsample not in DOWNSAMPLE_MODES:
            raise ValueError(f"downsample must be one of {DOWNSAMPLE_MODES}, got {self.downsample!r}")
        if not 0.0 <= self.synthetic_fraction < 1.0:
            raise ValueError(f"synthetic_fraction must lie in [0, 1), got {self.synthetic_fraction}")
        if self.synthetic_fraction > 0 and not self.synthetic:
            raise ValueError("synthetic_fraction > 0 needs a synthetic dataset (--synthetic DIR)")
        if self.share_counting not in SHARE_COUNTINGS:
            raise ValueError(f"share_counting must be one of {SHARE_COUNTINGS}, got {self.share_counting!r}")
        if self.share_counting == "paper" and self.synthetic_fraction not in (0.0, *PAPER_SYNTHETIC):
            raise ValueError(f"share_counting=paper knows the paper's rows {sorted(PAPER_SYNTHETIC)} only, got "
                             f"synthetic_fraction {self.synthetic_fraction}")
        if self.paper_real < 1:
            raise ValueError(f"paper_real must be positive, got {self.paper_real}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {self.val_fraction}")
        if self.val_split not in VAL_SPLITS:
            raise ValueError(f"val_split must be one of {VAL_SPLITS}, got {self.val_split!r}")
        if self.threshold_min_positive < 1 or self.threshold_min_images < 1:
            raise ValueError("threshold_min_positive and threshold_min_images must be positive")
        if (self.lr <= 0 or self.weight_decay < 0 or min(self.dice_weight, self.bce_weight) < 0
                or self.pos_weight_max < 1):
            raise ValueError("lr must be positive, weight_decay and loss weights ≥ 0, pos_weight_max ≥ 1")


def _arch(name: str) -> dict[str, Any]:
    """A models.unet preset's architecture without its classes (those come from --classes)."""
    return {k: v for k, v in config_to_dict(UNET_PRESETS[name]).items() if k != "classes"}


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a laptop CPU: the tests' recipe.
    "smoke": {"model": _arch("smoke"), "resolution": 32, "batch": 2, "steps": 4, "log_every": 1, "val_every": 2,
              "sample_every": 2, "sample_rows": 2, "snapshot_every": 2},
    # The experiment's CPU recipe: a narrow depth-4 U-Net on 128² crops of 256² images (docs/segmentation.md).
    "small-cpu": {"model": {"base_channels": 8, "depth": 4, "max_channels": 64, "upsample": "bilinear",
                            "norm": "batch"},
                  "resolution": 256, "crop": 128, "batch": 8, "steps": 400, "lr": 2e-3, "log_every": 10,
                  "val_every": 100,
                  "sample_every": 100, "snapshot_every": 100},
    # The shipped demo segmenter (models.unet demo-cpu) on 128² crops of 256² images: about 20 minutes.
    "demo-cpu": {"model": _arch("demo-cpu"), "resolution": 256, "crop": 128, "batch": 8, "steps": 1500, "lr": 2e-3,
                 "val_fraction": 0.05, "val_every": 500, "log_every": 10, "sample_every": 250,
                 "snapshot_every": 250},
    # The wider U-Net (models.unet wide-cpu, 6.75 M parameters) at 256²: about 4 s per step here.
    "wide-cpu": {"model": _arch("wide-cpu"), "resolution": 256, "batch": 4, "steps": 2000},
    # Son et al.'s U-Net at 512², for GPUs.
    "paper-512": {"model": _arch("paper-512"), "resolution": 512, "batch": 8, "steps": 20_000, "amp": True,
                  "lr": 3e-4, "log_every": 50, "val_every": 1000, "sample_every": 1000, "snapshot_every": 1000},
}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m training.unet", description=__doc__.split("\n\n")[0],
                                     conflict_handler="resolve")  # --data below replaces the harness's single one
    harness.add_common_arguments(parser, presets=PRESETS, default_preset="demo-cpu")
    parser.add_argument("--data", type=Path, action="append", required=True, help="real studio dataset (repeatable)")
    parser.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                        help="taxonomy classes to segment, names or short names (default: every lesion class)")
    parser.add_argument("--synthetic", type=Path, action="append", default=None,
                        help="studio dataset of synthetic pairs (a pool; repeatable: the pools share the count)")
    parser.add_argument("--synthetic-fraction", type=float, default=None, help="synthetic share of the training set")
    parser.add_argument("--val-fraction", type=float, default=None,
                        help="share of real samples held out for validation")
    parser.add_argument("--batch", type=int, default=None, help="images per rank per step")
    args = parser.parse_args(argv)
    given = {k: getattr(args, k) for k in ("out", "steps", "seed", "device", "export_to", "threads", "synthetic",
                                           "synthetic_fraction", "val_fraction", "batch")}
    given["data"] = args.data
    given["resume"] = args.resume or None
    try:
        if args.classes:
            given["model"] = {"classes": [labels.class_index(c) for c in args.classes]}
        return harness.resolve(TrainConfig, presets=PRESETS, preset=args.preset, given=given, overrides=args.overrides)
    except ValueError as err:  # InputError is a ValueError too
        parser.error(str(err))
        raise  # unreachable: parser.error exits


# --- data -----------------------------------------------------------------------------------------


def synthetic_count(n_real: int, fraction: float, *, counting: str = "training-set",
                    paper_real: int = PAPER_REAL) -> int:
    """Synthetic samples added to ``n_real`` real ones for the share row ``fraction``, rounded.

    ``training-set``: the share of the training set, f = s / (r + s), so s = r·f / (1 − f)
    (25 % → r / 3, 50 % → r, 75 % → 3 r). ``paper``: Son et al.'s rows added 246 / 738 / 2214
    synthetic images (:data:`PAPER_SYNTHETIC`) to a real set of ``paper_real`` images, so
    s = r · PAPER_SYNTHETIC[f] / paper_real (with 54: 4.6 r, 13.7 r, 41 r).
    """
    if fraction == 0:
        return 0
    if counting == "paper":
        return round(n_real * PAPER_SYNTHETIC[fraction] / paper_real)
    return round(n_real * fraction / (1.0 - fraction))


def split_count(n: int, parts: int) -> list[int]:
    """``n`` shared by ``parts`` pools as evenly as possible (the first ones take the remainder)."""
    return [n // parts + (i < n % parts) for i in range(parts)]


def choose_synthetic(pool: int, *, count: int, seed: int, where: str = "synthetic pool") -> np.ndarray:
    """Sorted indices of the ``count`` synthetic samples a run takes from a pool of ``pool``: the
    first ``count`` of a seeded permutation (so for one seed a smaller share is a subset of a larger one)."""
    if count > pool:
        raise DatasetError(f"{where}: the synthetic share needs {count} synthetic samples, but the pool holds {pool}")
    perm = torch.randperm(pool, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(perm[:count])


def val_count(n: int, fraction: float) -> int:
    """Real samples the ``grade`` split holds out of ``n``."""
    return round(n * fraction)


def holdout_by_grade(grades: np.ndarray, *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, held-out) indices: :func:`val_count` samples held out, spread over the grades
    (``-1`` = ungraded is a group too) in proportion to their sizes by largest remainder, each
    group's picks the first of a seeded permutation. For small sets, where a hash split's size and
    mix vary from seed to seed."""
    grades = np.asarray(grades)
    groups = [np.flatnonzero(grades == g) for g in np.unique(grades)]
    want = val_count(len(grades), fraction)
    quota = np.array([fraction * len(g) for g in groups])
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: want - int(take.sum())]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    held = np.concatenate([g[rng.permutation(len(g))[:k]] for g, k in zip(groups, take)] or [np.zeros(0, int)])
    return np.setdiff1d(np.arange(len(grades)), held), np.sort(held)


def concat(parts: list[harness.Pairs]) -> harness.Pairs:
    return harness.Pairs(torch.cat([p.images for p in parts]), torch.cat([p.maps for p in parts]),
                         torch.cat([p.grades for p in parts]), tuple(i for p in parts for i in p.ids),
                         {"parts": [p.description for p in parts], "count": sum(len(p) for p in parts)})


def batch_tensors(pairs: harness.Pairs, index: torch.Tensor, *, classes: torch.Tensor, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(photos (B, 3, R, R) in [-1, 1], masks (B, K, R, R) float 0/1 for ``classes``, maps (B, R, R) uint8)."""
    maps = pairs.maps[index].to(device)
    photo = pairs.images[index].to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return photo, (maps[:, None].long() == classes.view(1, -1, 1, 1)).float(), maps


def pos_weights(maps: torch.Tensor, classes: tuple[int, ...], *, cap: float) -> torch.Tensor:
    """(K,) BCE positive weights: negative : positive pixels per class over ``maps``, clipped to [1, cap]."""
    counts = torch.bincount(maps.flatten().long(), minlength=labels.NUM_CLASSES).double()[list(classes)]
    return ((maps.numel() - counts) / counts.clamp(min=1)).clamp(1.0, cap).float()


# --- loss and augmentation ------------------------------------------------------------------------


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, *, pos_weight: torch.Tensor, dice_weight: float,
                      bce_weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Soft Dice (per class over the batch, then the class mean) + class-weighted BCE on (B, K, H, W) logits."""
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, masks, pos_weight=pos_weight.view(1, -1, 1, 1))
    prob = logits.sigmoid()
    inter, total = (prob * masks).sum((0, 2, 3)), (prob + masks).sum((0, 2, 3))
    dice = 1.0 - ((2 * inter + DICE_SMOOTH) / (total + DICE_SMOOTH)).mean()
    return dice_weight * dice + bce_weight * bce, {"dice": dice.detach(), "bce": bce.detach()}


def _per_image(mask: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, 1, 1, 1)


def random_crop(photo: torch.Tensor, masks: torch.Tensor, *, size: int, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``size``² window per image of (B, C, R, R) photos and masks (one gather each)."""
    b, r, dev = photo.shape[0], photo.shape[-1], photo.device
    top, left = (torch.randint(0, r - size + 1, (2, b), device=dev, generator=generator))
    rows = (top[:, None] + torch.arange(size, device=dev))[:, None, :, None]  # (B, 1, size, 1)
    cols = (left[:, None] + torch.arange(size, device=dev))[:, None, None, :]  # (B, 1, 1, size)

    def window(x: torch.Tensor) -> torch.Tensor:
        return x[torch.arange(b, device=dev).view(-1, 1, 1, 1), torch.arange(x.shape[1], device=dev).view(1, -1, 1, 1),
                 rows, cols]
    return window(photo), window(masks)


def augment_geometry(photo: torch.Tensor, masks: torch.Tensor, *, cfg: AugmentConfig, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random symmetry and small rotation per image for (B, 3, R, R) photos and (B, K, R, R) masks."""
    b, dev = photo.shape[0], photo.device
    if cfg.flip:
        for dims in ("t", (-1,), (-2,)):  # transpose, h-flip, v-flip: together the square's 8 symmetries
            pick = _per_image(torch.rand(b, device=dev, generator=generator) < 0.5)
            move = (lambda x: x.transpose(-1, -2)) if dims == "t" else (lambda x, d=dims: x.flip(d))
            photo, masks = torch.where(pick, move(photo), photo), torch.where(pick, move(masks), masks)
    if cfg.rotate_prob > 0 and cfg.rotate_degrees > 0:
        pick = torch.rand(b, device=dev, generator=generator) < cfg.rotate_prob
        angle = (torch.rand(b, device=dev, generator=generator) * 2 - 1) * math.radians(cfg.rotate_degrees)
        cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(photo.shape), align_corners=False)
        # +1 / −1: the uncovered corners become black (−1) photo and empty masks.
        turned = F.grid_sample(photo + 1, grid, mode="bilinear", align_corners=False) - 1
        turned_masks = F.grid_sample(masks, grid, mode="nearest", align_corners=False)
        photo, masks = torch.where(_per_image(pick), turned, photo), torch.where(_per_image(pick), turned_masks, masks)
    return photo, masks


def jitter_colour(photo: torch.Tensor, *, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness, saturation, contrast and gamma per image on (B, 3, H, W) photos in [-1, 1]."""
    b, dev = photo.shape[0], photo.device

    def factor(spread: float) -> torch.Tensor:
        return 1.0 + (torch.rand(b, 1, 1, 1, device=dev, generator=generator) * 2 - 1) * spread

    x = (photo + 1) / 2 * factor(cfg.brightness)
    grey = (x * torch.tensor(LUMA, device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True)
    x = grey + (x - grey) * factor(cfg.saturation)
    mean = grey.mean((2, 3), keepdim=True)
    x = mean + (x - mean) * factor(cfg.contrast)
    gamma = torch.exp((torch.rand(b, 1, 1, 1, device=dev, generator=generator) * 2 - 1) * cfg.gamma)
    return x.clamp(0, 1).pow(gamma) * 2 - 1


def augment(photo: torch.Tensor, masks: torch.Tensor, *, cfg: AugmentConfig, generator: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    photo, masks = augment_geometry(photo, masks, cfg=cfg, generator=generator)
    return jitter_colour(photo, cfg=cfg, generator=generator), masks


# --- validation and samples -----------------------------------------------------------------------


@torch.no_grad()
def validate(model: UNet, pairs: harness.Pairs, *, batch: int, device: torch.device) -> dict[str, Any]:
    """metrics.SegmentationMetrics on ``pairs`` (threshold 0.5, predictions inside the FOV), eval mode."""
    model.eval()
    metrics = SegmentationMetrics(classes=model.config.classes)
    classes = torch.tensor(model.config.classes, device=device)
    for start in range(0, len(pairs), batch):
        photo, _, maps = batch_tensors(pairs, torch.arange(start, min(start + batch, len(pairs))), classes=classes,
                                       device=device)
        score_batch(metrics, torch.sigmoid(model(photo).float()), maps)
    model.train()
    return metrics.compute()


def choose_thresholds(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the threshold k / bins (k = 1 … bins − 1) with the highest pooled F1, and that F1.

    ``pos``, ``neg``: ``(K, bins)`` counts of lesion / non-lesion validation pixels per score bin
    (``metrics.score_histograms``), so "score ≥ k / bins" is "bin ≥ k". Ties go to the threshold
    nearest 0.5; a class with no true positive at any threshold gets 0.5 and F1 0.
    """
    bins = pos.shape[-1]
    tp = np.cumsum(pos[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (K, bins − 1): pixels ≥ k / bins, k = 1 …
    fp = np.cumsum(neg[:, ::-1], axis=1)[:, ::-1][:, 1:]
    fn = pos.sum(1, keepdims=True) - tp
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(tp.shape), where=(2 * tp + fp + fn) > 0)
    candidates = np.arange(1, bins) / bins
    best = np.isclose(f1, f1.max(1, keepdims=True), rtol=0, atol=1e-12) & (f1 > 0)
    distance = np.where(best, np.abs(candidates - DEFAULT_THRESHOLD), np.inf)
    pick = distance.argmin(1)
    chosen = np.where(best.any(1), candidates[pick], DEFAULT_THRESHOLD)
    return chosen, np.where(best.any(1), f1[np.arange(len(f1)), pick], 0.0)


def _pooled_f1(pos: np.ndarray, neg: np.ndarray, threshold: float) -> float:
    k = int(round(threshold * pos.shape[-1]))
    tp, fp = pos[k:].sum(), neg[k:].sum()
    den = tp + pos.sum() + fp  # 2 TP + FP + FN
    return float(2 * tp / den) if den else float("nan")


@torch.no_grad()
def operating_point(model: UNet, val: harness.Pairs | None, *, cfg: TrainConfig, device: torch.device
                    ) -> dict[str, Any]:
    """Each class's threshold from the validation split (real images only), or 0.5 with the reason.

    The choice is pooled over the split's pixels inside the field of view: per-image F1 on ten
    images would swing with one image. Never sees a test set: ``val`` is the run's own hold-out.
    """
    names = [labels.NAMES[c] for c in model.config.classes]
    k = len(names)
    pos, neg = np.zeros((k, THRESHOLD_BINS), np.int64), np.zeros((k, THRESHOLD_BINS), np.int64)
    present = np.zeros(k, np.int64)
    if val is not None and cfg.choose_threshold:
        model.eval()
        classes = torch.tensor(model.config.classes, device=device)
        for start in range(0, len(val), cfg.batch):
            photo, masks, maps = batch_tensors(val, torch.arange(start, min(start + cfg.batch, len(val))),
                                               classes=classes, device=device)
            probs = torch.sigmoid(model(photo).float()).cpu().numpy()
            truth, fov = masks.cpu().numpy() > 0.5, (maps != labels.OUTSIDE).cpu().numpy()
            present += truth.any((2, 3)).sum(0)
            for c in range(k):
                p, n = score_histograms(probs[:, c][fov], truth[:, c][fov], bins=THRESHOLD_BINS)
                pos[c] += p
                neg[c] += n
        model.train()
    chosen, best_f1 = choose_thresholds(pos, neg)
    out: dict[str, Any] = {
        "rule": f"per class, the threshold k/{THRESHOLD_BINS} maximising F1 pooled over the validation split's "
                "field of view (real images only); 0.5 where the split is too small to choose from",
        "val_images": 0 if val is None else len(val), "thresholds": {}, "source": {}, "val_positive_pixels": {},
        "val_images_with_class": {}, "val_f1_pooled": {}, "val_f1_pooled_at_0.5": {}}
    for c, name in enumerate(names):
        reason = ("choose_threshold is off" if not cfg.choose_threshold else
                  "no validation split (val_fraction 0)" if val is None else
                  f"{pos[c].sum()} validation lesion pixels < {cfg.threshold_min_positive}"
                  if pos[c].sum() < cfg.threshold_min_positive else
                  f"{present[c]} validation images hold the class < {cfg.threshold_min_images}"
                  if present[c] < cfg.threshold_min_images else None)
        use = DEFAULT_THRESHOLD if reason else float(chosen[c])
        out["thresholds"][name] = use
        out["source"][name] = "validation" if reason is None else f"default {DEFAULT_THRESHOLD} ({reason})"
        out["val_positive_pixels"][name] = int(pos[c].sum())
        out["val_images_with_class"][name] = int(present[c])
        out["val_f1_pooled"][name] = _pooled_f1(pos[c], neg[c], use) if val is not None else None
        out["val_f1_pooled_at_0.5"][name] = _pooled_f1(pos[c], neg[c], DEFAULT_THRESHOLD) if val is not None else None
    return out


def _lesion_map(maps: np.ndarray, masks: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """(B, H, W) maps' FOV + (B, K, H, W) bool masks → (B, H, W) index maps of retina and the masks' classes."""
    fov = maps != labels.OUTSIDE
    return np.stack([labels.compose({labels.RETINA: f, **dict(zip(classes, k & f))}, shape=f.shape)
                     for f, k in zip(fov, masks)])


@torch.no_grad()
def sample_grid(model: UNet, pairs: harness.Pairs, *, rows: int, device: torch.device) -> np.ndarray:
    """One row per image: photo | truth | prediction (taxonomy colours; prediction at threshold 0.5)."""
    model.eval()
    classes = torch.tensor(model.config.classes, device=device)
    photo, masks, maps = batch_tensors(pairs, torch.arange(min(rows, len(pairs))), classes=classes, device=device)
    pred = (torch.sigmoid(model(photo).float()) >= 0.5).cpu().numpy()
    model.train()
    m = maps.cpu().numpy()
    truth, guess = (labels.COLORS[_lesion_map(m, k, model.config.classes)] for k in (masks.cpu().numpy() > 0.5, pred))
    shown = ((photo.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return harness.image_grid(np.stack([shown, truth, guess], axis=1))


# --- training -------------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) the U-Net in ``cfg.out``; return the inference checkpoint's path."""
    # Build.
    harness.set_threads(cfg.threads)
    dist = harness.init_distributed(device=cfg.device)
    run = harness.Run(cfg.out, kind="unet", config=cfg, architecture={"model": cfg.model}, dist=dist, preset=cfg.preset,
                      tensorboard=None if cfg.tensorboard else False)
    dev = dist.device
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    real = concat([harness.load_pairs(d, resolution=cfg.resolution, downsample=cfg.downsample) for d in cfg.data])
    # The validation split holds real images only: the threshold chosen on it is the operating point for
    # real photos, and synthetic pairs (other textures, other label statistics) would bias it.
    if cfg.val_split == "grade":
        train_idx, val_idx = holdout_by_grade(real.grades.numpy(), fraction=cfg.val_fraction, seed=cfg.seed)
    else:
        train_idx, val_idx = harness.holdout_split(real.ids, fraction=cfg.val_fraction, seed=cfg.seed)
    if len(train_idx) == 0:
        raise DatasetError(f"{', '.join(map(str, cfg.data))}: no real samples left for training after holding out "
                           f"{cfg.val_fraction:g}")
    val = real.subset(val_idx) if len(val_idx) else None
    parts, n_syn = [real.subset(train_idx)], 0
    if cfg.synthetic and cfg.synthetic_fraction > 0:
        total = synthetic_count(len(train_idx), cfg.synthetic_fraction, counting=cfg.share_counting,
                                paper_real=cfg.paper_real)
        for i, (source, count) in enumerate(zip(cfg.synthetic, split_count(total, len(cfg.synthetic)))):
            pool = harness.load_pairs(source, resolution=cfg.resolution, downsample=cfg.downsample)
            chosen = choose_synthetic(len(pool), count=count, seed=cfg.seed + 1009 * i, where=str(source))
            parts.append(pool.subset(chosen))
            n_syn += len(chosen)
    data = concat(parts)
    weight = pos_weights(data.maps, cfg.model.classes, cap=cfg.pos_weight_max).to(dev)
    description = {"real": real.description["parts"], "synthetic": [str(p) for p in cfg.synthetic] or None,
                   "synthetic_fraction": cfg.synthetic_fraction, "share_counting": cfg.share_counting,
                   "n_real": len(train_idx), "n_synthetic": n_syn, "n_val": len(val_idx), "val_split": cfg.val_split,
                   "val_ids": [real.ids[i] for i in val_idx], "resolution": cfg.resolution,
                   "downsample": cfg.downsample, "pos_weight": [round(float(w), 3) for w in weight],
                   "training": "unet", "preset": cfg.preset}
    run.log.info("data: %d real + %d synthetic training pairs (%.0f %% synthetic), %d held out, at %d²; "
                 "BCE pos_weight %s", len(train_idx), n_syn, 100 * n_syn / len(data), len(val_idx), cfg.resolution,
                 description["pos_weight"])
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = UNet(cfg.model).to(dev, memory_format=fmt)
    run.log.info("U-Net %.3f M parameters, classes %s", sum(p.numel() for p in model.parameters()) / 1e6,
                 [labels.NAMES[c] for c in cfg.model.classes])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed * 7919 + dist.rank)  # augmentation
    state = harness.TrainState(modules={"unet": model}, optimizers={"unet": opt}, generators={"train": gen})

    # Resume.
    start = run.resume(state, require=cfg.resume)
    net = dist.wrap(model)
    if cfg.compile:
        net = torch.compile(net)
    sampler = harness.BatchSampler(len(data), batch=cfg.batch, seed=cfg.seed, rank=dist.rank,
                                   world_size=dist.world_size)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and dev.type == "cuda"
                else contextlib.nullcontext())
    classes = torch.tensor(cfg.model.classes, device=dev)
    names = [labels.NAMES[c] for c in cfg.model.classes]
    shown = val if val is not None else data
    val_keys = [f"val_f1{p}_{n}" for p in ("", "_pooled") for n in names] if val is not None else []
    if start >= cfg.steps:
        run.log.info("already at step %d ≥ --steps %d: nothing to train", start, cfg.steps)

    # Loop.
    val_metrics: dict[str, float] = {}
    t0, t0_step = time.perf_counter(), start
    stopped = False
    try:
        for step in run.steps(state, total=cfg.steps, snapshot_every=cfg.snapshot_every, postfix_keys=("loss", "dice")):
            photo, masks, _ = batch_tensors(data, sampler.indices(step), classes=classes, device=dev)
            if cfg.crop and cfg.crop < cfg.resolution:
                photo, masks = random_crop(photo, masks, size=cfg.crop, generator=gen)
            photo, masks = augment(photo, masks, cfg=cfg.augment, generator=gen)
            with autocast:
                logits = net(photo.contiguous(memory_format=fmt))
            loss, terms = segmentation_loss(logits, masks, pos_weight=weight, dice_weight=cfg.dice_weight,
                                             bce_weight=cfg.bce_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

            # Validate, log and sample (validation and samples on rank 0: the others wait at the next all-reduce).
            val_step = val is not None and (step % cfg.val_every == 0 or step == cfg.steps)  # the same on every rank
            if val_step and dist.is_main:
                res = validate(model, val, batch=cfg.batch, device=dev)  # type: ignore[arg-type]
                val_metrics = {f"val_f1_{n}": res["per_image"]["f1"][n] for n in names}
                val_metrics.update({f"val_f1_pooled_{n}": res["pooled"]["f1"][n] for n in names})
            if step % cfg.log_every == 0 or step == cfg.steps or val_step:
                stats = dist.all_reduce_mean(torch.stack([loss.detach(), terms["dice"], terms["bce"]]).cpu())
                elapsed, n_steps = time.perf_counter() - t0, step - t0_step
                t0, t0_step = time.perf_counter(), step
                scalars = dict(zip(("loss", "dice", "bce"), stats.tolist()), sec_per_step=elapsed / max(1, n_steps))
                # NaN = not validated at this step (every row has every column: metrics.csv's header is fixed).
                scalars.update({k: val_metrics.get(k, float("nan")) if val_step else float("nan") for k in val_keys})
                run.log_scalars(step, scalars)
            if dist.is_main and (step % cfg.sample_every == 0 or step == cfg.steps):
                run.save_grid(step, sample_grid(model, shown, rows=cfg.sample_rows, device=dev))
    except harness.StopRequested:
        stopped = True  # state saved by run.steps; still write the inference checkpoint below

    # Snapshot, with the operating point chosen on the validation split.
    point = operating_point(model, val, cfg=cfg, device=dev) if dist.is_main else {"thresholds": {}}
    run.log.info("thresholds %s (%s)", point["thresholds"], point.get("source"))
    description.update(thresholds=point["thresholds"], operating_point=point)
    val_metrics.update({f"val_f1_pooled_at_threshold_{n}": v for n, v in point.get("val_f1_pooled", {}).items()
                        if v is not None})
    finite = {k: v for k, v in val_metrics.items() if math.isfinite(v)}
    path = run.export(model, name="unet", data=description, step=state.step, metrics=finite, export_to=cfg.export_to)
    run.close()
    harness.shutdown(dist)
    if stopped:
        raise harness.StopRequested
    return path


def main(argv: list[str] | None = None) -> int:
    return harness.run_main(train, parse_args(argv), prog="training.unet")


if __name__ == "__main__":
    raise SystemExit(main())
