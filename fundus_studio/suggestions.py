"""Lesions the U-Net finds on a real photo, offered as suggestions rather than written into its map.

The shipped lesion U-Net was trained on procedural phantoms only: on a real photograph its finds are
guesses (on the healthy CC0 ``skimage.data.retina()`` it reported 18 haemorrhages). So "Extract from
photo" keeps the photo's map to what classical processing measures (field of view, disc, vessels)
and the U-Net's per-class probabilities beside it; the user moves a confidence threshold, sees the
suggestions outlined on the photo, and accepts them into the map or discards them.

Shapes: probabilities ``(S, S)`` float32 per lesion class, masks ``(S, S)`` bool, maps ``(S, S)`` uint8.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from fundus_studio import labels
from fundus_studio.errors import InputError

OUTLINE_PX = 1  # width of a suggestion's outline, px at the map's side


@dataclass(frozen=True)
class LesionSuggestions:
    """The U-Net's per-class lesion probabilities on a photo, in the photo's (squared) geometry."""

    probabilities: dict[int, np.ndarray]  # lesion class index → (S, S) float32 in [0, 1], 0 outside the FOV

    def masks(self, threshold: float) -> dict[int, np.ndarray]:
        """``{class: (S, S) bool}`` of the suggestions at ``threshold`` (a probability in (0, 1))."""
        if not 0.0 < threshold < 1.0:
            raise InputError(f"the suggestion threshold must lie in (0, 1), got {threshold}")
        return {k: p >= threshold for k, p in self.probabilities.items()}

    def spots(self, threshold: float) -> dict[int, int]:
        """Connected suggestions per class at ``threshold`` (8-connected components)."""
        return {k: cv2.connectedComponents(m.astype(np.uint8), connectivity=8)[0] - 1
                for k, m in self.masks(threshold).items()}


def accept(index_map: np.ndarray, masks: dict[int, np.ndarray]) -> np.ndarray:
    """``index_map`` with the suggested lesions painted in (lesions in ``labels.PAINT_ORDER`` over
    what is there, never outside the field of view). Returns a new map."""
    out = labels.check_index_map(index_map, what="label map").copy()
    fov = out != labels.OUTSIDE
    for k in labels.PAINT_ORDER:
        if k in masks:
            if k not in labels.LESIONS:
                raise InputError(f"class {k} is not a lesion class ({labels.LESIONS})")
            if masks[k].shape != out.shape:
                raise InputError(f"{labels.NAMES[k]} suggestions {masks[k].shape} do not match the map {out.shape}")
            out[masks[k] & fov] = k
    return out


def outline(image: np.ndarray, masks: dict[int, np.ndarray]) -> np.ndarray:
    """``image`` ``(S, S, 3)`` uint8 with each suggestion's outline drawn in its class colour (the inside
    left as it is, so the photo under a suggestion stays visible). Returns a new image."""
    out = image.copy()
    kernel = np.ones((2 * OUTLINE_PX + 1,) * 2, np.uint8)
    for k in labels.PAINT_ORDER:
        m = masks.get(k)
        if m is None or not m.any():
            continue
        m8 = m.astype(np.uint8)
        ring = cv2.dilate(m8, kernel).astype(bool) & ~cv2.erode(m8, kernel).astype(bool)
        out[ring] = labels.CLASSES[k].color
    return out
