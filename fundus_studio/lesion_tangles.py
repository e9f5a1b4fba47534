"""New vessels drawn as tangles: a step of label sampling, after the spots and before the tree.

Neovascularisation is a tangle of fine looping strands, 1–2 px wide at 512², on the optic disc (NVD)
or on the arcades (NVE); IRMA are a few short, twisted strands. A 64² prior says where a tangle lies and how far it reaches, but its upsampled
probabilities cannot hold the strands, so the arg-max paints a solid blob; on the disc that blob
covers the disc's middle and the disc falls apart into a ring or pieces (grade 4's plausible-disc rate
fell to 0.68 at some sampling settings: docs/training.md, "Sampling speed (session 11)" and "(session 12)"). This step
redraws every blob of a tangle class as a tangle, keeping what the prior decided:

1. **Where and how far**: the tangle is centred on the blob's centroid and spans its bounding box
   (its diameter is the box's longer side, at least ``min_diameter``).
2. **Beneath**: the blob's own pixels take the class of the nearest retina or disc pixel, so a blob
   over the disc gives the disc back and one on the retina gives the retina back (the vessel tree,
   drawn next, runs through it).
3. **Shape**: the strands are those of the phantoms and of Paint's lesion stamp
   (:func:`fundus_studio.phantom.lesions.draw_lesion`), at the strand width of a disc of the map's
   nominal size, their count in proportion to the tangle's radius; they are drawn over retina, disc
   and vessels only, never over another lesion.

Nothing is read from training maps. Seeded: each map draws from its own generator (the sampler's
``map_rng``), so a map does not depend on the batch it was drawn in.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from fundus_studio import labels
from fundus_studio.phantom.config import PhantomConfig
from fundus_studio.phantom.lesions import (LESION_KINDS, NVE_MIN_STRANDS, NVE_REFERENCE_RADIUS, draw_lesion,
                                           nominal_disc_diameter)

# what a tangle may be drawn over: the retina's background classes, never another lesion
_BENEATH: tuple[int, ...] = (labels.RETINA, labels.OPTIC_DISC, labels.VESSEL)
# what a cleared blob's pixels may become
_FILL_FROM: tuple[int, ...] = (labels.RETINA, labels.OPTIC_DISC)
# the phantoms' shapes and counts the tangles follow (built once: it is read for every blob)
_PHANTOM = PhantomConfig()


@dataclass(frozen=True)
class LesionTanglesConfig:
    """Which lesion kinds are redrawn as tangles (kinds of ``draw_lesion`` drawn as strands)."""

    kinds: tuple[str, ...] = ("neovascularisation", "irma")  # the arg-max's blobs of their classes become tangles
    min_diameter: float = 0.3  # × the nominal disc diameter: smaller blobs still get a tangle this wide
    # px added to the tangle's radius for the window it is drawn in (centred on the blob's centroid):
    # a strand's width and the centroid's rounding may reach past the radius
    margin: int = 2

    def __post_init__(self) -> None:
        for kind in self.kinds:
            if kind not in LESION_KINDS or LESION_KINDS[kind] not in (labels.NEOVASCULARISATION, labels.IRMA):
                raise ValueError(f"{kind!r} is not a tangle kind (neovascularisation or irma)")
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"a kind is listed twice: {self.kinds}")
        if self.min_diameter <= 0 or self.margin < 0:
            raise ValueError("min_diameter must be positive and margin ≥ 0")


def _fill_from_outside(index_map: np.ndarray, blobs: np.ndarray, *, pad: int) -> None:
    """Give each pixel of ``blobs`` the class of the nearest retina or disc pixel (in place): not the
    field of view's outside (a blob at the rim would dent it), nor a vessel (the tree redraws them) or
    another lesion (a spot would swell into the blob's area). The search runs in the blobs' box grown
    by ``pad`` (a 512² distance transform per map costs more than the rest of this step)."""
    ys, xs = np.nonzero(blobs)
    r0, r1 = max(0, ys.min() - pad), min(blobs.shape[0], ys.max() + pad + 1)
    c0, c1 = max(0, xs.min() - pad), min(blobs.shape[1], xs.max() + pad + 1)
    window, inside = index_map[r0:r1, c0:c1], blobs[r0:r1, c0:c1]
    not_source = ~np.isin(window, _FILL_FROM)  # the transform measures from its zeros: the sources
    if not_source.all():
        window[inside] = labels.RETINA  # nothing around them to take a class from
        return
    rows, cols = ndimage.distance_transform_edt(not_source, return_distances=False, return_indices=True)
    window[inside] = window[rows[inside], cols[inside]]


def _strands(kind: str, *, radius_dd: float) -> int:
    """Strands of a tangle of ``radius_dd`` disc diameters, in proportion to its radius so that a small
    tangle is not a solid blot. The phantoms scale only their NV off the disc this way; here NV on the
    disc and IRMA scale too, IRMA from its mean count at its mean radius (at least its fewest)."""
    cfg = _PHANTOM
    if LESION_KINDS[kind] == labels.NEOVASCULARISATION:
        count, reference, least = float(np.mean(cfg.nv_strands)), NVE_REFERENCE_RADIUS, NVE_MIN_STRANDS
    else:
        count, reference, least = float(np.mean(cfg.irma_segments)), float(np.mean(cfg.irma_radius)), cfg.irma_segments[0]
    return max(least, round(count * radius_dd / reference))


def redraw_tangles(index_map: np.ndarray, *, rng: np.random.Generator,
                   config: LesionTanglesConfig = LesionTanglesConfig()) -> np.ndarray:
    """Redraw the blobs of each tangle class of one map as tangles.

    Args:
        index_map: ``(S, S)`` uint8 classes with a clean field of view.
        rng: this map's generator.
    Returns:
        ``(S, S)`` uint8 classes; unchanged where the map has none of the classes.
    """
    out = index_map.copy()
    side = out.shape[0]
    dd = nominal_disc_diameter(side, _PHANTOM)
    for kind in config.kinds:
        cls = LESION_KINDS[kind]
        mask = out == cls
        if not mask.any():
            continue
        _, _, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        # every blob at once, so that a blob's nearest outside pixel is never another's
        _fill_from_outside(out, mask, pad=int(np.ceil(dd)))
        for (_, _, w, h, _), (cx, cy) in zip(stats[1:].tolist(), centroids[1:].tolist()):
            diameter = max(float(max(w, h)), config.min_diameter * dd)
            reach = int(np.ceil(diameter / 2.0)) + config.margin
            r0, r1 = max(0, int(cy) - reach), min(side, int(cy) + reach + 1)
            c0, c1 = max(0, int(cx) - reach), min(side, int(cx) + reach + 1)
            window = out[r0:r1, c0:c1]
            drawn = draw_lesion(window, kind, centre=(cx - c0, cy - r0), diameter=diameter,
                                seed=int(rng.integers(2**31)), dd=dd, strands=_strands(kind, radius_dd=diameter / 2 / dd),
                                config=_PHANTOM)
            window[(drawn == cls) & np.isin(window, _BENEATH)] = cls
    return out
