"""A real photo's style on a render: colour per class region, illumination and background texture.

The renderer's network has only seen phantoms; its style code cannot reach the colours of a real
photograph. This module moves the render's statistics to the photo's after the network has drawn it
(``Renderer.render(..., style=photo)``):

1. The style photo goes through the one preprocessing path (:func:`~fundus_studio.preprocess.preprocess`,
   at the render's side) and the classical extractor (:mod:`fundus_studio.extract`: field of view,
   optic disc, vessels). From it :func:`style_statistics` measures, in CIELAB:

   - the **illumination field**: the retinal background's colour blurred by a Gaussian of
     ``field_sigma`` × the FOV's diameter, by normalised convolution (only background pixels count,
     so vessels and the disc do not darken or lighten it), stored at ``field_side``²;
   - per class region (retina, disc, vessels), the mean and sd of the **detail**: colour minus the
     illumination field;
   - the **texture energy**: the robust energy of the background's band-pass residual of the green
     channel (a difference of Gaussians between ``band`` σ, again by normalised convolution inside
     the background; the channel and the measure of ``training.evaluate_renders.texture_energy``), and
     a **grain**: noise with that residual's amplitude spectrum and random phases.

2. :func:`apply_style` measures the same on the render with the label map it was drawn from, then
   ``out = photo's field + T_k(render's detail)``, where per class k present in both the photo and the
   map T_k scales the detail's contrast about the background per channel so that its mean becomes
   the photo's (:func:`class_transform`; the sd follows); the retinal background keeps its own
   detail, but its band-pass residual is damped where it has more energy than the photo's, and the
   photo's grain adds what it lacks (the grain's phases come from the photo's hash, not from the
   photo: no label map fixes a texture's phase); classes the photo lacks (lesions in a healthy
   photo, a disc or vessels the extractor did not find) keep their colour relative to the retina
   (they are shifted by the retina's offset). The transforms are affine per class; their
   coefficients are blended across class borders with Gaussian weights (σ ``seam_sigma_px``), so no
   seam shows. Outside the field of view the render is left as drawn.

The photo's field lives on its FOV's bounding box and is stretched onto the label map's: the
photo's vignetting, bright and dark zones land where they are in the photo, relative to the field of
view. Everything is deterministic; at 512² the transfer costs about 70 ms of one core
(``benchmarks/style.py``); the statistics (an extraction, seconds) are cached per photo by content
hash in :class:`StyleCache`. Design, measurements and limits: docs/style.md.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import cv2
import numpy as np

from fundus_studio import labels
from fundus_studio.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class StyleConfig:
    """How a photo's style is measured and transferred; lengths are fractions of the FOV's diameter
    unless they say px."""

    field_side: int = 64  # the illumination field is estimated and kept at this side
    field_sigma: float = 1 / 64  # Gaussian σ of the illumination field (8 px at 512)
    band: tuple[float, float] = (1 / 512, 4 / 512)  # texture band: difference of Gaussians of these σ
    texture_margin_px: int = 2  # background pixels this close to another class do not count in the energy
    seam_sigma_px: float = 0.75  # σ of the weights that blend the per-class transforms at class borders
    min_pixels: int = 30  # a class region of the photo smaller than this counts as absent
    min_contrast: float = 3.0  # ΔL* a disc must be brighter / vessels darker than the background to count;
    # also the smallest contrast (per Lab channel) of a render's class that is scaled rather than shifted
    max_gain: float = 4.0  # bound of a class's contrast scaling (and of its inverse)
    cache_size: int = 16  # photos whose statistics a StyleCache keeps

    def __post_init__(self) -> None:
        if self.field_side < 8 or not 0.0 < self.field_sigma < 0.5:
            raise ValueError(f"need field_side ≥ 8 and 0 < field_sigma < 0.5, got {self.field_side}, "
                             f"{self.field_sigma}")
        if not 0.0 < self.band[0] < self.band[1] < self.field_sigma:
            raise ValueError(f"need 0 < band[0] < band[1] < field_sigma, got {self.band}, {self.field_sigma}")
        if self.min_pixels < 1 or self.max_gain < 1.0 or self.cache_size < 1 or self.seam_sigma_px < 0:
            raise ValueError("min_pixels and cache_size must be positive, max_gain ≥ 1, seam_sigma_px ≥ 0")


DEFAULT = StyleConfig()
MAD_TO_SD = 1.4826  # standard deviation / median absolute deviation of a Gaussian
GREEN = 1  # the channel whose texture is matched (vessels and texture have most contrast there)
GRAIN_CLIP_SD = 2.5  # the photo's band is clipped at this many robust sd before its spectrum is taken
# Classes a photo's extraction can contain, and the sign of their L* contrast with the background
# that makes them believable (a "disc" no brighter than the retina is the detector's guess on a photo
# without one).
CONTRAST_SIGN: dict[int, float] = {labels.OPTIC_DISC: 1.0, labels.VESSEL: -1.0}


# --- small helpers --------------------------------------------------------------------------------


def rgb_to_lab(photo: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 sRGB → float32 CIELAB (D65): L* in [0, 100], a*, b* about ±100."""
    return cv2.cvtColor(photo.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """float32 CIELAB → float32 sRGB in 8-bit units (not yet clipped to [0, 255])."""
    return cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB) * 255.0


def quantise(rgb: np.ndarray) -> np.ndarray:
    """float sRGB in 8-bit units → uint8, rounded and clipped to the gamut."""
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def masked_blur(values: np.ndarray, mask: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``values`` ``(H, W)`` or ``(H, W, C)`` using only the pixels of ``mask`` (normalised
    convolution); where no masked pixel is within reach, the masked mean (0 for an empty mask)."""
    m = mask.astype(np.float32)
    v = values.astype(np.float32)
    weighted = v * (m if v.ndim == 2 else m[..., None])
    num = cv2.GaussianBlur(weighted, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    den = cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    if v.ndim == 3:
        den = den[..., None]
    out = num / np.maximum(den, 1e-6)
    far = (den < 1e-3)[..., 0] if v.ndim == 3 else den < 1e-3
    if far.any():
        out[far] = v[mask].mean(axis=0) if mask.any() else 0.0
    return out


def band_pass(values: np.ndarray, mask: np.ndarray, sigmas: tuple[float, float]) -> np.ndarray:
    """The band between two Gaussian scales (σ in pixels, small first) of ``values`` inside ``mask``:
    ``masked_blur(σ₀) − masked_blur(σ₁)``. Pixels outside the mask do not leak in (no ringing at vessels)."""
    return masked_blur(values, mask, sigmas[0]) - masked_blur(values, mask, sigmas[1])


def background_mask(label_map: np.ndarray, *, margin_px: int) -> np.ndarray:
    """Retinal background at least ``margin_px`` away from every other class (vessels, disc, lesions,
    the FOV's edge): where background texture is measured."""
    bg = label_map == labels.RETINA
    if margin_px <= 0:
        return bg
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin_px + 1,) * 2)
    return cv2.erode(bg.astype(np.uint8), k, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)


def fov_box(fov: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(top, left, bottom, right)`` (exclusive) of a field of view, or None when it is empty."""
    rows, cols = np.flatnonzero(fov.any(axis=1)), np.flatnonzero(fov.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def texture_band_px(label_map: np.ndarray, *, config: StyleConfig = DEFAULT) -> tuple[float, float]:
    """The texture band's σ in pixels for a map whose FOV is as wide as the map's side."""
    side = max(label_map.shape)
    return config.band[0] * side, config.band[1] * side


def robust_energy(values: np.ndarray) -> float:
    """The variance of the bulk of ``values`` (1-D): (1.4826 × median absolute deviation)², which equals
    the variance for Gaussian values and ignores sparse outliers."""
    if values.size == 0:
        return 0.0
    return float((MAD_TO_SD * np.median(np.abs(values - np.median(values)))) ** 2)


def texture_energy(channel: np.ndarray, label_map: np.ndarray, *, config: StyleConfig = DEFAULT) -> float:
    """Energy of the band-pass residual of ``channel`` ``(H, W)`` over the retinal background away from
    vessels, disc, lesions and the FOV's edge, by :func:`robust_energy` (0 when no such pixel exists).

    Robust because an extracted map misses the thinnest vessels: counted as background, they made the
    mean square of phantom photos 4–7 × that measured with their true maps; the robust energy moves
    1.3–1.7 ×.
    """
    bg = label_map == labels.RETINA
    far = background_mask(label_map, margin_px=config.texture_margin_px)
    if not far.any():
        return 0.0
    band = band_pass(channel, bg, texture_band_px(label_map, config=config))
    return robust_energy(band[far])


def illumination_field(lab: np.ndarray, label_map: np.ndarray, *, config: StyleConfig = DEFAULT) -> np.ndarray:
    """The background's low-frequency colour on the FOV's bounding box → ``(F, F, 3)`` float32 Lab,
    F = ``field_side``. Requires a non-empty field of view."""
    box = fov_box(label_map != labels.OUTSIDE)
    assert box is not None  # the callers return earlier on an empty field of view
    top, left, bottom, right = box
    bg = (label_map[top:bottom, left:right] == labels.RETINA).astype(np.float32)
    crop = lab[top:bottom, left:right]
    f = config.field_side
    # Area-averaged sums and counts, then the normalised blur at F²: cheap, and exact enough for a
    # field that varies over 2 of its pixels.
    num = cv2.resize(crop * bg[..., None], (f, f), interpolation=cv2.INTER_AREA)
    den = cv2.resize(bg, (f, f), interpolation=cv2.INTER_AREA)
    sigma = config.field_sigma * f
    num = cv2.GaussianBlur(num, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    den = cv2.GaussianBlur(den, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)[..., None]
    field = num / np.maximum(den, 1e-6)
    thin = den[..., 0] < 1e-3
    if thin.any():  # far from any background pixel: its mean colour (a map without background: the FOV's)
        inside = label_map == labels.RETINA
        if not inside.any():
            inside = label_map != labels.OUTSIDE
        field[thin] = lab[inside].mean(axis=0)
    return field.astype(np.float32)


def field_on_map(field: np.ndarray, label_map: np.ndarray) -> np.ndarray:
    """Stretch an ``(F, F, 3)`` field onto the FOV's bounding box of ``label_map`` → ``(H, W, 3)``
    (zeros outside the box)."""
    out = np.zeros((*label_map.shape, 3), np.float32)
    box = fov_box(label_map != labels.OUTSIDE)
    if box is None:
        return out
    top, left, bottom, right = box
    out[top:bottom, left:right] = cv2.resize(field, (right - left, bottom - top), interpolation=cv2.INTER_LINEAR)
    return out


# --- a photo's statistics -------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassStats:
    mean: np.ndarray  # (3,) Lab detail mean (colour minus the illumination field)
    sd: np.ndarray  # (3,) Lab detail standard deviation
    pixels: int


@dataclass(frozen=True)
class StyleStats:
    """What a style photo contributes, measured once at ``side`` (see the module docstring)."""

    side: int  # the side the photo was brought to (the render's)
    field: np.ndarray  # (F, F, 3) float32 Lab illumination field on the photo's FOV box
    classes: dict[int, ClassStats]  # the photo's class regions that count (retina always)
    texture: float  # band-pass energy of the green channel in the background (8-bit units²)
    grain: np.ndarray  # (side, side) float32 texture of the photo's spectrum, random phase, unit energy
    grain_colour: np.ndarray  # (3,) how red and blue follow green in the photo's texture (1 for green)
    absent: dict[int, str]  # extracted classes that do not count, and why


def class_stats(values: np.ndarray, label_map: np.ndarray) -> dict[int, ClassStats]:
    """Mean and sd of ``values`` ``(H, W, 3)`` per class of ``label_map`` inside the FOV (one pass of
    ``bincount`` per channel rather than a mask per class)."""
    idx = label_map.ravel().astype(np.intp)
    count = np.bincount(idx, minlength=labels.NUM_CLASSES).astype(np.float64)
    flat = values.reshape(-1, values.shape[-1]).astype(np.float64)
    s1 = np.stack([np.bincount(idx, weights=flat[:, c], minlength=labels.NUM_CLASSES) for c in range(flat.shape[1])], 1)
    s2 = np.stack([np.bincount(idx, weights=flat[:, c] ** 2, minlength=labels.NUM_CLASSES)
                   for c in range(flat.shape[1])], 1)
    out = {}
    for k in np.flatnonzero(count):
        if k == labels.OUTSIDE:
            continue
        mean = s1[k] / count[k]
        sd = np.sqrt(np.maximum(s2[k] / count[k] - mean**2, 0.0))
        out[int(k)] = ClassStats(mean=mean.astype(np.float32), sd=sd.astype(np.float32), pixels=int(count[k]))
    return out


def _grain(band: np.ndarray, far: np.ndarray, label_map: np.ndarray, *, seed: int,
           config: StyleConfig) -> np.ndarray:
    """A texture with the amplitude spectrum of ``band`` (the photo's background band, counted where
    ``far``) and random phases drawn from ``seed``, scaled to unit :func:`texture_energy` on a map
    that is all background: the photo's grain without its positions (no map fixes a texture's phase)."""
    window = cv2.GaussianBlur(far.astype(np.float32), (0, 0), 2.0)  # soft edges: less spectral leakage
    amplitude = np.abs(np.fft.rfft2(band * window))
    phase = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi, amplitude.shape)
    grain = np.fft.irfft2(amplitude * np.exp(1j * phase), s=band.shape).astype(np.float32)
    flat_map = np.full(label_map.shape, labels.RETINA, np.uint8)
    energy = texture_energy(grain, flat_map, config=config)
    return grain / np.sqrt(energy) if energy > 0 else np.zeros_like(grain)


def statistics_of(photo: np.ndarray, label_map: np.ndarray, *, seed: int = 0,
                  config: StyleConfig = DEFAULT) -> StyleStats:
    """The style statistics of a photo already in the studio's square format, with its label map
    (both ``(S, S[, 3])``); ``seed`` draws the phases of its grain. Raises InputError when the map has
    no retinal background."""
    if not (label_map == labels.RETINA).any():
        raise InputError("no retinal background found in the style photo")
    lab = rgb_to_lab(photo)
    field = illumination_field(lab, label_map, config=config)
    detail = lab - field_on_map(field, label_map)
    found = class_stats(detail, label_map)
    retina = found[labels.RETINA]
    classes, absent = {labels.RETINA: retina}, {}
    for k, s in found.items():
        if k == labels.RETINA:
            continue
        contrast = (s.mean[0] - retina.mean[0]) * CONTRAST_SIGN.get(k, 1.0)
        if s.pixels < config.min_pixels:
            absent[k] = f"{s.pixels} px"
        elif k in CONTRAST_SIGN and contrast < config.min_contrast:
            absent[k] = f"L* contrast {contrast:+.1f} with the background"
        else:
            classes[k] = s
    bg = label_map == labels.RETINA
    far = background_mask(label_map, margin_px=config.texture_margin_px)
    band = band_pass(photo.astype(np.float32), bg, texture_band_px(label_map, config=config))
    texture = robust_energy(band[..., GREEN][far]) if far.any() else 0.0
    colour = np.ones(3, np.float32)
    grain = np.zeros(label_map.shape, np.float32)
    if texture > 0:
        # Vessels the extractor missed are outliers of the band: clipped, they neither shape the
        # grain's spectrum nor its colour.
        limit = GRAIN_CLIP_SD * np.sqrt(texture)
        clipped = np.clip(band, -limit, limit)
        green = clipped[..., GREEN][far]
        colour = ((clipped[far] * green[:, None]).mean(axis=0) / max(float(np.mean(green**2)), 1e-9)).astype(np.float32)
        grain = _grain(clipped[..., GREEN], far, label_map, seed=seed, config=config)
    return StyleStats(side=int(label_map.shape[0]), field=field, classes=classes, texture=texture, grain=grain,
                      grain_colour=colour, absent=absent)


def style_statistics(photo: np.ndarray, *, side: int, config: StyleConfig = DEFAULT) -> StyleStats:
    """Any fundus photo ``(H, W, 3)`` uint8 → its :class:`StyleStats` at ``side``: preprocessed by the one
    path, its map extracted (FOV, disc, vessels); the grain's phases are drawn from the photo's
    content hash. InputError (naming the style photo) if it has no field of view."""
    from fundus_studio.extract import label_map_from_preprocessed
    from fundus_studio.preprocess import preprocess

    check_photo(photo)
    try:
        pre = preprocess(photo, size=side)
        label_map = label_map_from_preprocessed(pre.photo, pre.fov)
        return statistics_of(pre.photo, label_map, seed=int(photo_key(photo)[:15], 16), config=config)
    except InputError as err:
        raise InputError(f"style photo: {err}") from None


# --- the transfer ---------------------------------------------------------------------------------


def _class_weights(label_map: np.ndarray, classes: list[int], sigma: float) -> np.ndarray:
    """``(K, H, W)`` weights of ``classes`` that sum to 1 inside the FOV: their masks blurred by σ."""
    masks = np.stack([(label_map == k).astype(np.float32) for k in classes])
    if sigma > 0:
        masks = np.stack([cv2.GaussianBlur(m, (0, 0), sigma, borderType=cv2.BORDER_REFLECT) for m in masks])
    return masks / np.maximum(masks.sum(axis=0, keepdims=True), 1e-6)


def class_transform(mine: ClassStats, theirs: ClassStats | None, *, retina_shift: np.ndarray,
                    config: StyleConfig = DEFAULT) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) per channel taking a class's render detail ``d`` to ``scale · d + shift``.

    Detail is measured from the local background (0 there), so a class's contrast is scaled about the
    background level: its mean becomes the photo's, and a pixel at the background's level stays
    there. (Matching the sd about the class mean instead lit halos along thin vessels, whose
    edge pixels are near background level.) A channel whose render contrast is too small to scale,
    or would need a gain beyond ``max_gain``, is shifted instead; a class the photo lacks is shifted by
    the retina's offset, keeping its colour relative to the background.
    """
    if theirs is None:
        return np.ones(3, np.float32), retina_shift.astype(np.float32)
    ratio = theirs.mean / np.where(np.abs(mine.mean) > 1e-6, mine.mean, 1e-6)
    scalable = (np.abs(mine.mean) >= config.min_contrast) & (ratio >= 1 / config.max_gain) & (ratio <= config.max_gain)
    scale = np.where(scalable, ratio, 1.0).astype(np.float32)
    shift = np.where(scalable, 0.0, theirs.mean - mine.mean).astype(np.float32)
    return scale, shift


def apply_style(render: np.ndarray, label_map: np.ndarray, style: StyleStats, *,
                config: StyleConfig = DEFAULT) -> np.ndarray:
    """Move a render's colour, illumination and background texture to a photo's.

    ``render`` ``(H, W, 3)`` uint8 drawn from ``label_map`` ``(H, W)`` uint8; ``style`` from
    :func:`style_statistics` at ``max(H, W)``. Returns a new ``(H, W, 3)`` uint8 image; outside the field
    of view (and for a map without one) the render is returned as drawn.
    """
    if render.shape[:2] != label_map.shape or max(label_map.shape) != style.side:
        raise InputError(f"render {render.shape[:2]} / label map {label_map.shape} do not match the style "
                         f"statistics' side {style.side}")
    fov = label_map != labels.OUTSIDE
    if not fov.any():
        return render.copy()
    h, w = label_map.shape
    lab = rgb_to_lab(render)
    own_field = illumination_field(lab, label_map, config=config)
    detail = lab - field_on_map(own_field, label_map)
    mine = class_stats(detail, label_map)
    present = sorted(mine)
    retina_shift = style.classes[labels.RETINA].mean - mine.get(labels.RETINA, style.classes[labels.RETINA]).mean
    params = [class_transform(mine[k], None if k == labels.RETINA else style.classes.get(k),
                              retina_shift=retina_shift, config=config) for k in present]
    weights = _class_weights(label_map, present, config.seam_sigma_px)  # (K, H, W)
    flat = weights.reshape(len(present), -1).T  # (H·W, K)
    a = (flat @ np.stack([p[0] for p in params])).reshape(h, w, 3)
    b = (flat @ np.stack([p[1] for p in params])).reshape(h, w, 3)
    rgb = lab_to_rgb(a * detail + b + field_on_map(style.field, label_map))
    if labels.RETINA in mine:
        # Background texture, in the green channel the measure reads: the render's own band-pass
        # residual, damped if it has more energy than the photo's; what it lacks is made up by the
        # photo's grain (independent of the render's residual, so their energies add).
        w_ret = weights[present.index(labels.RETINA)][..., None]
        bg = label_map == labels.RETINA
        sigmas = texture_band_px(label_map, config=config)
        far = background_mask(label_map, margin_px=config.texture_margin_px)
        energy = robust_energy(band_pass(rgb[..., GREEN], bg, sigmas)[far])
        if energy > style.texture:
            # Band-passing the damped image band-passes the band again, which is not idempotent:
            # measure the damping's effect once and correct its amount (one secant step on the amplitude).
            band = w_ret * band_pass(rgb, bg, sigmas)
            want, amount = np.sqrt(style.texture / energy) - 1.0, np.sqrt(style.texture / energy) - 1.0
            reached = robust_energy(band_pass(rgb[..., GREEN] + amount * band[..., GREEN], bg, sigmas)[far])
            effect = (np.sqrt(reached / energy) - 1.0) / amount  # amplitude change per unit amount
            rgb += (max(want / effect, -1.0 / effect) if effect > 0 else amount) * band
        elif style.texture > energy:
            # Robust energies of non-Gaussian residuals do not add exactly: measure once with the
            # grain at the amount that would fill the gap, then correct that amount (one secant step).
            grain = w_ret * style.grain[:h, :w, None] * style.grain_colour
            amount = np.sqrt(style.texture - energy)
            reached = robust_energy(band_pass(rgb[..., GREEN] + amount * grain[..., GREEN], bg, sigmas)[far])
            base = reached - amount**2  # what the render contributes beside the grain
            rgb += np.sqrt(max(style.texture - base, 0.0)) * grain
    return np.where(fov[..., None], quantise(rgb), render)


# --- the cache ------------------------------------------------------------------------------------


def check_photo(photo: np.ndarray) -> None:
    if not isinstance(photo, np.ndarray) or photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise InputError(f"style photo: expected an (H, W, 3) uint8 image, got {getattr(photo, 'shape', type(photo))} "
                         f"{getattr(photo, 'dtype', '')}".rstrip())


def photo_key(photo: np.ndarray) -> str:
    """SHA-256 of a photo's shape, dtype and pixels: equal photos share their statistics."""
    h = hashlib.sha256(f"{photo.shape}{photo.dtype}".encode())
    h.update(np.ascontiguousarray(photo).data)
    return h.hexdigest()


class PhotoCache(Generic[T]):
    """Results computed from a photo, keyed by its pixels (``photo_key``) and a side; the last
    ``size`` kept, least recently used dropped first. Thread-safe; two requests for the same new
    photo may both compute it (the result is the same)."""

    def __init__(self, *, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be positive, got {size}")
        self.size = size
        self._items: OrderedDict[tuple[str, int], T] = OrderedDict()
        self._lock = threading.Lock()
        self.misses = 0  # results computed (for tests and benchmarks)

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def get(self, photo: np.ndarray, *, side: int, compute: Callable[[], T]) -> T:
        """The cached result for (``photo``, ``side``), or ``compute()`` kept for next time."""
        check_photo(photo)
        key = (photo_key(photo), side)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self.misses += 1
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


class StyleCache(PhotoCache[StyleStats]):
    """The statistics of the last ``size`` style photos (per side)."""

    def __init__(self, *, size: int = DEFAULT.cache_size, config: StyleConfig = DEFAULT) -> None:
        super().__init__(size=size)
        self.config = config

    def get(self, photo: np.ndarray, *, side: int) -> StyleStats:  # type: ignore[override]
        """The statistics of ``photo`` at ``side``, computed on first use."""
        return super().get(photo, side=side,
                           compute=lambda: style_statistics(photo, side=side, config=self.config))
