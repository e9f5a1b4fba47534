"""One preprocessing path for every photo: field of view → crop → centred square → resize.

Every dataset loader and the extractor call :func:`preprocess`; none re-implements a step. The
transform is returned as a frozen :class:`Geometry` so that any number of masks follow the photo
exactly, whatever their own resolution (IDRiD's masks are full-size while its photos are reduced
while decoding).

Photos are resized with ``cv2.INTER_AREA`` (never nearest), index maps with nearest, and binary
masks by area coverage (see :meth:`Geometry.mask`). Pixels outside the field of view are black in
photos and ``labels.OUTSIDE`` in label maps.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np

from fundus_studio.errors import InputError


@dataclass(frozen=True)
class FovConfig:
    """How the field of view is told apart from the camera's dark surround."""

    smooth_frac: float = 0.004  # median-blur width as a fraction of the longer side (JPEG noise, text)
    rel_level: float = 0.12  # threshold as a fraction of the bright level (99th percentile) ...
    min_level: float = 12.0  # ... but never below this (JPEG backgrounds are 0–10, not 0)
    min_area: float = 0.10  # a FOV covering less of the image than this is not a fundus photo

    def __post_init__(self) -> None:
        if not 0.0 < self.rel_level < 1.0:
            raise ValueError(f"rel_level must be in (0, 1), got {self.rel_level}")
        if not 0.0 < self.min_area < 1.0:
            raise ValueError(f"min_area must be in (0, 1), got {self.min_area}")
        if self.smooth_frac < 0:
            raise ValueError(f"smooth_frac must be ≥ 0, got {self.smooth_frac}")


def detect_fov(photo: np.ndarray, *, config: FovConfig = FovConfig()) -> np.ndarray:
    """The camera's field of view of an ``(H, W, 3)`` uint8 photo as an ``(H, W)`` bool mask.

    Thresholds the brightest channel (the red one in practice) against the dark surround, keeps the
    largest component and fills it to its convex hull: the aperture is convex (a disc, possibly cut by
    the image borders as in IDRiD, possibly with a small notch), so dark lesions or vessels at its rim
    never open holes. A photo with no dark surround (already cropped inside the FOV) is all FOV.
    """
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 photo, got {photo.shape} {photo.dtype}")
    h, w = photo.shape[:2]
    value = np.maximum(np.maximum(photo[..., 0], photo[..., 1]), photo[..., 2])  # 5× faster than .max(axis=2)
    k = int(config.smooth_frac * max(h, w)) | 1
    if k >= 3:
        value = cv2.medianBlur(value, min(k, 255))
    bright = float(np.percentile(value, 99))
    level = max(config.min_level, config.rel_level * bright)
    inside = (value > level).astype(np.uint8)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(inside, connectivity=8)
    if n < 2:
        raise InputError("no field of view found: the photo is uniformly dark")
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < config.min_area * h * w:
        raise InputError(
            f"no field of view found: the largest bright region covers "
            f"{100.0 * stats[largest, cv2.CC_STAT_AREA] / (h * w):.1f} % of the photo"
        )
    contours, _ = cv2.findContours((comp == largest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours))
    fov = np.zeros((h, w), np.uint8)
    cv2.fillPoly(fov, [hull], 1)
    return fov.astype(bool)


@dataclass(frozen=True)
class Geometry:
    """Crop to ``box``, pad to a centred ``side``×``side`` square, resize to ``size``×``size``.

    Coordinates are in pixels of the photo the geometry was fitted on (``source_shape``); a mask of a
    different resolution but the same aspect ratio is mapped by scaling the box.
    """

    source_shape: tuple[int, int]  # (H, W) of the photo
    box: tuple[int, int, int, int]  # (top, left, bottom, right) of the FOV, bottom/right exclusive
    size: int  # output side in pixels

    def __post_init__(self) -> None:
        top, left, bottom, right = self.box
        h, w = self.source_shape
        if not (0 <= top < bottom <= h and 0 <= left < right <= w):
            raise ValueError(f"box {self.box} does not fit a {h}×{w} image")
        if self.size < 1:
            raise ValueError(f"size must be positive, got {self.size}")

    @property
    def side(self) -> int:
        """Side of the padded square, in source pixels."""
        top, left, bottom, right = self.box
        return max(bottom - top, right - left)

    @property
    def scale(self) -> float:
        """Output pixels per source pixel."""
        return self.size / self.side

    def to_output(self, x: float, y: float) -> tuple[float, float]:
        """Map a point (pixel centres) from source to output coordinates."""
        top, left, bottom, right = self.box
        pad_top, pad_left = (self.side - (bottom - top)) // 2, (self.side - (right - left)) // 2  # as _square
        s = self.scale
        return ((x + 0.5 - left + pad_left) * s - 0.5, (y + 0.5 - top + pad_top) * s - 0.5)

    def _square(self, array: np.ndarray, *, what: str) -> np.ndarray:
        """Crop and pad ``array`` (any resolution with the source's aspect ratio) to a square."""
        h, w = self.source_shape
        ah, aw = array.shape[:2]
        if abs(ah / h - aw / w) > 0.01 * max(ah / h, aw / w) + 1.0 / min(h, w):
            raise InputError(f"{what} is {aw}×{ah} px but the photo is {w}×{h}: aspect ratios differ")
        sy, sx = ah / h, aw / w
        top, left, bottom, right = self.box
        t, b = round(top * sy), max(round(top * sy) + 1, round(bottom * sy))
        le, r = round(left * sx), max(round(left * sx) + 1, round(right * sx))
        crop = array[t:b, le:r]
        side = max(round(self.side * sy), round(self.side * sx), crop.shape[0], crop.shape[1])
        pt, pl = (side - crop.shape[0]) // 2, (side - crop.shape[1]) // 2
        out = np.zeros((side, side, *array.shape[2:]), array.dtype)
        out[pt : pt + crop.shape[0], pl : pl + crop.shape[1]] = crop
        return out

    def photo(self, photo: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 → ``(size, size, 3)`` uint8, area-averaged (linear when enlarging)."""
        sq = self._square(photo, what="photo")
        interp = cv2.INTER_AREA if sq.shape[0] >= self.size else cv2.INTER_LINEAR
        return cv2.resize(sq, (self.size, self.size), interpolation=interp)

    def mask(self, mask: np.ndarray, *, what: str = "mask") -> np.ndarray:
        """``(h, w)`` bool → ``(size, size)`` bool by area coverage.

        An output pixel is positive when the mask covers at least half of it, or when it is a local
        maximum of coverage: shrinking a 4288-px IDRiD mask to 512 px would otherwise drop every
        microaneurysm smaller than about eight source pixels (nearest sampling drops them at random).
        """
        sq = self._square(mask.astype(np.uint8), what=what).astype(np.float32)
        if sq.shape[0] <= self.size:
            return cv2.resize(sq, (self.size, self.size), interpolation=cv2.INTER_LINEAR) >= 0.5
        cover = cv2.resize(sq, (self.size, self.size), interpolation=cv2.INTER_AREA)
        peak = (cover > 0) & (cover >= cv2.dilate(cover, np.ones((3, 3), np.uint8)))
        return (cover >= 0.5) | peak

    def index_map(self, index_map: np.ndarray, *, what: str = "label map") -> np.ndarray:
        """``(h, w)`` uint8 class indices → ``(size, size)`` uint8 by nearest neighbour."""
        sq = self._square(index_map, what=what)
        return cv2.resize(sq, (self.size, self.size), interpolation=cv2.INTER_NEAREST)


def fit_geometry(fov: np.ndarray, *, size: int) -> Geometry:
    """The geometry that crops an ``(H, W)`` FOV mask to its bounding box and resizes it to ``size``."""
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    if rows.size == 0:
        raise InputError("empty field of view")
    box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    return Geometry(source_shape=(fov.shape[0], fov.shape[1]), box=box, size=size)


@dataclass(frozen=True)
class Preprocessed:
    """A photo brought to the studio's square format, with its FOV and any masks that followed it."""

    photo: np.ndarray  # (S, S, 3) uint8, black outside the FOV
    fov: np.ndarray  # (S, S) bool
    geometry: Geometry
    masks: dict[Hashable, np.ndarray] = field(default_factory=dict)  # (S, S) bool each, inside the FOV


def preprocess(
    photo: np.ndarray,
    *,
    size: int,
    masks: Mapping[Hashable, np.ndarray] | None = None,
    fov_config: FovConfig = FovConfig(),
) -> Preprocessed:
    """Detect the FOV of an ``(H, W, 3)`` uint8 photo, square it to ``size`` and move ``masks`` along.

    Masks are ``(h, w)`` bool arrays of the photo's aspect ratio (any resolution); they come back
    ``(size, size)`` bool, cleared outside the FOV. The FOV's diameter (the wider side of its bounding
    box) spans the whole output side.
    """
    fov_src = detect_fov(photo, config=fov_config)
    geometry = fit_geometry(fov_src, size=size)
    fov = geometry.mask(fov_src, what="field of view")
    out_photo = geometry.photo(photo)
    out_photo[~fov] = 0
    moved = {key: geometry.mask(m, what=f"mask {key}") & fov for key, m in (masks or {}).items()}
    return Preprocessed(photo=out_photo, fov=fov, geometry=geometry, masks=moved)
