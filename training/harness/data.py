"""Studio datasets as in-memory tensors, and a stateless, resumable, per-rank batch sampler.

The datasets are small (hundreds to a few thousand maps), so they are decoded once into uint8
tensors; a batch is indexed and converted to one-hot on the fly. Batches are a pure function of
(seed, step, rank), so resuming at step N replays exactly the batches an uninterrupted run would see.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fundus_studio import labels
from fundus_studio.dataset import StudioDataset
from fundus_studio.errors import DatasetError

DOWNSAMPLE_MODES: tuple[str, ...] = ("nearest", "area", "keep-lesions", "fractions")
# Soft maps are held as uint8 fractions × FRACTION_SCALE (a 1/255 step; an 8×8 block's is 1/64).
FRACTION_SCALE: float = 255.0


def class_fractions(index_map: np.ndarray, size: int) -> np.ndarray:
    """(S, S) uint8 indices → (C, size, size) float32 area fraction of each class per pixel (rows sum
    to 1). A thin vessel survives downsampling as a partial occupancy instead of vanishing."""
    one_hot = labels.to_one_hot(index_map).transpose(1, 2, 0).astype(np.float32)  # (S, S, C)
    if index_map.shape[0] == size:
        return np.ascontiguousarray(one_hot.transpose(2, 0, 1))
    frac = cv2.resize(one_hot, (size, size), interpolation=cv2.INTER_AREA)  # (size, size, C)
    return np.ascontiguousarray(frac.transpose(2, 0, 1))


def resize_index_map(index_map: np.ndarray, size: int, *, mode: str = "area") -> np.ndarray:
    """(S, S) uint8 indices → (size, size).

    nearest: plain nearest neighbour. area: argmax of each class's area fraction (the one-hot is
    area-downsampled). keep-lesions: like area, but a block holding any lesion pixel takes its
    latest-painted lesion, so lesions smaller than a block survive (enlarged to one pixel).
    Upsampling always uses nearest neighbour.
    """
    if mode not in DOWNSAMPLE_MODES:
        raise ValueError(f"downsample mode must be one of {DOWNSAMPLE_MODES}, got {mode!r}")
    if index_map.shape[0] == size:
        return index_map
    if mode == "fractions":
        mode = "area"
    if mode == "nearest" or index_map.shape[0] < size:
        return cv2.resize(index_map, (size, size), interpolation=cv2.INTER_NEAREST)
    one_hot = labels.to_one_hot(index_map).transpose(1, 2, 0)  # (S, S, C)
    frac = np.stack([cv2.resize(one_hot[..., k], (size, size), interpolation=cv2.INTER_AREA)
                     for k in range(labels.NUM_CLASSES)])  # (C, size, size)
    out = frac.argmax(axis=0).astype(np.uint8)
    if mode == "keep-lesions":
        for k in labels.PAINT_ORDER:
            if k in labels.LESIONS:
                out[frac[k] > 0] = k
    return out


@dataclass(frozen=True)
class LabelMaps:
    """Label maps held in memory. maps: (N, R, R) uint8; grades: (N,) int64 (-1 = unknown);
    fractions: (N, C, R, R) uint8 class fractions × FRACTION_SCALE, when loaded with "fractions"."""

    maps: torch.Tensor
    grades: torch.Tensor
    ids: tuple[str, ...]
    description: dict[str, Any]  # where they came from, for checkpoints' "data" field
    fractions: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def one_hot(self, index: torch.Tensor, *, device: torch.device | str = "cpu") -> torch.Tensor:
        """Maps at ``index`` as (B, C, R, R) float32 one-hot on ``device``."""
        m = self.maps[index].to(device).long()
        return F.one_hot(m, labels.NUM_CLASSES).permute(0, 3, 1, 2).float()

    def soft(self, index: torch.Tensor, *, device: torch.device | str = "cpu") -> torch.Tensor:
        """Class fractions at ``index`` as (B, C, R, R) float32 rows summing to 1 (needs "fractions")."""
        if self.fractions is None:
            raise ValueError("these maps were loaded without class fractions (downsample='fractions')")
        f = self.fractions[index].to(device).float()
        return f / f.sum(dim=1, keepdim=True).clamp(min=1e-6)

    def subset(self, index: np.ndarray | list[int]) -> LabelMaps:
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return LabelMaps(self.maps[idx], self.grades[idx], tuple(self.ids[i] for i in idx.tolist()),
                         dict(self.description, count=len(idx)),
                         None if self.fractions is None else self.fractions[idx])


def load_label_maps(
    root: str | os.PathLike[str], *, resolution: int, require_grade: bool = True, downsample: str = "area"
) -> LabelMaps:
    """Read every label map of a studio dataset, resized to ``resolution``.

    With ``require_grade`` samples without a grade are left out (a grade-conditioned model cannot use
    them); the description records how many.
    """
    ds = StudioDataset.open(root)
    keep = [s for s in ds.samples if s.grade is not None or not require_grade]
    if not keep:
        raise DatasetError(f"{ds.root}: no samples{' with a grade' if require_grade else ''} to train on")
    fractions = None
    if downsample == "fractions":
        soft = [class_fractions(ds.label(s), resolution) for s in keep]
        fractions = torch.from_numpy(np.stack([np.rint(f * FRACTION_SCALE).astype(np.uint8) for f in soft]))
        maps = np.stack([f.argmax(axis=0).astype(np.uint8) for f in soft])
    else:
        maps = np.stack([resize_index_map(ds.label(s), resolution, mode=downsample) for s in keep])
    grades = np.array([-1 if s.grade is None else s.grade for s in keep], dtype=np.int64)
    description = {
        "dataset": str(ds.root), "created_by": ds.info.get("created_by"), "size": ds.size,
        "count": len(keep), "skipped_without_grade": len(ds.samples) - len(keep),
        "resolution": resolution, "downsample": downsample,
        "grade_counts": np.bincount(grades[grades >= 0], minlength=labels.NUM_GRADES).tolist(),
    }
    return LabelMaps(torch.from_numpy(maps), torch.from_numpy(grades), tuple(s.id for s in keep), description,
                     fractions)


@dataclass(frozen=True)
class Pairs:
    """Photo + label pairs for the renderer and the segmenter. images: (N, R, R, 3) uint8."""

    images: torch.Tensor
    maps: torch.Tensor
    grades: torch.Tensor
    ids: tuple[str, ...]
    description: dict[str, Any]

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray | torch.Tensor | list[int]) -> Pairs:
        """The pairs at ``index``, in that order."""
        idx = torch.as_tensor(np.asarray(index, dtype=np.int64))
        return Pairs(self.images[idx], self.maps[idx], self.grades[idx], tuple(self.ids[i] for i in idx.tolist()),
                     dict(self.description, count=len(idx)))

    def batch(self, index: torch.Tensor, *, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """(photos (B, 3, R, R) float in [-1, 1], one-hot maps (B, C, R, R)) on ``device``."""
        img = self.images[index].to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        m = F.one_hot(self.maps[index].to(device).long(), labels.NUM_CLASSES).permute(0, 3, 1, 2).float()
        return img, m


def resize_photo(image: np.ndarray, size: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 photo (or render) → ``(size, size, 3)``: area-averaged when shrinking,
    bilinear when growing; the one path every photo of a training or evaluation set takes."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    interp = cv2.INTER_AREA if size < image.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interp)


def load_pairs(root: str | os.PathLike[str], *, resolution: int, downsample: str = "nearest") -> Pairs:
    """Every (photo, label map) of a studio dataset at ``resolution`` (photos by :func:`resize_photo`)."""
    ds = StudioDataset.open(root)
    if not ds.samples:
        raise DatasetError(f"{ds.root}: empty dataset")
    images = np.stack([resize_photo(ds.image(s), resolution) for s in ds.samples])
    maps = np.stack([resize_index_map(ds.label(s), resolution, mode=downsample) for s in ds.samples])
    grades = np.array([-1 if s.grade is None else s.grade for s in ds.samples], dtype=np.int64)
    description = {"dataset": str(ds.root), "created_by": ds.info.get("created_by"), "size": ds.size,
                   "count": len(ds.samples), "resolution": resolution}
    return Pairs(torch.from_numpy(images), torch.from_numpy(maps), torch.from_numpy(grades),
                 tuple(s.id for s in ds.samples), description)


def holdout_split(ids: tuple[str, ...] | list[str], *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, held-out) index arrays: a sample is held out by a hash of (seed, id),
    so the split does not change when samples are added."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must lie in [0, 1), got {fraction}")
    scores = np.array([int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "little") / 2.0**64
                       for i in ids])
    held = scores < fraction
    return np.flatnonzero(~held), np.flatnonzero(held)


class BatchSampler:
    """Indices of the batch each rank trains on at each step, as a pure function of the step.

    Without ``weights``: epochs of seeded permutations, the global batch (batch × world_size) cut
    into per-rank slices. With ``weights`` (e.g. grade balancing): draws with replacement.
    """

    def __init__(self, n: int, *, batch: int, seed: int, rank: int = 0, world_size: int = 1,
                 weights: torch.Tensor | None = None) -> None:
        if n < 1 or batch < 1:
            raise ValueError(f"need at least one sample and a positive batch, got n={n}, batch={batch}")
        self.n, self.batch, self.seed, self.rank, self.world = n, batch, seed, rank, world_size
        self.weights = None if weights is None else weights.double() / weights.double().sum()

    def _perm(self, epoch: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))

    def indices(self, step: int) -> torch.Tensor:
        """(batch,) int64 indices for 1-based ``step``."""
        if self.weights is not None:
            g = torch.Generator().manual_seed(hash((self.seed, step, self.rank)) & 0x7FFF_FFFF_FFFF_FFFF)
            return torch.multinomial(self.weights, self.batch, replacement=True, generator=g)
        start = ((step - 1) * self.world + self.rank) * self.batch
        pos = torch.arange(start, start + self.batch)
        epochs = (pos // self.n).tolist()
        perms = {e: self._perm(e) for e in set(epochs)}
        return torch.stack([perms[e][p % self.n] for e, p in zip(epochs, pos.tolist())])


def balanced_weights(grades: torch.Tensor, *, num_grades: int = labels.NUM_GRADES) -> torch.Tensor:
    """Per-sample weights that make every present grade equally likely."""
    counts = torch.bincount(grades.clamp(min=0), minlength=num_grades).double()
    return 1.0 / counts[grades.clamp(min=0)]
