"""Classical shape analysis of label maps: does a map look like a retina?

Per map (any side; lengths are reported as fractions of the field of view's diameter or in pixels of
the map as given):

- optic disc: the disc mask closed over the gaps vessels cut, its components of at least
  ``MIN_DISC_COMPONENT`` of the FOV diameter; "plausible" = exactly one, of equivalent diameter
  ``PLAUSIBLE_DISC`` (fractions of the FOV diameter);
- vessel share: vessel pixels / FOV pixels;
- tree connectivity: share of the vessel pixels in the largest 8-connected component of
  vessels ∪ disc (a tree leaves the disc; fragments do not);
- mean vessel width: vessel area / skeleton length, in pixels;
- lesion share: lesion pixels / FOV pixels; lesion components per class.

Across maps: diversity (share of pixels two maps of one grade differ on) and memorisation (each map's
share of differing pixels to its nearest training map, at a reduced side).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from skimage.morphology import skeletonize

from fundus_studio import labels

PLAUSIBLE_DISC: tuple[float, float] = (0.07, 0.20)  # equivalent diameter / FOV diameter of a real disc
MIN_DISC_COMPONENT: float = 0.03  # disc components smaller than this (of the FOV diameter) are specks
DISC_CLOSING: float = 0.015  # radius of the closing over vessel-cut gaps, as a fraction of the FOV diameter
MEMORISATION_SIDE: int = 64  # side at which nearest-training-map distances are measured


@dataclass(frozen=True)
class MapAnatomy:
    """The shape measures of one map (NaN where undefined, e.g. the width of a map without vessels)."""

    fov_diameter: float  # equivalent diameter of the field of view, pixels
    disc_count: int  # disc components ≥ MIN_DISC_COMPONENT
    disc_diameter: float  # equivalent diameter of the largest disc component / FOV diameter (0 without)
    plausible_disc: bool  # exactly one disc, of a plausible size
    vessel_share: float  # vessel pixels / FOV pixels
    connectivity: float  # vessel pixels in the largest component of vessels ∪ disc / vessel pixels
    vessel_width: float  # vessel area / skeleton length, pixels
    lesion_share: float  # lesion pixels / FOV pixels
    lesion_components: dict[int, int]  # class index → 8-connected components


def _disc_kernel(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def measure(index_map: np.ndarray) -> MapAnatomy:
    """(S, S) uint8 class indices → :class:`MapAnatomy`."""
    fov = index_map != labels.OUTSIDE
    fov_px = max(int(fov.sum()), 1)
    fov_d = float(np.sqrt(4.0 * fov_px / np.pi))

    disc = (index_map == labels.OPTIC_DISC).astype(np.uint8)
    radius = max(1, int(round(DISC_CLOSING * fov_d)))
    closed = cv2.morphologyEx(disc, cv2.MORPH_CLOSE, _disc_kernel(radius))
    n, _, stats, _ = cv2.connectedComponentsWithStats(closed, connectivity=8)
    diameters = np.sqrt(4.0 * stats[1:, cv2.CC_STAT_AREA] / np.pi) / fov_d if n > 1 else np.zeros(0)
    big = diameters[diameters >= MIN_DISC_COMPONENT]
    disc_d = float(big.max()) if len(big) else 0.0
    plausible = len(big) == 1 and PLAUSIBLE_DISC[0] <= disc_d <= PLAUSIBLE_DISC[1]

    vessel = index_map == labels.VESSEL
    v_px = int(vessel.sum())
    tree = (vessel | (disc > 0)).astype(np.uint8)
    n, comp = cv2.connectedComponents(tree, connectivity=8)
    if v_px and n > 1:
        per_comp = np.bincount(comp[vessel], minlength=n)[1:]
        connectivity = float(per_comp.max() / v_px)
    else:
        connectivity = float("nan")
    skeleton_len = int(skeletonize(vessel).sum()) if v_px else 0
    width = v_px / skeleton_len if skeleton_len else float("nan")

    lesion = np.isin(index_map, labels.LESIONS)
    components = {k: cv2.connectedComponents((index_map == k).astype(np.uint8), connectivity=8)[0] - 1
                  for k in labels.LESIONS}
    return MapAnatomy(fov_diameter=fov_d, disc_count=len(big), disc_diameter=disc_d, plausible_disc=plausible,
                      vessel_share=v_px / fov_px, connectivity=connectivity, vessel_width=width,
                      lesion_share=float(lesion.sum()) / fov_px, lesion_components=components)


def summarise(measures: list[MapAnatomy]) -> dict[str, float]:
    """Medians and rates over maps (NaN-aware), as the evaluation reports them."""
    def med(values: list[float]) -> float:
        arr = np.array(values, dtype=float)
        return float(np.nanmedian(arr)) if np.isfinite(arr).any() else float("nan")

    out = {
        "count": float(len(measures)),
        "plausible_disc_rate": float(np.mean([m.plausible_disc for m in measures])) if measures else float("nan"),
        "disc_diameter": med([m.disc_diameter if m.disc_count else np.nan for m in measures]),
        "vessel_share": med([m.vessel_share for m in measures]),
        "connectivity": med([m.connectivity for m in measures]),
        "vessel_width": med([m.vessel_width for m in measures]),
        "lesion_share": float(np.mean([m.lesion_share for m in measures])) if measures else float("nan"),
        "lesion_free_rate": float(np.mean([m.lesion_share == 0 for m in measures])) if measures else float("nan"),
    }
    for k in labels.LESIONS:
        out[f"components_{labels.NAMES[k]}"] = (float(np.mean([m.lesion_components[k] for m in measures]))
                                                if measures else float("nan"))
    return out


def pairwise_disagreement(maps: np.ndarray, *, pairs: int, rng: np.random.Generator) -> float:
    """Mean share of pixels on which two random different maps disagree (NaN for fewer than two)."""
    if len(maps) < 2:
        return float("nan")
    i = rng.integers(0, len(maps), pairs)
    j = (i + rng.integers(1, len(maps), pairs)) % len(maps)
    return float(np.mean([(maps[a] != maps[b]).mean() for a, b in zip(i, j)]))


def nearest_distances(queries: np.ndarray, references: np.ndarray, *, exclude_self: bool = False,
                      chunk: int = 64) -> np.ndarray:
    """(Q, s, s) and (R, s, s) maps of one side → (Q,) share of differing pixels to the nearest
    reference. ``exclude_self`` skips a reference identical to the query's index (queries ⊂ refs)."""
    if queries.shape[1:] != references.shape[1:]:
        raise ValueError(f"maps of different sides: {queries.shape[1:]} vs {references.shape[1:]}")
    q = queries.reshape(len(queries), -1)
    r = references.reshape(len(references), -1)
    out = np.empty(len(q))
    for start in range(0, len(q), chunk):
        block = q[start: start + chunk]
        dist = (block[:, None, :] != r[None, :, :]).mean(axis=2)  # (chunk, R)
        if exclude_self:
            rows = np.arange(len(block))
            dist[rows, start + rows] = np.inf
        out[start: start + len(block)] = dist.min(axis=1)
    return out
