"""A phantom's photo: painted from the label map alone plus a seed (texture, illumination, colour), so
that a renderer network can learn label → photo."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from fundus_studio import labels
from fundus_studio.phantom.config import PHOTO_STREAM, PhantomConfig, PhotoConfig, check_seed, random_stream
from fundus_studio.phantom.draw import uniform

# --- photo -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Landmarks:
    """What the renderer reads off a label map: FOV, disc and fovea positions in pixels."""

    center: np.ndarray
    fov_radius: float
    disc: np.ndarray | None
    dd: float
    fovea: np.ndarray


def _landmarks(label: np.ndarray, cfg: PhantomConfig) -> _Landmarks:
    h, w = label.shape
    fov = (label != labels.OUTSIDE).astype(np.uint8)
    m = cv2.moments(fov, binaryImage=True)
    if m["m00"] == 0:
        center, radius = np.array([w / 2.0, h / 2.0]), min(h, w) / 2.0
    else:
        center, radius = np.array([m["m10"] / m["m00"], m["m01"] / m["m00"]]), math.sqrt(m["m00"] / math.pi)
    nominal_dd = float(np.mean(cfg.disc_fraction)) * 2.0 * radius
    od = cv2.findNonZero((label == labels.OPTIC_DISC).astype(np.uint8))
    if od is None or len(od) < 4:
        return _Landmarks(center, radius, None, nominal_dd, center)
    (cx, cy), r = cv2.minEnclosingCircle(od)
    disc = np.array([cx, cy])
    dd = float(np.clip(2.0 * r, 0.5 * nominal_dd, 2.0 * nominal_dd))
    # The fovea: the biggest vessel-free spot near where anatomy puts it.
    side = 1.0 if center[0] >= disc[0] else -1.0
    pc = cfg.photo
    guess = disc + np.array([side * pc.fovea_distance * dd, pc.fovea_drop * dd])
    free = ((label != labels.VESSEL) & (label != labels.OPTIC_DISC) & (label != labels.OUTSIDE)).astype(np.uint8)
    dist = cv2.distanceTransform(free, cv2.DIST_L2, 3)
    yy, xx = np.ogrid[:h, :w]
    window = (xx - guess[0]) ** 2 + (yy - guess[1]) ** 2 <= (pc.fovea_search * dd) ** 2
    if window.any():
        # Prefer the centre of the free area, gently pulled towards the anatomical guess on ties.
        score = np.where(window, dist - 1e-3 * np.sqrt((xx - guess[0]) ** 2 + (yy - guess[1]) ** 2), -np.inf)
        iy, ix = np.unravel_index(int(np.argmax(score)), score.shape)
        fovea = np.array([float(ix), float(iy)])
    else:
        fovea = guess
    return _Landmarks(center, radius, disc, dd, fovea)


def _gauss(shape: tuple[int, int], centre: np.ndarray, sigma: float) -> np.ndarray:
    h, w = shape
    gx = np.exp(-0.5 * ((np.arange(w, dtype=np.float32) - centre[0]) / sigma) ** 2)
    gy = np.exp(-0.5 * ((np.arange(h, dtype=np.float32) - centre[1]) / sigma) ** 2)
    return gy[:, None] * gx[None, :]


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    if sigma <= 0.05:
        return img
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)


def _noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth unit-scale noise with about ``cells`` features across the image."""
    h, w = shape
    cells = max(2, min(cells, min(h, w) // 2))
    small = rng.standard_normal((cells + 3, cells + 3)).astype(np.float32)
    big = cv2.resize(small, (w + 2 * w // cells, h + 2 * h // cells), interpolation=cv2.INTER_CUBIC)
    # Crop the interior: cubic interpolation rings at the borders.
    oy, ox = h // cells, w // cells
    return big[oy : oy + h, ox : ox + w]


def _rgb(values: tuple[float, float, float]) -> np.ndarray:
    """A colour (or per-channel coefficients) shaped ``(3, 1, 1)`` to broadcast over planar images."""
    return np.asarray(values, np.float32)[:, None, None]


def _mix(img: np.ndarray, alpha: np.ndarray, rgb: np.ndarray) -> None:
    """``img ← img·(1-α) + rgb·α`` in place for a planar ``(3, H, W)`` image and ``(H, W)`` alpha."""
    img *= 1.0 - alpha
    img += alpha * rgb


def _bbox(mask: np.ndarray, margin: float) -> tuple[slice, slice]:
    """Slices of the bounding box of ``mask``'s pixels, grown by ``margin`` pixels."""
    x, y, bw, bh = cv2.boundingRect(mask.astype(np.uint8))
    m = int(math.ceil(margin))
    h, w = mask.shape
    return slice(max(0, y - m), min(h, y + bh + m)), slice(max(0, x - m), min(w, x + bw + m))


def render_photo(label: np.ndarray, *, seed: int, config: PhantomConfig = PhantomConfig()) -> np.ndarray:
    """Paint a photo-like fundus image from a label map: ``(H, W)`` indices → ``(H, W, 3)`` uint8 RGB.

    The result depends only on the label map and ``seed`` (texture, illumination, colour cast, cup
    size); everything structural is read off the label: the disc and fovea positions, a vessel's
    darkness from its width (distance transform), lesion colours from their classes.
    """
    label = labels.check_index_map(label)
    seed = check_seed(seed)
    rng = random_stream(seed, PHOTO_STREAM)
    pc = config.photo
    h, w = label.shape
    shape = (h, w)
    lm = _landmarks(label, config)
    dd = lm.dd
    present = np.bincount(label.ravel(), minlength=labels.NUM_CLASSES) > 0

    # The image is built planar, (3, H, W): per-pixel arithmetic then runs along whole rows.
    # Illumination: exposure, colour cast, vignetting, a gentle gradient and choroidal texture.
    base = _rgb(pc.retina_rgb) * uniform(rng, pc.brightness)
    base *= np.exp(rng.normal(0.0, pc.tint_sigma, 3)).astype(np.float32)[:, None, None]
    rx = ((np.arange(w, dtype=np.float32) - lm.center[0]) / lm.fov_radius)[None, :]
    ry = ((np.arange(h, dtype=np.float32) - lm.center[1]) / lm.fov_radius)[:, None]
    rr2 = np.minimum(rx**2 + ry**2, 1.0)
    ang = rng.uniform(0, 2 * math.pi)
    illum = 1.0 - uniform(rng, pc.vignette) * rr2 ** (pc.vignette_power / 2.0)
    illum += pc.gradient * rng.uniform(0.3, 1.0) * (rx * math.cos(ang) + ry * math.sin(ang))
    scale = max(h, w) / (2.0 * lm.fov_radius)  # noise cells are counted across the FOV
    for amp, cells in zip(pc.texture, pc.texture_cells):
        illum += amp * _noise(rng, shape, int(cells * scale))
    # Macula: darker and browner (per-channel depth), the foveola darker still.
    mac = _gauss(shape, lm.fovea, pc.macula_sigma * dd)
    img = (illum * (1.0 - pc.foveola_depth * _gauss(shape, lm.fovea, pc.foveola_sigma * dd))) \
        * (base * (1.0 - mac * _rgb(pc.macula_depth)))

    # Optic disc: the disc region with vessel gaps closed, a temporal cup, a bright halo.
    cup_ratio = uniform(rng, pc.cup_ratio)
    if lm.disc is not None:
        ys, xs = _bbox(label == labels.OPTIC_DISC, 3 * pc.halo_sigma * dd)
        sub, lab = img[:, ys, xs], label[ys, xs]
        k = max(3, int(round(2 * pc.vessel_max_radius * dd)) | 1)
        od = cv2.morphologyEx((lab == labels.OPTIC_DISC).astype(np.uint8), cv2.MORPH_CLOSE,
                              cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
        od &= (lab != labels.OUTSIDE)
        disc_a = _blur(od.astype(np.float32), pc.disc_edge * dd) * pc.disc_opacity
        origin = np.array([xs.start, ys.start], np.float64)
        sub *= 1.0 + pc.halo_gain * _gauss(lab.shape, lm.disc - origin, pc.halo_sigma * dd)
        side = 1.0 if lm.center[0] >= lm.disc[0] else -1.0
        cup_c = lm.disc - origin + np.array([side * pc.cup_offset * dd, 0.0])
        yy, xx = np.ogrid[: lab.shape[0], : lab.shape[1]]
        cup = (np.clip(1.0 - np.hypot(xx - cup_c[0], yy - cup_c[1]) / (cup_ratio * dd / 2.0), 0.0, 1.0) ** 0.6)
        cup = cup.astype(np.float32)
        rgb = _rgb(pc.disc_rgb) * (1 - cup) + _rgb(pc.cup_rgb) * cup
        _mix(sub, disc_a * np.clip(illum[ys, xs], 0.5, 1.2), rgb)

    # Absorbers (Beer–Lambert): per-channel densities add up, one exponential at the end.
    density = np.zeros((3, h, w), np.float32)
    reflex = None
    if present[labels.VESSEL]:
        reflex = _vessel_density(density, (label == labels.VESSEL).astype(np.uint8), dd=dd, pc=pc)
    for cls, coeffs, strength in (
        (labels.IRMA, pc.irma_rgb_absorb, pc.irma_density),
        (labels.NEOVASCULARISATION, pc.nv_rgb_absorb, pc.nv_density),
        (labels.MICROANEURYSM, pc.ma_rgb_absorb, pc.ma_density),
    ):
        if present[cls]:
            d = _blur((label == cls).astype(np.float32), pc.edge_blur_px)
            density += (strength * d) * _rgb(coeffs)
    if present[labels.HAEMORRHAGE]:  # dark red, mottled, soft-edged
        d = _blur((label == labels.HAEMORRHAGE).astype(np.float32), pc.he_blur * dd)
        d *= pc.he_density + pc.he_mottle * _noise(rng, shape, int(w / dd * 6))
        density += d * _rgb(pc.he_rgb_absorb)
    img *= np.exp(-density)
    if reflex is not None:
        img *= 1.0 + pc.reflex_gain * reflex

    # Cotton-wool spots: pale, fluffy edges reaching a little beyond the label.
    if present[labels.SOFT_EXUDATE]:
        fluff = np.clip(_blur((label == labels.SOFT_EXUDATE).astype(np.float32), pc.se_blur * dd) * 1.3, 0, 1)
        fluff *= pc.se_opacity * (0.85 + 0.15 * _noise(rng, shape, int(w / dd * 8)))
        _mix(img, np.clip(fluff, 0, 1), _rgb(pc.se_rgb))
    # Hard exudates: waxy yellow, sharp-edged, a little brighter in the middle.
    if present[labels.HARD_EXUDATE]:
        ex = (label == labels.HARD_EXUDATE).astype(np.float32)
        ys, xs = _bbox(ex > 0, 4 * pc.ex_blur_px + 4)
        a = _blur(ex[ys, xs], pc.ex_blur_px)
        core = _blur(ex[ys, xs], 1.5 * pc.ex_blur_px + 1.0)
        _mix(img[:, ys, xs], np.clip(a, 0, 1) * pc.ex_opacity, _rgb(pc.ex_rgb) * (0.9 + 0.15 * core))

    # Optics, field of view, sensor noise.
    fov = _blur((label != labels.OUTSIDE).astype(np.float32), pc.edge_blur_px)
    # Luminance grain, uniform with the configured σ (a Gaussian draw costs ten times as much).
    grain = (rng.random(shape, dtype=np.float32) - 0.5) * (pc.grain * math.sqrt(12.0))
    planes = []
    for c in range(3):
        plane = _blur(img[c], pc.optics_blur_px)
        plane *= fov
        plane += pc.outside_level * (1.0 - fov) + 0.5
        plane += grain
        planes.append(np.clip(plane, 0, 255).astype(np.uint8))
    return cv2.merge(planes)


def _vessel_density(density: np.ndarray, ves: np.ndarray, *, dd: float, pc: PhotoConfig) -> np.ndarray:
    """Add the vessels' per-channel density to ``density`` (3, H, W); return the reflex map (H, W).

    Each vessel pixel is a chord through a blood column whose width is read off the label: the
    distance transform peaks on the centre line, and its local maximum is the local radius.
    """
    d = cv2.distanceTransform(ves, cv2.DIST_L2, 3)  # 1 at the edge pixel, the radius + ½ at the centre
    k = max(3, 2 * int(math.ceil(pc.vessel_max_radius * dd)) + 1)
    radius = cv2.dilate(d, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))  # local centre value
    on = np.flatnonzero(ves)  # only vessel pixels: a tenth of the image
    d_on = d.ravel()[on]
    r_loc = np.maximum(radius.ravel()[on] - 0.5, 0.5)
    width_dd = 2.0 * r_loc / dd
    # Position across the vessel: 0 at the wall, 1 on the centre line; a cylinder's chord length.
    t = np.clip((d_on - 0.5) / r_loc, 0.0, 1.0)
    chord = np.sqrt(1.0 - (1.0 - t) ** 2)
    sat = 1.0 - np.exp(-width_dd / pc.vessel_width_scale)  # wider vessels absorb more: veins darker
    dens = pc.vessel_absorbance * sat * (pc.vessel_wall_density + (1.0 - pc.vessel_wall_density) * chord)
    thin, wide = np.asarray(pc.vessel_rgb_absorb_thin, np.float32), np.asarray(pc.vessel_rgb_absorb_wide, np.float32)
    for c in range(3):
        layer = np.zeros(ves.shape, np.float32)
        layer.ravel()[on] = dens * (thin[c] + sat * (wide[c] - thin[c]))
        density[c] += _blur(layer, pc.edge_blur_px)
    reflex = np.zeros(ves.shape, np.float32)
    reflex.ravel()[on] = np.where(width_dd >= pc.reflex_min_width, np.exp(-(((1.0 - t) / pc.reflex_width) ** 2)), 0.0)
    return _blur(reflex, pc.edge_blur_px)
