"""Photo → label map by classical image processing: field of view, optic disc and vessels.

The pieces are reused by :mod:`fundus_studio.prepare` to give real datasets (which annotate lesions
but not vessels, and in FGADR's case not the optic disc) complete label maps:

- :func:`detect_optic_disc` finds the disc as the disc-sized region that is brightest *and* where
  thick dark vessels converge (both cues z-scored inside the FOV, then summed);
- :func:`vessel_mask` gives vessel pseudo-labels: green channel → CLAHE → multi-scale Sato ridge
  filter → hysteresis threshold → small components removed (DATA.md, "Vessels");
- :func:`extract_label_map` combines them with the FOV from :mod:`fundus_studio.preprocess`.

Both detectors resize their input so the FOV is a fixed number of pixels across (512 for vessels,
256 for the disc) whatever the input size, so their pixel parameters mean the same thing for a
4288-px IDRiD photo and a 512-px studio sample.
Lesions are not detected here: a lesion segmenter passes its masks in through ``lesions=``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fundus_studio import labels
from fundus_studio.errors import InputError
from fundus_studio.imageio import read_image, save_label_png
from fundus_studio.preprocess import preprocess


@dataclass(frozen=True)
class ExtractConfig:
    """Parameters of the classical extractor; pixel values are at ``work_size`` unless noted."""

    work_size: int = 512  # the vessel detector runs with the FOV this many pixels across
    rim_px: int = 6  # FOV border band ignored (vignetting and the aperture's edge look like ridges)
    # Optic disc.
    disc_work_size: int = 256  # the disc is ~30 px across at this size: plenty, and 4× cheaper than 512
    disc_ratio: float = 0.125  # disc diameter / FOV diameter (0.11–0.14 in 45–50° photos, DATA.md)
    disc_vessel_weight: float = 1.0  # weight of the vessel-convergence cue against brightness
    vessel_close_px: int = 5  # grey closing (at disc_work_size) that paints vessels over
    # Vessels.
    clahe_clip: float = 2.0  # CLAHE contrast limit on the green channel
    clahe_tiles: int = 8  # CLAHE tiles per side
    sigmas: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5, 3.0)  # Sato scales: vessels 2–8 px wide at 512
    low: float = 0.035  # hysteresis: weakest ridge response kept when connected to a strong one ...
    high: float = 0.08  # ... and the response that seeds a vessel (on a 0–1 CLAHE image)
    min_vessel_px: int = 30  # components smaller than this are noise, not vessel fragments
    exclude_margin_px: int = 3  # grow excluded masks (lesions) by this: ridge filters ring at their borders
    # Around the disc's rim (this band of disc radii) ridges that run around the disc rather than away
    # from it are dropped: the rim and peripapillary crescents respond like vessels, but vessels leave
    # the disc radially. Excluding the whole disc instead would cut the tree in two at its root.
    disc_band: tuple[float, float] = (0.6, 1.6)
    disc_max_cos: float = 0.707  # drop where |cos(vessel normal, radial direction)| exceeds this (45°)

    def __post_init__(self) -> None:
        if min(self.work_size, self.disc_work_size) < 64:
            raise ValueError(f"work sizes must be ≥ 64, got {self.work_size} and {self.disc_work_size}")
        if not 0.0 < self.disc_ratio < 0.5:
            raise ValueError(f"disc_ratio must be in (0, 0.5), got {self.disc_ratio}")
        if not self.sigmas or min(self.sigmas) <= 0:
            raise ValueError(f"sigmas must be positive, got {self.sigmas}")
        if not 0.0 < self.low <= self.high:
            raise ValueError(f"need 0 < low ≤ high, got low={self.low}, high={self.high}")
        if not 0.0 <= self.disc_band[0] < self.disc_band[1]:
            raise ValueError(f"disc_band must be (inner, outer) radii with inner < outer, got {self.disc_band}")


DEFAULT = ExtractConfig()


# --- helpers ------------------------------------------------------------------------------------


def _check_photo(photo: np.ndarray, fov: np.ndarray) -> None:
    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise InputError(f"expected an (H, W, 3) uint8 photo, got {photo.shape} {photo.dtype}")
    if fov.shape != photo.shape[:2]:
        raise InputError(f"field of view {fov.shape} does not match the photo {photo.shape[:2]}")


def _to_work(photo: np.ndarray, fov: np.ndarray, work_size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Resize photo and FOV so the longer side is ``work_size``; returns them and the scale used."""
    scale = work_size / max(photo.shape[:2])
    if abs(scale - 1.0) < 1e-6:
        return photo, fov, 1.0
    size = (max(1, round(photo.shape[1] * scale)), max(1, round(photo.shape[0] * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(photo, size, interpolation=interp)
    small_fov = cv2.resize(fov.astype(np.float32), size, interpolation=cv2.INTER_LINEAR) >= 0.5
    return small, small_fov, scale


def _inner(fov: np.ndarray, px: int) -> np.ndarray:
    """The FOV shrunk by ``px`` pixels."""
    if px <= 0:
        return fov
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.erode(fov.astype(np.uint8), kernel).astype(bool)


def _fill_outside(channel: np.ndarray, inside: np.ndarray, *, sigma: float) -> np.ndarray:
    """Replace pixels outside ``inside`` by a smooth extension of the inside values.

    Filters then see no step at the aperture's edge (a step that ridge filters report as a vessel).
    """
    f = inside.astype(np.float32)
    num = cv2.GaussianBlur(channel.astype(np.float32) * f, (0, 0), sigma)
    den = cv2.GaussianBlur(f, (0, 0), sigma)
    ext = num / np.maximum(den, 1e-3)
    far = den < 1e-3
    if far.any():  # beyond the blur's reach: the inside's mean
        ext[far] = float(channel[inside].mean()) if inside.any() else 0.0
    return np.where(inside, channel.astype(np.float32), ext)


def _zscore(values: np.ndarray, inside: np.ndarray) -> np.ndarray:
    v = values[inside]
    return (values - v.mean()) / (v.std() + 1e-6)


def _fov_diameter(fov: np.ndarray) -> float:
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    return float(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)) if rows.size else 0.0


def disc_mask(shape: tuple[int, int], disc: tuple[float, float, float]) -> np.ndarray:
    """An ``(H, W)`` bool mask of the disc ``(cx, cy, radius)`` in pixels."""
    cx, cy, radius = disc
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2


def disc_circle(mask: np.ndarray) -> tuple[float, float, float] | None:
    """``(cx, cy, radius)`` of a disc mask: its centroid and the radius of a circle of equal area."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return float(xs.mean()), float(ys.mean()), float(np.sqrt(ys.size / np.pi))


# --- optic disc ---------------------------------------------------------------------------------


def detect_optic_disc(
    photo: np.ndarray, fov: np.ndarray, *, config: ExtractConfig = DEFAULT
) -> tuple[float, float, float]:
    """Centre ``(cx, cy)`` and radius of the optic disc, in pixels of ``photo``.

    ``photo`` is ``(H, W, 3)`` uint8, ``fov`` its ``(H, W)`` bool field of view. Method, at
    ``disc_work_size``: (1) brightness — the mean of red and green, vessels painted over by a grey closing,
    divided by a broad background estimate (so vignetting and uneven illumination do not win), then
    averaged over a disc-sized window; (2) vessel convergence — the black top-hat of the green channel
    (thick dark vessels), averaged over a window two disc radii wide, because the main arcades all
    meet at the disc. Each cue is z-scored inside the FOV (shrunk by a disc radius so the rim cannot
    win) and the disc is the maximum of their weighted sum. The radius is not measured: it is
    ``disc_ratio`` × the FOV's diameter / 2.
    """
    _check_photo(photo, fov)
    small, small_fov, scale = _to_work(photo, fov, config.disc_work_size)
    diameter = _fov_diameter(small_fov)
    if diameter == 0:
        raise InputError("empty field of view: cannot look for the optic disc")
    radius = config.disc_ratio * diameter / 2
    inside = _inner(small_fov, max(1, round(config.rim_px * config.disc_work_size / config.work_size)))
    rgb = small.astype(np.float32)
    bright = _fill_outside((rgb[..., 0] + rgb[..., 1]) / 2, inside, sigma=radius)
    green = _fill_outside(rgb[..., 1], inside, sigma=radius)
    close = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (config.vessel_close_px,) * 2)
    # Brightness relative to the surroundings, vessels painted over.
    bright = cv2.morphologyEx(bright, cv2.MORPH_CLOSE, close)
    background = cv2.GaussianBlur(bright, (0, 0), 3 * radius)
    bright = cv2.blur(bright / np.maximum(background, 1.0), (round(2 * radius) | 1,) * 2)
    # Thick dark vessels: black top-hat (closing minus image), then their density.
    vessels = cv2.morphologyEx(green, cv2.MORPH_CLOSE, close) - green
    density = cv2.GaussianBlur(vessels, (0, 0), radius)
    search = _inner(small_fov, round(radius))
    if not search.any():
        search = small_fov
    score = _zscore(bright, search) + config.disc_vessel_weight * _zscore(density, search)
    score[~search] = -np.inf
    y, x = np.unravel_index(int(np.argmax(score)), score.shape)
    return ((x + 0.5) / scale - 0.5, (y + 0.5) / scale - 0.5, radius / scale)


# --- vessels ------------------------------------------------------------------------------------


def _around_disc(image: np.ndarray, disc: tuple[float, float, float], *, config: ExtractConfig) -> np.ndarray:
    """Pixels within ``disc_band`` of the disc where the local ridge runs around the disc, not away.

    The Hessian's eigenvector of its largest eigenvalue is the normal across a dark ridge; a ridge
    is tangential when that normal points along the radius (|cos| above ``disc_max_cos``).
    """
    from skimage.feature import hessian_matrix

    cx, cy, radius = disc
    yy, xx = np.mgrid[: image.shape[0], : image.shape[1]].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    dist = np.hypot(dy, dx)
    band = (dist >= config.disc_band[0] * radius) & (dist <= config.disc_band[1] * radius)
    sigma = float(np.median(config.sigmas))
    h_rr, h_rc, h_cc = hessian_matrix(image, sigma=sigma, order="rc", use_gaussian_derivatives=False)
    lam = (h_rr + h_cc) / 2 + np.sqrt(((h_rr - h_cc) / 2) ** 2 + h_rc**2)
    diagonal = np.abs(h_rc) < 1e-9  # then the normal is an axis: the one with the larger curvature
    n_r = np.where(diagonal, (h_rr >= h_cc).astype(np.float32), h_rc)
    n_c = np.where(diagonal, (h_rr < h_cc).astype(np.float32), lam - h_rr)
    cos = np.abs(n_r * dy + n_c * dx) / (np.hypot(n_r, n_c) * dist + 1e-9)
    return band & (cos > config.disc_max_cos)


def vessel_mask(
    photo: np.ndarray,
    fov: np.ndarray,
    *,
    exclude: np.ndarray | None = None,
    optic_disc: tuple[float, float, float] | None = None,
    config: ExtractConfig = DEFAULT,
) -> np.ndarray:
    """Vessel pseudo-labels of an ``(H, W, 3)`` uint8 photo as an ``(H, W)`` bool mask.

    Green channel (vessels have most contrast there) → CLAHE → Sato ridge filter over ``sigmas``
    (dark ridges) → hysteresis between ``low`` and ``high`` → components under ``min_vessel_px``
    dropped. ``exclude`` (``(H, W)`` bool, e.g. lesion masks) is grown by ``exclude_margin_px`` and
    removed from the response before thresholding, since ridge filters fire on the borders of
    exudates and on dark haemorrhages. ``optic_disc`` ``(cx, cy, radius)`` in pixels of ``photo``
    drops ridges that run around the disc within ``disc_band`` (its rim responds like a vessel) while
    keeping the trunks that cross it.
    """
    from skimage.filters import apply_hysteresis_threshold, sato  # lazy: skimage is slow to import

    _check_photo(photo, fov)
    if exclude is not None and exclude.shape != fov.shape:
        raise InputError(f"exclusion mask {exclude.shape} does not match the photo {fov.shape}")
    small, small_fov, scale = _to_work(photo, fov, config.work_size)
    inside = _inner(small_fov, config.rim_px)
    if not inside.any():
        return np.zeros(fov.shape, bool)
    green = _fill_outside(small[..., 1], inside, sigma=10.0)
    tiles = (config.clahe_tiles, config.clahe_tiles)
    clahe = cv2.createCLAHE(clipLimit=config.clahe_clip, tileGridSize=tiles)
    green = clahe.apply(np.clip(green + 0.5, 0, 255).astype(np.uint8)).astype(np.float32) / 255.0
    response = sato(green, sigmas=config.sigmas, black_ridges=True, mode="reflect")
    keep = inside
    if exclude is not None and exclude.any():
        ex = cv2.resize(exclude.astype(np.float32), small_fov.shape[::-1], interpolation=cv2.INTER_AREA) > 0
        ex = cv2.dilate(ex.astype(np.uint8), np.ones((2 * config.exclude_margin_px + 1,) * 2, np.uint8))
        keep = keep & ~ex.astype(bool)
    if optic_disc is not None:
        work_disc = ((optic_disc[0] + 0.5) * scale - 0.5, (optic_disc[1] + 0.5) * scale - 0.5, optic_disc[2] * scale)
        keep = keep & ~_around_disc(green, work_disc, config=config)
    response = np.where(keep, response, 0.0)
    vessels = apply_hysteresis_threshold(response, config.low, config.high)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(vessels.astype(np.uint8), connectivity=8)
    big = np.zeros(n, bool)
    big[1:] = stats[1:, cv2.CC_STAT_AREA] >= config.min_vessel_px
    vessels = big[comp]
    if scale != 1.0:
        vessels = cv2.resize(vessels.astype(np.float32), fov.shape[::-1], interpolation=cv2.INTER_LINEAR) >= 0.5
    return vessels & fov


# --- label maps ---------------------------------------------------------------------------------


def extract_label_map(
    photo: np.ndarray,
    *,
    size: int = 512,
    lesions: dict[int, np.ndarray] | None = None,
    config: ExtractConfig = DEFAULT,
) -> np.ndarray:
    """``(H, W, 3)`` uint8 photo → ``(size, size)`` uint8 label map of outside/retina/disc/vessel.

    ``lesions`` maps lesion class indices (``labels.LESIONS``) to ``(size, size)`` bool masks in the
    output geometry (e.g. from a lesion segmenter run on the preprocessed photo); they are excluded
    from the vessel search and painted in ``labels.PAINT_ORDER``.
    """
    pre = preprocess(photo, size=size)
    return label_map_from_preprocessed(pre.photo, pre.fov, lesions=lesions, config=config)


def label_map_from_preprocessed(
    photo: np.ndarray,
    fov: np.ndarray,
    *,
    lesions: dict[int, np.ndarray] | None = None,
    optic_disc: np.ndarray | None = None,
    exclude: np.ndarray | None = None,
    config: ExtractConfig = DEFAULT,
) -> np.ndarray:
    """Label map of a photo already squared by :func:`~fundus_studio.preprocess.preprocess`.

    ``optic_disc`` (``(S, S)`` bool) replaces the detector where the dataset annotates the disc.
    ``exclude`` (``(S, S)`` bool) is kept out of the vessel search like ``lesions`` but not painted:
    lesions offered as suggestions (:mod:`fundus_studio.suggestions`) rather than written into the map.
    """
    lesions = lesions or {}
    for idx, mask in lesions.items():
        if idx not in labels.LESIONS:
            raise InputError(f"class {idx} is not a lesion class ({labels.LESIONS})")
        if mask.shape != fov.shape:
            raise InputError(f"{labels.NAMES[idx]} mask {mask.shape} does not match the photo {fov.shape}")
    if optic_disc is None:
        disc = detect_optic_disc(photo, fov, config=config)
        optic_disc = disc_mask(fov.shape, disc)
    else:
        disc = disc_circle(optic_disc)
    if exclude is not None and exclude.shape != fov.shape:
        raise InputError(f"exclusion mask {exclude.shape} does not match the photo {fov.shape}")
    exclude = np.zeros(fov.shape, bool) if exclude is None else exclude.astype(bool)
    for mask in lesions.values():
        exclude |= mask
    masks = {
        labels.RETINA: fov,
        labels.OPTIC_DISC: optic_disc & fov,
        labels.VESSEL: vessel_mask(photo, fov, exclude=exclude, optic_disc=disc, config=config),
        **{idx: mask & fov for idx, mask in lesions.items()},
    }
    return labels.compose(masks, shape=fov.shape, base=labels.OUTSIDE)


def extract_file(
    photo_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *, size: int = 512
) -> Path:
    """Read a photo, extract its label map at ``size`` and write it as a palette PNG (atomically)."""
    photo = read_image(photo_path)
    try:
        label_map = extract_label_map(photo, size=size)
    except InputError as err:
        raise InputError(f"{photo_path}: {err}") from None
    return save_label_png(out_path, label_map)
