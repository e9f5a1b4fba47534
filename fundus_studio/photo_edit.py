"""Edit a real photo through its label map: keep the photo, synthesise only what the user changed.

After "Extract from photo" the studio holds the photo (squared by the one preprocessing path) and
the map extracted from it. The user paints on the map — adds lesions, or erases lesions back to
retina — and the edited photo is:

1. the **changed region**: pixels where the edited map differs from the photo's own map, grown by
   ``margin_px`` (the renderer draws a lesion's edge a few pixels beyond its label pixels, and the
   blend's boundary must lie on unchanged retina), kept inside the field of view;
2. a **render of the edited map in the photo's own style** (``Renderer.render(..., style=photo)``:
   the encoder's code for the photo, then the photo's colour, illumination and texture,
   :mod:`fundus_studio.style`);
3. **Poisson blending** of that render into the photo over the region (Pérez et al., "Poisson Image
   Editing", SIGGRAPH 2003, Eq. 10 with the render's gradients as guidance; OpenCV's
   ``seamlessClone``, ``NORMAL_CLONE``): inside, the render's gradients (its lesions, its retina where
   a lesion was erased); on the region's border, the photo's own values, so no seam shows. Outside
   the region the output *is* the photo, pixel for pixel.

Shapes: photos ``(S, S, 3)`` uint8, label maps ``(S, S)`` uint8, regions ``(S, S)`` bool, all in
the geometry of :func:`fundus_studio.preprocess.preprocess` at the map's side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from fundus_studio import labels
from fundus_studio.errors import InputError
from fundus_studio.suggestions import LesionSuggestions


@dataclass(frozen=True)
class PhotoEditConfig:
    """How a painted change is carried into the photo; pixels are at the map's side."""

    margin_px: int = 8  # the changed pixels are grown by this (≤ 16: issue 16's bound on what may change)
    pad_px: int = 4  # the blend works on the region's bounding box grown by this (the solver needs a border)
    seam_width_px: int = 2  # :func:`seam_step` compares bands this wide on either side of the border

    def __post_init__(self) -> None:
        if self.margin_px < 0 or self.pad_px < 2 or self.seam_width_px < 1:
            raise ValueError(f"need margin_px ≥ 0, pad_px ≥ 2 and seam_width_px ≥ 1, got {self.margin_px}, "
                             f"{self.pad_px}, {self.seam_width_px}")


DEFAULT = PhotoEditConfig()


@dataclass(frozen=True)
class ExtractedPhoto:
    """A real photo ready to be edited through its map (``Studio.extract_photo``)."""

    photo: np.ndarray  # (S, S, 3) uint8: the photo squared by the one preprocessing path, black beyond its FOV
    label_map: np.ndarray  # (S, S) uint8: its field of view, disc and vessels; no lesions (see suggestions)
    suggestions: LesionSuggestions | None  # the lesion U-Net's finds as probabilities; None without a U-Net


def _disc(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def check_pair(photo: np.ndarray, original_map: np.ndarray, edited_map: np.ndarray) -> None:
    """InputError unless the photo and both maps share one ``(S, S)`` geometry."""
    if not isinstance(photo, np.ndarray) or photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        got = getattr(photo, "shape", type(photo))
        raise InputError(f"photo to edit: expected an (S, S, 3) uint8 image, got {got}")
    for what, m in (("the photo's label map", original_map), ("the edited label map", edited_map)):
        labels.check_index_map(m, what=what)
        if m.shape != photo.shape[:2]:
            raise InputError(f"{what} is {m.shape[1]}×{m.shape[0]} px but the photo is "
                             f"{photo.shape[1]}×{photo.shape[0]}: edit the map extracted from this photo")


def changed_region(original_map: np.ndarray, edited_map: np.ndarray, *,
                   config: PhotoEditConfig = DEFAULT) -> np.ndarray:
    """``(S, S)`` bool: where the maps differ, grown by ``margin_px``, inside the photo's field of view
    (``original_map != OUTSIDE``: the photo is black beyond it and stays so)."""
    changed = (original_map != edited_map).astype(np.uint8)
    if config.margin_px > 0 and changed.any():
        changed = cv2.dilate(changed, _disc(config.margin_px))
    return changed.astype(bool) & (original_map != labels.OUTSIDE)


def poisson_blend(photo: np.ndarray, render: np.ndarray, region: np.ndarray, *,
                  config: PhotoEditConfig = DEFAULT) -> np.ndarray:
    """``render`` blended into ``photo`` over ``region`` (all the same ``(S, S)``): inside, the solution of
    Poisson's equation with the render's gradients and the photo on the border; outside, the photo
    exactly. Each connected part of the region is solved on its own box, so the cost follows the
    painted area, not the photo's. Returns a new ``(S, S, 3)`` uint8 image."""
    out = photo.copy()
    if not region.any():
        return out
    # Parts closer than the solver's border are solved together (one's border must not be the other's inside).
    near = cv2.dilate(region.astype(np.uint8), _disc(config.pad_px))
    count, parts, boxes, _ = cv2.connectedComponentsWithStats(near, connectivity=8)
    for i in range(1, count):
        left, top, width, height = (int(v) for v in boxes[i, :4])
        box = (slice(top, top + height), slice(left, left + width))
        part = region[box] & (parts[box] == i)
        if part.any():
            out[box] = _blend_box(photo[box], render[box], part, pad=config.pad_px)
    return out


def _blend_box(photo: np.ndarray, render: np.ndarray, part: np.ndarray, *, pad: int) -> np.ndarray:
    """Poisson blending of ``render`` into ``photo`` over ``part`` on one box (``(h, w[, 3])`` each)."""
    # Padded by reflection, so that a part touching the image's edge still has a border for the solver.
    dst = np.pad(photo, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    src = np.pad(render, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    inside = np.pad(part, pad, mode="constant")
    mask = inside.astype(np.uint8) * 255
    # seamlessClone centres the mask's bounding box on ``centre`` in dst (its top-left corner lands at
    # centre − size // 2): this centre puts it back exactly where it came from.
    x, y, width, height = cv2.boundingRect(mask)
    centre = (x + width // 2, y + height // 2)
    cloned = cv2.seamlessClone(src, dst, mask, centre, cv2.NORMAL_CLONE)[pad:-pad, pad:-pad]
    return np.where(part[..., None], cloned, photo)


def edit_photo(photo: np.ndarray, original_map: np.ndarray, edited_map: np.ndarray, *,
               render: Callable[[np.ndarray], np.ndarray], config: PhotoEditConfig = DEFAULT) -> np.ndarray:
    """The photo with the edit carried in: ``render(edited_map)`` (the map drawn in the photo's own
    style, ``(S, S, 3)`` uint8) Poisson-blended over :func:`changed_region`; the photo itself
    everywhere else. An unchanged map returns a copy of the photo without rendering."""
    check_pair(photo, original_map, edited_map)
    region = changed_region(original_map, edited_map, config=config)
    if not region.any():
        return photo.copy()
    rendered = render(edited_map)
    if rendered.shape != photo.shape or rendered.dtype != np.uint8:
        raise InputError(f"the render is {rendered.shape} {rendered.dtype}, the photo {photo.shape} uint8")
    return poisson_blend(photo, rendered, region, config=config)


def seam_step(image: np.ndarray, region: np.ndarray, *, config: PhotoEditConfig = DEFAULT) -> float:
    """How visible a region's border is in ``image``: the mean, over the border's pixels, of the colour
    step (largest channel) between the image averaged just inside and just outside the border
    (bands ``seam_width_px`` wide, by normalised convolution). 8-bit levels; 0 for an empty region."""
    if not region.any() or region.all():
        return 0.0
    r = region.astype(np.uint8)
    k = _disc(config.seam_width_px)
    inner = r & ~cv2.erode(r, k).astype(bool)
    outer = cv2.dilate(r, k).astype(bool) & ~region
    border = inner.astype(bool) & cv2.dilate(outer.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    img = image.astype(np.float32)
    size = (2 * config.seam_width_px + 1,) * 2

    def band_mean(band: np.ndarray) -> np.ndarray:
        m = band.astype(np.float32)
        num = cv2.boxFilter(img * m[..., None], -1, size, normalize=False)
        den = cv2.boxFilter(m, -1, size, normalize=False)[..., None]
        return num / np.maximum(den, 1e-6)

    step = np.abs(band_mean(inner.astype(bool)) - band_mean(outer))[border].max(axis=1)
    return float(step.mean()) if step.size else 0.0
