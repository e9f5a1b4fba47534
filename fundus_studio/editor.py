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


def css_rgb(name: str) -> str:
    """Class ``name``'s colour as a browser writes it in an element's style: ``rgb(r, g, b)``."""
    return "rgb({}, {}, {})".format(*labels.CLASSES[labels.INDEX[name]].color)


def paintable_classes() -> tuple[labels.LabelClass, ...]:
    """The classes a brush paints (every class but ``outside``), in taxonomy order."""
    return tuple(c for c in labels.CLASSES if c.index != labels.OUTSIDE)


def brush_colors() -> list[str]:
    """One fixed brush colour per paintable class, in taxonomy order."""
    return [hex_color(c.index) for c in paintable_classes()]


# --- brushes ------------------------------------------------------------------------------------
# Each class has its own brush, sized in disc diameters (DD) like the lesions themselves, so that one
# brush stroke of a class looks like one typical lesion or structure of that class at any canvas size.

# Default brush diameter of each paintable class, in DD (1 DD ≈ 1.8 mm on the retina). A microaneurysm
# is under 125 µm (≤ 0.07 DD), dot haemorrhages and cotton-wool spots are a few times wider, main vessels
# ~0.08 DD at the disc; the large regions get broad brushes for filling and for erasing lesions back.
BRUSH_SIZES_DD: dict[str, float] = {
    "retina": 0.5,
    "optic_disc": 0.4,
    "vessel": 0.08,
    "microaneurysm": 0.03,
    "haemorrhage": 0.25,
    "hard_exudate": 0.08,
    "soft_exudate": 0.3,
    "neovascularisation": 0.05,
    "irma": 0.05,
}
# The editor's brush-size bounds (its own size slider runs 1..100): a brush size is a radius in map px.
MIN_BRUSH_PX, MAX_BRUSH_PX = 1, 100
# Keys that pick the paintable classes, in taxonomy order (as on a keyboard's top row).
CLASS_KEYS: tuple[str, ...] = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "0")


def brush_radius_px(size_dd: float, *, canvas_size: int) -> int:
    """The editor's brush size (a radius in map pixels) for a brush ``size_dd`` disc diameters across on a
    ``canvas_size``² map, whose disc diameter is the nominal one of its side; at least one pixel."""
    from fundus_studio.phantom import nominal_disc_diameter

    if not size_dd > 0:
        raise InputError(f"brush size must be positive, got {size_dd} DD")
    radius = round(size_dd * nominal_disc_diameter(canvas_size) / 2)
    return int(min(MAX_BRUSH_PX, max(MIN_BRUSH_PX, radius)))


def default_brush_sizes(*, canvas_size: int) -> dict[str, int]:
    """Every paintable class's default brush size (radius, map px) at ``canvas_size``."""
    return {c.name: brush_radius_px(BRUSH_SIZES_DD[c.name], canvas_size=canvas_size) for c in paintable_classes()}


def class_keys() -> dict[str, str]:
    """Key → class name for the keys that pick classes: 1–9 then 0, in taxonomy order."""
    return dict(zip(CLASS_KEYS, (c.name for c in paintable_classes())))


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


def has_strokes(value: dict[str, Any] | None) -> bool:
    """Whether the canvas value carries the user's strokes (a layer with any painted pixel); a value set
    by a handler has none."""
    layers = (np.asarray(layer) for layer in (value or {}).get("layers") or [] if layer is not None)
    return any(layer.ndim == 3 and layer.shape[2] == 4 and layer[..., 3].any() for layer in layers)


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


# --- lesion stamps ------------------------------------------------------------------------------
# A stamp is one lesion drawn by the phantom generator's own shapes (``phantom.draw_lesion``), so a
# stamped lesion looks like the lesions the models were trained on.

# Default stamp size of each lesion kind, in disc diameters (DD): its extent (a flame's length, a
# tangle's diameter), after DATA.md's phantom priors.
STAMP_SIZES_DD: dict[str, float] = {
    "microaneurysm": 0.06,
    "blot_haemorrhage": 0.25,
    "flame_haemorrhage": 0.6,
    "hard_exudate": 0.1,
    "cotton_wool_spot": 0.4,
    "neovascularisation": 1.0,
    "irma": 0.6,
}
# Kinds drawn along the nerve fibres at the point clicked.
FIBRE_ALIGNED: tuple[str, ...] = ("flame_haemorrhage", "cotton_wool_spot")
# Discs smaller than this (px, equivalent diameter) are not trusted for the lesion scale.
MIN_DISC_PX: float = 4.0


@dataclass(frozen=True)
class Anatomy:
    """What a stamp needs to know about a map: disc and fovea centres ``(x, y)`` px, disc diameter px."""

    disc: tuple[float, float] | None  # None: the map has no optic disc
    fovea: tuple[float, float]  # the field of view's centre (where phantoms put the fovea)
    dd: float


def map_anatomy(index_map: np.ndarray) -> Anatomy:
    """Disc centre and size (its pixels' centroid and equivalent diameter) and the FOV centre of a map.

    Without a plausible disc, the disc diameter is the nominal one of the map's side.
    """
    from fundus_studio.phantom import nominal_disc_diameter

    size = max(index_map.shape)
    ys, xs = np.nonzero(index_map != labels.OUTSIDE)
    fovea = (float(xs.mean()), float(ys.mean())) if xs.size else (size / 2.0, size / 2.0)
    dys, dxs = np.nonzero(index_map == labels.OPTIC_DISC)
    dd = 2.0 * float(np.sqrt(dxs.size / np.pi))
    if dd < MIN_DISC_PX:
        return Anatomy(disc=None, fovea=fovea, dd=nominal_disc_diameter(size))
    return Anatomy(disc=(float(dxs.mean()), float(dys.mean())), fovea=fovea, dd=dd)


def fibre_angle(anatomy: Anatomy, at: tuple[float, float]) -> float:
    """Nerve-fibre direction (radians, image frame) at ``at``, from the disc and fovea positions (the
    phantom generator's model: fibres leave the disc radially and arch around the fovea); 0 without a disc."""
    from fundus_studio.phantom.anatomy import Frame
    from fundus_studio.phantom.config import PhantomLayout

    if anatomy.disc is None or np.hypot(anatomy.disc[0] - anatomy.fovea[0], anatomy.disc[1] - anatomy.fovea[1]) < 1:
        return 0.0
    layout = PhantomLayout(size=0, center=anatomy.fovea, fov_radius=0.0, disc=anatomy.disc, dd=anatomy.dd,
                           disc_aspect=1.0, fovea=anatomy.fovea, faz_radius=0.0)
    return float(Frame(layout).fibre_angle(np.asarray([at], dtype=np.float64))[0])


def stamp_lesion(index_map: np.ndarray, kind: str, *, at: tuple[float, float], seed: int,
                 size_dd: float | None = None) -> np.ndarray:
    """``index_map`` with one lesion of ``kind`` (a key of ``phantom.LESION_KINDS``) centred at ``at``
    (``(x, y)`` px), ``size_dd`` disc diameters across (default :data:`STAMP_SIZES_DD`), seeded.

    Flames and cotton-wool spots lie along the nerve fibres at ``at``. Returns a new ``(S, S)`` map.
    """
    from fundus_studio.phantom import LESION_KINDS, draw_lesion

    if kind not in LESION_KINDS:
        raise InputError(f"unknown lesion kind {kind!r}; known: {', '.join(LESION_KINDS)}")
    size_dd = STAMP_SIZES_DD[kind] if size_dd is None else float(size_dd)
    if not size_dd > 0:
        raise InputError(f"stamp size must be positive, got {size_dd} DD")
    anatomy = map_anatomy(index_map)
    angle = fibre_angle(anatomy, at) if kind in FIBRE_ALIGNED else 0.0
    return draw_lesion(index_map, kind, centre=at, diameter=size_dd * anatomy.dd, seed=seed, angle=angle,
                       dd=anatomy.dd)
