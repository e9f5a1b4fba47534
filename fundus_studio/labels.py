"""The label taxonomy: the one source of truth for classes, names, colours, paint order and grades.

Every other module imports class indices, colours and conversions from here. Index maps are
``(H, W)`` uint8 arrays of class indices; one-hot maps are channel-first ``(C, H, W)`` float32;
colour images are ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fundus_studio.errors import InputError


@dataclass(frozen=True)
class LabelClass:
    index: int
    name: str
    short: str  # the abbreviation used in the datasets' file names and in the literature
    color: tuple[int, int, int]
    description: str
    lesion: bool


CLASSES: tuple[LabelClass, ...] = (
    LabelClass(0, "outside", "BG", (0, 0, 0), "outside the camera's field of view", False),
    LabelClass(1, "retina", "RET", (150, 60, 30), "retinal background inside the field of view", False),
    LabelClass(2, "optic_disc", "OD", (255, 170, 0), "optic disc", False),
    LabelClass(3, "vessel", "VES", (220, 20, 60), "retinal vessel", False),
    LabelClass(4, "microaneurysm", "MA", (0, 255, 0), "microaneurysm", True),
    LabelClass(5, "haemorrhage", "HE", (0, 90, 255), "haemorrhage (dot, blot or flame)", True),
    LabelClass(6, "hard_exudate", "EX", (255, 255, 0), "hard exudate", True),
    LabelClass(7, "soft_exudate", "SE", (0, 230, 230), "soft exudate (cotton-wool spot)", True),
    LabelClass(8, "neovascularisation", "NV", (255, 0, 255), "neovascularisation", True),
    LabelClass(9, "irma", "IRMA", (160, 90, 255), "intraretinal microvascular abnormality", True),
)

NUM_CLASSES: int = len(CLASSES)
NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)
INDEX: dict[str, int] = {c.name: c.index for c in CLASSES}

OUTSIDE = INDEX["outside"]
RETINA = INDEX["retina"]
OPTIC_DISC = INDEX["optic_disc"]
VESSEL = INDEX["vessel"]
MICROANEURYSM = INDEX["microaneurysm"]
HAEMORRHAGE = INDEX["haemorrhage"]
HARD_EXUDATE = INDEX["hard_exudate"]
SOFT_EXUDATE = INDEX["soft_exudate"]
NEOVASCULARISATION = INDEX["neovascularisation"]
IRMA = INDEX["irma"]

LESIONS: tuple[int, ...] = tuple(c.index for c in CLASSES if c.lesion)
# Structures a few pixels across (vessels and every lesion): what a loss or measure of small-scale
# detail looks at, apart from the large regions (outside, retina, optic disc).
FINE_STRUCTURES: tuple[int, ...] = (VESSEL, *LESIONS)

# Where masks overlap the later class wins: retina < optic disc < vessel < lesions. Among lesions
# the small ones come last so that a microaneurysm inside a haemorrhage's halo is not lost.
PAINT_ORDER: tuple[int, ...] = (
    OUTSIDE, RETINA, OPTIC_DISC, VESSEL, NEOVASCULARISATION, IRMA, HAEMORRHAGE, SOFT_EXUDATE,
    HARD_EXUDATE, MICROANEURYSM,
)

COLORS: np.ndarray = np.array([c.color for c in CLASSES], dtype=np.uint8)  # (C, 3)
COLORS.setflags(write=False)

# International Clinical Diabetic Retinopathy scale.
GRADE_NAMES: tuple[str, ...] = (
    "no apparent retinopathy",
    "mild non-proliferative (microaneurysms only)",
    "moderate non-proliferative",
    "severe non-proliferative",
    "proliferative",
)
NUM_GRADES: int = len(GRADE_NAMES)

# Colour matching (RGB distances). JPEG at quality 75 moves flat colours by < 20, so a pixel this
# close to a palette colour is clean; edges (blends of two colours, ringing) move by up to ~40 from
# the straight line between two palette colours. The clean radius stays well under half the
# closest pair's distance, or blends of two classes would pass as a third.
CLEAN_TOLERANCE: float = 30.0
COLOR_TOLERANCE: float = 48.0


def class_index(name: str) -> int:
    """Index of a class given its name or its short name (case-insensitive)."""
    key = name.strip().lower()
    for c in CLASSES:
        if key in (c.name, c.short.lower()):
            return c.index
    raise InputError(f"unknown class {name!r}; known: {', '.join(NAMES)}")


def palette_bytes() -> bytes:
    """The 768-byte PNG palette: taxonomy colours first, the rest black."""
    pal = np.zeros((256, 3), dtype=np.uint8)
    pal[:NUM_CLASSES] = COLORS
    return pal.tobytes()


def check_index_map(index_map: np.ndarray, *, what: str = "label map") -> np.ndarray:
    """Validate an ``(H, W)`` integer index map and return it as uint8."""
    if index_map.ndim != 2:
        raise InputError(f"{what}: expected a 2-D index map, got shape {index_map.shape}")
    if not np.issubdtype(index_map.dtype, np.integer):
        raise InputError(f"{what}: expected integer class indices, got {index_map.dtype}")
    if index_map.size and (index_map.min() < 0 or index_map.max() >= NUM_CLASSES):
        bad = int(((index_map < 0) | (index_map >= NUM_CLASSES)).sum())
        raise InputError(
            f"{what}: {bad} pixels carry class values outside 0..{NUM_CLASSES - 1}"
        )
    return index_map.astype(np.uint8, copy=False)


def compose(masks: dict[int, np.ndarray], *, shape: tuple[int, int], base: int = OUTSIDE) -> np.ndarray:
    """Combine binary masks ``{class index: (H, W) bool}`` into an index map in paint order."""
    out = np.full(shape, base, dtype=np.uint8)
    for idx in PAINT_ORDER:
        mask = masks.get(idx)
        if mask is not None:
            out[mask.astype(bool)] = idx
    return out


def to_one_hot(index_map: np.ndarray) -> np.ndarray:
    """``(H, W)`` indices → ``(C, H, W)`` float32 one-hot."""
    index_map = check_index_map(index_map)
    return (np.arange(NUM_CLASSES, dtype=np.uint8)[:, None, None] == index_map[None]).astype(np.float32)


def from_one_hot(one_hot: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` scores or probabilities → ``(H, W)`` uint8 indices (argmax over C)."""
    if one_hot.ndim != 3 or one_hot.shape[0] != NUM_CLASSES:
        raise InputError(f"expected ({NUM_CLASSES}, H, W) scores, got shape {one_hot.shape}")
    return one_hot.argmax(axis=0).astype(np.uint8)


def to_color(index_map: np.ndarray) -> np.ndarray:
    """``(H, W)`` indices → ``(H, W, 3)`` uint8 display colours."""
    return COLORS[check_index_map(index_map)]


def class_fractions(index_map: np.ndarray) -> np.ndarray:
    """Fraction of pixels per class, ``(C,)`` float64 summing to one."""
    counts = np.bincount(check_index_map(index_map).ravel(), minlength=NUM_CLASSES)
    return counts / max(1, index_map.size)


def _blends(colors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance ``(K, P)`` of ``(K, 3)`` colours to the blend a·(1-t) + b·t of every palette pair
    ``PAIRS``, and the blend fraction ``t`` of the closest point."""
    c = colors.astype(np.float32)
    a, b = COLORS[PAIRS[0]].astype(np.float32), COLORS[PAIRS[1]].astype(np.float32)  # (P, 3)
    ab = b - a
    t = np.clip(((c[:, None, :] - a[None]) * ab[None]).sum(2) / (ab * ab).sum(1)[None], 0.0, 1.0)
    return np.linalg.norm(c[:, None, :] - (a[None] + t[..., None] * ab[None]), axis=2), t


PAIRS: tuple[np.ndarray, np.ndarray] = np.triu_indices(NUM_CLASSES, k=1)
# An unsure pixel is read as an edge only this close (in pixels) to clean pixels: edges are
# blends, but a photograph is not a label map.
BLEND_RADIUS: int = 3


def from_color(
    image: np.ndarray, *, nearest: bool = False, tolerance: float = COLOR_TOLERANCE, what: str = "label map"
) -> np.ndarray:
    """``(H, W, 3)`` colour image in the taxonomy colours → ``(H, W)`` uint8 indices.

    A pixel within ``tolerance`` of a palette colour is clean and takes that class. An unsure pixel
    within ``BLEND_RADIUS`` of clean ones is an edge (anti-aliasing, JPEG ringing): it takes the
    nearer end of the blend of two neighbouring classes it lies on, or else the neighbouring class
    of the nearest colour. Pixels farther from every clean pixel raise :class:`InputError` saying
    how many there are, unless ``nearest`` asks to snap every pixel to its nearest palette colour.
    """
    import cv2  # lazy: keeps `import fundus_studio.labels` light

    if image.ndim != 3 or image.shape[2] < 3:
        raise InputError(f"{what}: expected an (H, W, 3) colour image, got shape {image.shape}")
    rgb = np.ascontiguousarray(image[..., :3]).astype(np.uint32)
    packed = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    uniq, inverse = np.unique(packed.ravel(), return_inverse=True)
    inverse = inverse.reshape(packed.shape)
    ucolors = np.stack([(uniq >> 16) & 255, (uniq >> 8) & 255, uniq & 255], axis=1).astype(np.float32)
    d_point = np.linalg.norm(ucolors[:, None, :] - COLORS[None].astype(np.float32), axis=2)  # (K, C)
    point = d_point.argmin(axis=1)
    if nearest:
        return point.astype(np.uint8)[inverse]

    clean = np.where(d_point.min(axis=1) <= min(tolerance, CLEAN_TOLERANCE), point, -1)[inverse]  # (H, W), -1 = unsure
    out = np.maximum(clean, 0).astype(np.uint8)
    unsure = clean < 0
    if unsure.any():
        kernel = np.ones((2 * BLEND_RADIUS + 1,) * 2, np.uint8)
        ys, xs = np.nonzero(unsure)
        # near[k, i]: unsure pixel i lies within BLEND_RADIUS of a clean pixel of class k.
        near = np.stack([cv2.dilate((clean == k).astype(np.uint8), kernel)[ys, xs] > 0 for k in range(NUM_CLASSES)])
        u_ids, u_inv = np.unique(inverse[ys, xs], return_inverse=True)
        d_seg, t_seg = _blends(ucolors[u_ids])
        d_seg, t_seg = d_seg[u_inv], t_seg[u_inv]  # (N, P) per unsure pixel
        na, nb = near[PAIRS[0]].T, near[PAIRS[1]].T  # (N, P)
        # Prefer blends of two classes both present nearby; a thin stroke may have no clean pixel.
        score = np.where(na & nb, d_seg, np.where(na | nb, d_seg + tolerance / 2, np.inf))
        pair = score.argmin(axis=1)
        rows = np.arange(len(ys))
        edge = d_seg[rows, pair] <= tolerance
        blend_class = np.where(t_seg[rows, pair] < 0.5, PAIRS[0][pair], PAIRS[1][pair])
        # Elsewhere (three strokes meeting, JPEG ringing) a pixel next to clean pixels takes the
        # neighbouring class of the nearest colour; only off-palette areas wider than the radius fail.
        d_near = np.where(near, d_point[inverse[ys, xs]].T, np.inf)  # (C, N)
        ringing = ~edge & near.any(axis=0)
        out[ys[edge], xs[edge]] = blend_class[edge]
        out[ys[ringing], xs[ringing]] = d_near[:, ringing].argmin(axis=0)
        clean[ys[edge | ringing], xs[edge | ringing]] = 0
    far = clean < 0
    if far.any():
        n_far = int(far.sum())
        y, x = np.argwhere(far)[0]
        raise InputError(
            f"{what}: {n_far} pixels ({100.0 * n_far / far.size:.2f} %) have colours outside the label "
            f"palette (first at x={x}, y={y}: RGB {tuple(int(v) for v in image[y, x, :3])}); "
            "use nearest-colour mapping to snap them to the closest class"
        )
    return out
