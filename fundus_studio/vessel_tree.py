"""Vessel trees from a vessel probability map: the last step of label sampling.

A coarse prior cannot say where inside an 8×8 block a 2-px vessel runs, so the label upsampler
spreads its vessel probability over every path it might take; the arg-max of such a map keeps the
thick vessels as blobs and drops the thin ones, and the tree falls apart (docs/training.md, "A vessel
tree from the prior's vessel mass"). This module draws the vessels as what they are, a tree that
leaves the optic disc:

1. **Tips**: the local maxima of the vessel probability (the places the prior puts vessel mass).
2. **Paths**: from every tip, the least-cost path back to the disc centre, a step costing
   1 / (p_vessel + eps) (Dijkstra on the grid, ``skimage.graph.MCP_Geometric``). Paths follow the
   prior's vessels and merge where they share a trunk, so their union is one connected tree.
3. **Widths**: a segment is as wide as the tips it serves allow by Murray's law (r³ of a parent
   vessel = the sum of r³ of its branches): ``width_min · tips^(1/3)``, capped at ``width_max``.

The disc, the lesions and the field of view stay as the arg-max drew them; pixels the arg-max gave to
vessels and the tree does not take become retina (disc inside the disc's outline): the decoder redraws
vessels and never adds a lesion.
Nothing is copied from training maps: every path is found in the prior's own probability map.
Deterministic: no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from skimage.feature import peak_local_max
from skimage.graph import MCP_Geometric
from skimage.morphology import skeletonize

from fundus_studio.labels import OPTIC_DISC, OUTSIDE, RETINA, VESSEL


@dataclass(frozen=True)
class VesselTreeConfig:
    """How vessels are drawn from the vessel probability (parameters chosen on training maps,
    docs/training.md)."""

    reference_side: int = 512  # the widths below are in px of a map of this side; other sides scale them
    path_scale: float = 0.5  # the path search runs on a grid of this fraction of the side (4× fewer nodes)
    eps: float = 0.05  # a step costs 1 / (p_vessel + eps): smaller follows the prior's vessels more strictly
    # A tip is a local maximum of p_vessel (on the path grid) at least this high, at least tip_spacing
    # path-grid pixels from the next: more tips, more fine branches. Session 12's 0.03 and 1 (were 0.05
    # and 2) raised the vessel share on generated maps from 0.71 to 0.80 × real at the same width
    # (docs/training.md, "A vessel tree from the prior's vessel mass").
    tip_threshold: float = 0.03
    tip_spacing: int = 1
    width_min: float = 1.2  # px at reference_side: the width of a branch that serves a single tip
    width_exponent: float = 1.0 / 3.0  # Murray's law: width ∝ tips served ^ (1/3)
    width_max: float = 7.0  # px at reference_side: the widest trunk
    disc_closing: float = 0.03  # radius of the closing that gives the disc its outline, × half the side

    def __post_init__(self) -> None:
        if self.reference_side < 1:
            raise ValueError(f"reference_side must be positive, got {self.reference_side}")
        if not 0.0 < self.path_scale <= 1.0:
            raise ValueError(f"path_scale must lie in (0, 1], got {self.path_scale}")
        if self.eps <= 0 or self.tip_threshold < 0 or self.tip_spacing < 1:
            raise ValueError("eps must be positive, tip_threshold ≥ 0 and tip_spacing ≥ 1")
        if not 0.0 < self.width_min <= self.width_max or self.width_exponent < 0:
            raise ValueError(f"need 0 < width_min ≤ width_max and width_exponent ≥ 0, got "
                             f"{self.width_min}, {self.width_max}, {self.width_exponent}")
        if self.disc_closing < 0:
            raise ValueError(f"disc_closing must be ≥ 0, got {self.disc_closing}")


def _disc_seed(disc: np.ndarray, p_vessel: np.ndarray) -> tuple[int, int]:
    """Where the tree starts: the centroid of the largest disc component; without a disc, the point
    where the blurred vessel mass is densest (where the arcades meet)."""
    n, _, stats, centroids = cv2.connectedComponentsWithStats(disc.astype(np.uint8), connectivity=8)
    if n > 1:
        big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        cx, cy = centroids[big]
        return int(round(cy)), int(round(cx))
    side = p_vessel.shape[0]
    dense = cv2.GaussianBlur(p_vessel.astype(np.float32), (0, 0), sigmaX=max(1.0, side / 16))
    y, x = np.unravel_index(int(np.argmax(dense)), dense.shape)
    return int(y), int(x)


def tips_served(p_vessel: np.ndarray, fov: np.ndarray, disc: np.ndarray, *,
                config: VesselTreeConfig) -> np.ndarray:
    """(s, s) vessel probability, field of view and disc masks on the path grid → (s, s) float32: for
    each pixel on the tree, the number of tips whose path to the disc passes through it (0 elsewhere)."""
    cost = 1.0 / (p_vessel.astype(np.float64) + config.eps)
    cost[~fov] = np.inf  # paths stay inside the field of view
    seed = _disc_seed(disc, p_vessel)
    count = np.zeros(p_vessel.shape, np.float32)
    if not fov[seed]:
        return count
    mcp = MCP_Geometric(cost)
    reach, steps = mcp.find_costs([seed])
    candidates = np.where(fov & ~disc, p_vessel, 0.0)
    tips = peak_local_max(candidates, min_distance=config.tip_spacing, threshold_abs=config.tip_threshold,
                          exclude_border=False)
    tips = tips[np.isfinite(reach[tips[:, 0], tips[:, 1]])]  # a field of view in pieces: the seed's piece only
    # Each pixel's predecessor on its least-cost path (``steps`` indexes the offset that led to it; -1 at
    # the seed). All tips walk back towards the seed together, one step per round: the same paths as
    # ``mcp.traceback`` gives, a thousand tips in a few hundred vectorised rounds.
    offsets = np.asarray(mcp.offsets)
    rows, cols = np.indices(p_vessel.shape)
    reached = steps >= 0
    step = offsets[np.where(reached, steps, 0)]
    width = p_vessel.shape[1]
    pred = np.where(reached, (rows - step[..., 0]) * width + (cols - step[..., 1]), -1).ravel()
    flat = count.ravel()  # a view: counting into it counts into ``count``
    walkers = tips[:, 0] * width + tips[:, 1]
    while walkers.size:
        np.add.at(flat, walkers, 1.0)
        walkers = pred[walkers]
        walkers = walkers[walkers >= 0]
    return count


@lru_cache(maxsize=64)
def stamp(diameter: int) -> np.ndarray:
    """The (d, d) uint8 0/1 stamp of a disc ``diameter`` px wide: a square for 1–2 px (OpenCV's 2-px
    ellipse is a cross), else OpenCV's ellipse. Vessels and lesion spots are drawn with it. Cached:
    read-only."""
    kernel = (np.ones((diameter, diameter), np.uint8) if diameter <= 2
              else cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (diameter, diameter)))
    kernel.setflags(write=False)
    return kernel


def draw_widths(centreline: np.ndarray, width: np.ndarray) -> np.ndarray:
    """(S, S) bool centreline and float widths in px → (S, S) bool vessel mask: each centreline pixel
    stamped with a disc (:func:`stamp`) of its rounded width."""
    rounded = np.where(centreline, np.rint(width), 0).astype(np.int32)
    vessel = np.zeros(centreline.shape, bool)
    for d in np.unique(rounded[rounded > 0]):
        vessel |= cv2.dilate((rounded == d).astype(np.uint8), stamp(int(d))).astype(bool)
    return vessel


def redraw_vessels(p_vessel: np.ndarray, index_map: np.ndarray, *,
                   config: VesselTreeConfig = VesselTreeConfig()) -> np.ndarray:
    """Replace the arg-maxed vessels of one map by a tree drawn from its vessel probability.

    Args:
        p_vessel: ``(S, S)`` vessel probability at the map's side (the channel arg-maxed into ``index_map``).
        index_map: ``(S, S)`` uint8 classes with a clean field of view.
    Returns:
        ``(S, S)`` uint8 classes: the same map with vessels redrawn; unchanged when the map has no
        vessel probability above the tip threshold.
    """
    side = index_map.shape[0]
    scale = side / config.reference_side
    grid = max(16, int(round(side * config.path_scale)))
    fov = index_map != OUTSIDE
    disc = index_map == OPTIC_DISC
    shrink = (lambda a: cv2.resize(a.astype(np.uint8), (grid, grid), interpolation=cv2.INTER_NEAREST).astype(bool))
    p_small = cv2.resize(p_vessel.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA)
    count = tips_served(p_small, shrink(fov), shrink(disc), config=config)
    if not count.any():
        return index_map
    # The path grid's tree, brought to full side and thinned to a 1-px centreline there.
    up = cv2.resize(count, (side, side), interpolation=cv2.INTER_NEAREST)
    centreline = skeletonize(up > 0)
    width = np.clip(config.width_min * scale * np.maximum(up, 1.0) ** config.width_exponent,
                    1.0, max(1.0, config.width_max * scale))
    vessel = draw_widths(centreline, width) & fov

    radius = max(1, int(round(config.disc_closing * side / 2)))
    outline = cv2.morphologyEx(disc.astype(np.uint8), cv2.MORPH_CLOSE, stamp(2 * radius + 1)).astype(bool)
    old_vessel = index_map == VESSEL
    out = np.where(old_vessel, np.where(outline, OPTIC_DISC, RETINA), index_map)
    # Vessels run over the retina and the disc; lesions stay on top, as in the phantoms' paint order.
    return np.where(vessel & np.isin(out, (RETINA, OPTIC_DISC)), VESSEL, out).astype(np.uint8)
