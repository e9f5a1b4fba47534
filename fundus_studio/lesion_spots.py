"""Small lesions drawn as spots: a step of label sampling, before the vessel tree.

Microaneurysms and hard exudates are small round spots: a microaneurysm is a dot of 1–5 px at 512²,
a hard exudate one of many 2–9 px spots in a cluster or a ring. A 64² prior can say where such spots
lie but not how they are arranged inside its 8×8 blocks, so the arg-max of the upsampled
probabilities merges a cluster's mass into one irregular blob and leaves single-pixel specks (the
session-8 report's pool: 15 hard-exudate components a map, a quarter of them one pixel, the largest
11 px across; the training phantoms: 29 spots a map, 2–9 px). This module redraws every connected
blob of such a class as spots, keeping what the prior decided:

1. **Where**: the spots of a blob lie inside the blob grown by ``spread`` × its equivalent diameter
   (centres drawn uniformly there, on retina or vessel pixels), so a cluster stays where the prior
   put its mass.
2. **How much**: spots are added until they cover the blob's area, so each class keeps the share
   the calibration fitted (:mod:`fundus_studio.calibration`).
3. **Shape**: round spots with diameters drawn log-uniformly from the class's range; no spot is
   wider than its blob (a one-pixel speck stays one pixel).

The blob's own pixels become retina first; the vessel tree is drawn afterwards and, as in the
phantoms' paint order, lesions stay on top of vessels. Only the diameter ranges were read from
training maps (their spots' 5th–95th percentiles, docs/training.md); nothing else is copied.
Seeded: the sampler gives each map its own generator, derived from the sampling seed and the map's
index, so a map does not depend on the batch it was drawn in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from fundus_studio import labels
from fundus_studio.vessel_tree import stamp


@dataclass(frozen=True)
class SpotClass:
    """How one lesion class is drawn as spots."""

    name: str  # a lesion class of fundus_studio.labels
    diameter: tuple[float, float]  # px at LesionSpotsConfig.reference_side, drawn log-uniformly
    spread: float  # spots scatter inside the blob grown by this × its equivalent diameter

    def __post_init__(self) -> None:
        if labels.class_index(self.name) not in labels.LESIONS:
            raise ValueError(f"{self.name!r} is not a lesion class")
        lo, hi = self.diameter
        if not 0.0 < lo <= hi:
            raise ValueError(f"need 0 < diameter[0] ≤ diameter[1], got {self.diameter}")
        if self.spread < 0:
            raise ValueError(f"spread must be ≥ 0, got {self.spread}")


@dataclass(frozen=True)
class LesionSpotsConfig:
    """Which lesion classes are drawn as spots (ranges: 5th–95th percentile of the spots' equivalent
    diameters in 300 training phantoms of grades 2–4, docs/training.md)."""

    reference_side: int = 512  # the diameters are in px of a map of this side; other sides scale them
    classes: tuple[SpotClass, ...] = (
        # isolated dots: spread wide, so that a merged blob becomes several microaneurysms
        SpotClass("microaneurysm", diameter=(1.1, 5.3), spread=1.5),
        # clusters of spots about their own diameter apart (phantoms: nearest spot 6.6–11.9 px)
        SpotClass("hard_exudate", diameter=(2.3, 8.7), spread=1.0),
    )

    def __post_init__(self) -> None:
        if self.reference_side < 1:
            raise ValueError(f"reference_side must be positive, got {self.reference_side}")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError(f"a class is listed twice: {names}")


def _grown(blob: np.ndarray, radius: int) -> np.ndarray:
    if radius < 1:
        return blob
    return cv2.dilate(blob.astype(np.uint8), stamp(2 * radius + 1)).astype(bool)


def _spots_for_blob(out: np.ndarray, region: np.ndarray, *, cls: int, area: int,
                    diameter: tuple[float, float], rng: np.random.Generator) -> None:
    """Stamp spots of class ``cls`` into the window ``out`` (in place) until they cover about ``area``
    pixels; centres uniform over ``region`` (never empty: it holds the cleared blob), pixels only where
    ``region`` allows."""
    ys, xs = np.nonzero(region)
    lo, hi = diameter
    widest = max(1.0, 2.0 * math.sqrt(area / math.pi))  # no spot wider than its blob
    covered = 0
    for _ in range(4 * area + 4):  # bounded: spots may overlap or fall on excluded pixels
        d = max(1, int(round(min(lo * (hi / lo) ** rng.random(), widest))))
        j = int(rng.integers(ys.size))
        kernel = stamp(d).view(bool)
        top, left = ys[j] - d // 2, xs[j] - d // 2
        r0, c0 = max(top, 0), max(left, 0)
        r1, c1 = min(top + d, out.shape[0]), min(left + d, out.shape[1])
        spot = kernel[r0 - top : r1 - top, c0 - left : c1 - left] & region[r0:r1, c0:c1]
        window = out[r0:r1, c0:c1]
        new = int((spot & (window != cls)).sum())
        if covered and covered + new - area > area - covered:
            return  # this spot would overshoot the blob's area by more than leaving it out falls short
        window[spot] = cls
        covered += new
        if covered >= area:
            return


def redraw_spots(index_map: np.ndarray, *, rng: np.random.Generator,
                 config: LesionSpotsConfig = LesionSpotsConfig()) -> np.ndarray:
    """Redraw the blobs of each spot class of one map as spots.

    Args:
        index_map: ``(S, S)`` uint8 classes with a clean field of view (the arg-max).
        rng: this map's generator.
    Returns:
        ``(S, S)`` uint8 classes; unchanged where the map has none of the classes.
    """
    out = index_map.copy()
    side = out.shape[0]
    scale = side / config.reference_side
    for spec in config.classes:
        cls = labels.class_index(spec.name)
        mask = out == cls
        if not mask.any():
            continue
        count, components, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        out[mask] = labels.RETINA
        allowed = np.isin(out, (labels.RETINA, labels.VESSEL))
        diameter = (max(1.0, spec.diameter[0] * scale), max(1.0, spec.diameter[1] * scale))
        for j in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[j])
            grow = int(math.ceil(spec.spread * 2.0 * math.sqrt(area / math.pi)))
            r0, r1 = max(0, y - grow), min(side, y + h + grow)
            c0, c1 = max(0, x - grow), min(side, x + w + grow)
            blob = components[r0:r1, c0:c1] == j
            region = _grown(blob, grow) & allowed[r0:r1, c0:c1]
            _spots_for_blob(out[r0:r1, c0:c1], region, cls=cls, area=area, diameter=diameter, rng=rng)
    return out
