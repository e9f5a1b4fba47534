"""What the painting canvas needs, free of any UI framework: canvas value ⇄ label map, statistics.

The browser editor hands over ``{"background": (H, W, 4), "layers": [(H, W, 4), ...],
"composite": (H, W, 4)}``. Classes are read from the *layers* (the strokes), never from the
composite: strokes are anti-aliased, and "clear canvas" turns the composite white. Unpainted pixels
keep the class of the base map the user started from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from fundus_studio import labels
from fundus_studio.errors import InputError

# A stroke pixel counts as painted from this opacity on; the anti-aliased fringe below it keeps
# the class underneath, so edges do not grow by a blended pixel on every stroke.
PAINTED_ALPHA: int = 128
# Lesions counted as separate spots in the statistics.
SPOT_CLASSES: tuple[int, ...] = (labels.MICROANEURYSM, labels.HAEMORRHAGE, labels.HARD_EXUDATE, labels.SOFT_EXUDATE)


def hex_color(index: int) -> str:
    r, g, b = labels.CLASSES[index].color
    return f"#{r:02x}{g:02x}{b:02x}"


def brush_colors() -> list[str]:
    """One fixed brush colour per paintable class (every class but ``outside``), in taxonomy order."""
    return [hex_color(c.index) for c in labels.CLASSES if c.index != labels.OUTSIDE]


def blank_template(*, size: int) -> np.ndarray:
    """A retina with no structures: the field-of-view circle on the outside class."""
    out = np.full((size, size), labels.OUTSIDE, np.uint8)
    cv2.circle(out, (size // 2, size // 2), size // 2 - 1, labels.RETINA, -1)
    return out


def editor_value(index_map: np.ndarray) -> dict[str, Any]:
    """A label map as the canvas's initial value: its colours as the background, no strokes."""
    rgb = labels.to_color(index_map)
    rgba = np.dstack([rgb, np.full(index_map.shape, 255, np.uint8)])
    return {"background": rgba, "layers": [], "composite": rgba}


def _resize_nearest(index_map: np.ndarray, size: int) -> np.ndarray:
    if index_map.shape == (size, size):
        return index_map
    return cv2.resize(index_map, (size, size), interpolation=cv2.INTER_NEAREST)


def painted_map(value: dict[str, Any] | None, *, base: np.ndarray, nearest: bool = True) -> np.ndarray:
    """The label map the canvas shows: ``base`` under the user's strokes.

    ``base`` is the ``(S, S)`` map the user started from (kept server-side, since clearing the
    canvas wipes its background). Strokes are mapped to the nearest brush colour.
    """
    out = base.copy()
    if not value:
        return out
    size = base.shape[0]
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        layer = np.asarray(layer)
        if layer.ndim != 3 or layer.shape[2] != 4:
            raise InputError(f"canvas layer: expected an RGBA image, got shape {layer.shape}")
        if layer.shape[:2] != (size, size):
            layer = cv2.resize(layer, (size, size), interpolation=cv2.INTER_NEAREST)
        painted = layer[..., 3] >= PAINTED_ALPHA
        if painted.any():
            stroke = labels.from_color(layer[..., :3][painted][None], nearest=nearest)[0]
            out[painted] = stroke
    return out


def uploaded_map(image: np.ndarray, *, size: int, nearest: bool) -> np.ndarray:
    """A label map uploaded as a colour or index image → ``(size, size)`` indices."""
    if image.ndim == 2:
        index_map = labels.check_index_map(image.astype(np.int64), what="uploaded label map")
    else:
        index_map = labels.from_color(image[..., :3], nearest=nearest, what="uploaded label map")
    return _resize_nearest(index_map, size)


@dataclass(frozen=True)
class MapStats:
    pixels: dict[str, int]  # class name → pixel count
    spots: dict[str, int]  # lesion class name → connected components
    fov_fraction: dict[str, float]  # class name → share of the field of view


def map_stats(index_map: np.ndarray) -> MapStats:
    """Pixels per class, lesion spots (8-connected components) and shares of the field of view."""
    counts = np.bincount(labels.check_index_map(index_map).ravel(), minlength=labels.NUM_CLASSES)
    fov = max(1, int(index_map.size - counts[labels.OUTSIDE]))
    spots = {}
    for k in SPOT_CLASSES:
        n, _ = cv2.connectedComponents((index_map == k).astype(np.uint8), connectivity=8)
        spots[labels.NAMES[k]] = n - 1
    return MapStats(
        pixels={name: int(counts[i]) for i, name in enumerate(labels.NAMES)},
        spots=spots,
        fov_fraction={name: float(counts[i]) / fov for i, name in enumerate(labels.NAMES) if i != labels.OUTSIDE},
    )


def overlay(photo: np.ndarray, index_map: np.ndarray, *, opacity: float) -> np.ndarray:
    """The label colours blended over a photo; ``outside`` and ``retina`` stay transparent."""
    if not 0.0 <= opacity <= 1.0:
        raise InputError(f"opacity must be within 0..1, got {opacity}")
    colours = labels.to_color(index_map).astype(np.float32)
    alpha = np.where(index_map > labels.RETINA, opacity, 0.0).astype(np.float32)[..., None]
    return (photo.astype(np.float32) * (1 - alpha) + colours * alpha + 0.5).astype(np.uint8)
