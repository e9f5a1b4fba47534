"""Procedural fundus phantoms: a label map, a photo-like image and a DR grade, from a seed.

Phantoms stand in for IDRiD/FGADR, which cannot be downloaded here. A phantom is built in two steps:

1. :func:`generate_label_map` draws the anatomy (circular field of view, optic disc, a branching
   vessel tree along the temporal arcades, an avascular fovea) and grade-dependent lesions, following
   the geometry and the lesion priors of ``DATA.md``. Every length is in disc diameters (DD), so the
   phantom scales with ``size``.
2. :func:`render_photo` paints a photo-like image from the label map alone (plus a seed for texture,
   illumination and colour), so that a renderer network can learn label → photo: everything the photo
   shows is derived from the label (e.g. a vessel's darkness from its width, measured with a distance
   transform), never from hidden state of the generator.

Coordinates are image pixels ``(x, y)``, x to the right and y down. Randomness comes only from the
explicit ``numpy.random.Generator`` or seed passed in: same seed, same phantom.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from fundus_studio import labels
from fundus_studio.errors import DatasetError, InputError

Range = tuple[float, float]
IntRange = tuple[int, int]

# Smallest side the phantoms are drawn at; sides must be multiples of this (the U-Net's stride).
SIZE_MULTIPLE: int = 16
MIN_SIZE: int = 64
# Independent random streams derived from one sample seed: the label map and the photo's appearance
# must not share draws, so that re-rendering a label with the same seed gives the same photo.
_LABEL_STREAM: int = 0
_PHOTO_STREAM: int = 1
# Bumped whenever the same seed and config start giving different phantoms.
GENERATOR_VERSION: int = 1


# --- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhotoConfig:
    """Appearance of the rendered photo. Colours are RGB in 0..255; lengths in DD unless noted."""

    # Mean retina colour inside the field of view of skimage.data.retina() at 512² (206, 82, 60),
    # a little brighter because vignetting darkens the mean again.
    retina_rgb: tuple[float, float, float] = (222.0, 88.0, 62.0)
    brightness: Range = (0.82, 1.08)  # global exposure factor per photo
    tint_sigma: float = 0.05  # log-normal per-channel colour variation between photos
    vignette: Range = (0.12, 0.3)  # relative darkening at the rim of the field of view
    vignette_power: float = 2.5  # fall-off exponent in normalised radius
    gradient: float = 0.08  # amplitude of a random linear illumination gradient across the FOV
    texture: tuple[float, ...] = (0.02, 0.012, 0.01)  # relative amplitudes of the noise octaves below
    texture_cells: tuple[int, ...] = (6, 24, 96)  # noise cells across the FOV per octave (coarse → fine)
    grain: float = 1.6  # sensor noise, grey levels (σ)
    # Darker macula: per-channel relative darkening (blue and green drop most in real photos: the
    # macular pigment absorbs them), a broad halo and a small darker foveola.
    macula_depth: tuple[float, float, float] = (0.10, 0.20, 0.28)
    macula_sigma: float = 0.8  # DD
    foveola_depth: float = 0.12  # extra relative darkening at the centre
    foveola_sigma: float = 0.2  # DD
    fovea_distance: float = 2.65  # DD from disc centre where the fovea is looked for (DATA.md 2.5–2.8)
    fovea_drop: float = 0.3  # DD the fovea is looked for below the disc centre
    fovea_search: float = 1.0  # DD radius of the search for the largest vessel-free spot
    # Optic disc: a bright yellow-orange rim, a paler cup offset temporally, a faint bright halo.
    disc_rgb: tuple[float, float, float] = (252.0, 160.0, 105.0)
    cup_rgb: tuple[float, float, float] = (255.0, 215.0, 165.0)
    disc_opacity: float = 0.85
    cup_ratio: Range = (0.3, 0.5)  # cup / disc diameter
    cup_offset: float = 0.12  # DD the cup sits temporally of the disc centre
    disc_edge: float = 0.04  # DD blur of the disc's rim
    halo_gain: float = 0.10  # relative brightening of the peripapillary halo
    halo_sigma: float = 0.6  # DD
    # Vessels: Beer–Lambert absorbance, saturating with the vessel's width (wider = darker), per
    # channel: red passes, green and blue are absorbed; thin vessels (arterioles) lighter and redder.
    # Matched to skimage.data.retina(): the darkest vessel centres pass 0.91 / 0.55 / 0.70 of R / G / B.
    vessel_absorbance: float = 1.0  # absorbance of a very wide vessel's centre
    vessel_width_scale: float = 0.04  # DD: width at which absorbance reaches 63 % of the maximum
    vessel_rgb_absorb_thin: tuple[float, float, float] = (0.08, 0.8, 0.45)
    vessel_rgb_absorb_wide: tuple[float, float, float] = (0.15, 0.85, 0.5)
    vessel_wall_density: float = 0.35  # density at a vessel's wall relative to its centre
    vessel_max_radius: float = 0.06  # DD; radius window over which a vessel's width is measured
    reflex_min_width: float = 0.045  # DD; wider vessels show a central light reflex
    reflex_gain: float = 0.12  # relative brightening of the reflex
    reflex_width: float = 0.18  # fraction of the vessel's radius covered by the reflex
    edge_blur_px: float = 0.6  # anti-aliasing of label edges, output pixels (σ)
    # Lesions.
    ma_rgb_absorb: tuple[float, float, float] = (0.3, 1.1, 0.8)  # dark red dots
    ma_density: float = 1.6
    he_rgb_absorb: tuple[float, float, float] = (0.35, 1.2, 0.9)  # dark red blots and flames
    he_blur: float = 0.02  # DD
    he_density: float = 1.0
    he_mottle: float = 0.25  # variation of a haemorrhage's density
    ex_rgb: tuple[float, float, float] = (240.0, 215.0, 95.0)  # waxy yellow, sharp-edged
    ex_opacity: float = 0.9
    ex_blur_px: float = 0.5
    se_rgb: tuple[float, float, float] = (236.0, 196.0, 170.0)  # pale, fluffy
    se_opacity: float = 0.75
    se_blur: float = 0.05  # DD: cotton-wool spots have feathery edges
    nv_rgb_absorb: tuple[float, float, float] = (0.05, 0.8, 0.6)  # fine bright-red new vessels
    nv_density: float = 0.9
    irma_density: float = 0.9
    irma_rgb_absorb: tuple[float, float, float] = (0.12, 0.8, 0.5)
    optics_blur_px: float = 0.4  # camera blur over the whole image, output pixels (σ)
    outside_level: float = 2.0  # grey level of the black surround

    def __post_init__(self) -> None:
        if len(self.texture) != len(self.texture_cells):
            raise ValueError("texture and texture_cells need one entry per noise octave")
        for name in ("brightness", "vignette", "cup_ratio"):
            lo, hi = getattr(self, name)
            if not 0 <= lo <= hi:
                raise ValueError(f"PhotoConfig.{name}: expected 0 ≤ low ≤ high, got {(lo, hi)}")


def _per_grade(*values: Any) -> tuple[Any, ...]:
    """A tuple with one entry per DR grade (0..4), checked against the taxonomy's grade count."""
    if len(values) != labels.NUM_GRADES:
        raise ValueError(f"expected {labels.NUM_GRADES} per-grade values, got {len(values)}")
    return tuple(values)


@dataclass(frozen=True)
class PhantomConfig:
    """Geometry and lesion statistics of the phantoms (DATA.md), and the photo's appearance.

    Lengths are in disc diameters (DD) unless the name says otherwise; ``(low, high)`` pairs are
    uniform ranges; per-grade tuples hold one entry per DR grade 0..4.
    """

    # --- geometry (DATA.md "Geometry of a 45–50° fundus photo") ---
    fov_radius: Range = (0.94, 0.98)  # FOV radius / half the image side
    disc_fraction: Range = (0.11, 0.14)  # disc diameter / FOV diameter
    disc_aspect: Range = (1.0, 1.12)  # disc height / width: discs are slightly tall ovals
    disc_tilt: float = 15.0  # ± degrees the oval's long axis leans off vertical
    disc_to_fovea: Range = (2.5, 2.8)  # DD between disc and fovea centres
    fovea_below_disc: Range = (0.15, 0.45)  # DD the fovea lies below the disc centre (≈ 6–10°)
    fovea_jitter: float = 0.04  # fovea offset from the image centre, ± fraction of the FOV radius per axis
    faz_radius: Range = (0.45, 0.7)  # DD: visible vessels stop this far from the fovea
    # --- vessel tree ---
    arcade_height: Range = (1.8, 2.3)  # DD above/below the fovea where the arcades pass
    arcade_slope: Range = (0.0, 0.35)  # du/dv where an arcade leaves the disc (0: straight up or down)
    arcade_wobble: float = 0.12  # DD amplitude of the arcades' smooth deviation from a parabola
    vein_width: Range = (0.075, 0.09)  # DD, main veins at the disc (DATA.md 0.06–0.09)
    artery_vein_ratio: Range = (0.68, 0.8)  # artery / vein width: arteries are narrower
    artery_offset: float = 0.12  # DD between an artery and its vein where they leave the disc
    artery_course: Range = (0.8, 1.25)  # artery arcade height / vein arcade height: own course, crossings
    arcade_taper: float = 0.1  # per DD: exponential width decay along a main arcade
    branch_taper: float = 0.15  # per DD: exponential width decay along a branch
    nasal_width: Range = (0.5, 0.75)  # nasal trunk width / main trunk width
    nasal_angle: Range = (35.0, 70.0)  # degrees from straight nasal, up or down
    papillomacular: IntRange = (2, 4)  # small vessels from the disc towards the fovea
    papillomacular_width: Range = (0.022, 0.035)  # DD
    papillomacular_spread: float = 40.0  # ± degrees around the direction of the fovea
    branch_spacing: Range = (0.25, 0.6)  # DD along a vessel between side branches
    branch_ratio: Range = (0.3, 0.75)  # child / parent width at a bifurcation
    branch_angle: Range = (30.0, 70.0)  # degrees between parent and child
    murray_exponent: float = 3.0  # parent width after a branch: (w^k - child^k)^(1/k), Murray's law
    tortuosity: float = 0.45  # rad per √DD: random walk of the heading of a branch as wide as a main vein
    tortuosity_exponent: float = 0.4  # thinner branches wiggle more: tortuosity ∝ width^-k
    fibre_steering: float = 0.55  # per DD: pull of a branch's heading towards the nerve-fibre direction
    branch_start: float = 0.6  # DD from the disc centre before a trunk gives off its first branch
    curve_smoothing: int = 6  # steps over which heading noise is smoothed (no kinks)
    step: float = 0.05  # DD between polyline vertices
    max_branch_length: float = 6.0  # DD
    length_per_width: Range = (60.0, 120.0)  # a branch runs this many of its own widths: small ones end soon
    max_depth: int = 8  # bifurcation levels below a trunk
    min_vessel_width: float = 0.01  # DD (≈ 0.6 px at 512): thinner branches end
    min_vessel_px: float = 1.1  # drawn widths never go below this many output pixels
    min_visible_px: float = 0.45  # output pixels: branches thinner than this end (small images show fewer)
    disc_keepout: float = 0.45  # DD: branches that run back into the disc end there
    supersample: int = 4  # vessels and fine lesions are drawn at this multiple, then area-averaged
    lesion_supersample: int = 2  # the same for blob-shaped lesions, which need less precision
    # --- lesions: counts and probabilities per grade (DATA.md "DR grades and phantom priors") ---
    ma_count: tuple[IntRange, ...] = _per_grade((0, 0), (1, 5), (5, 30), (15, 60), (20, 80))
    ma_diameter: Range = (0.02, 0.08)  # DD (DATA.md 0.01–0.08; the smallest would vanish at 512)
    ma_min_px: int = 1  # every microaneurysm keeps at least its centre pixel
    he_count: tuple[IntRange, ...] = _per_grade((0, 0), (0, 0), (1, 20), (20, 80), (30, 100))
    he_flame_fraction: tuple[float, ...] = _per_grade(0.0, 0.0, 0.25, 0.4, 0.4)
    he_diameter: Range = (0.08, 0.5)  # DD, dot and blot haemorrhages (DATA.md)
    he_size_skew: float = 1.8  # > 1 makes small haemorrhages commoner than log-uniform would
    flame_length: Range = (0.2, 0.6)  # DD, along the nerve-fibre direction
    flame_aspect: Range = (2.5, 4.5)  # length / width
    ex_probability: tuple[float, ...] = _per_grade(0.0, 0.0, 0.6, 0.75, 0.75)
    ex_groups: tuple[IntRange, ...] = _per_grade((0, 0), (0, 0), (1, 3), (1, 4), (1, 4))
    ex_ring_probability: float = 0.4  # a group is a circinate ring rather than a cluster
    ex_distance: Range = (0.4, 2.5)  # DD from the fovea to a group's centre (DATA.md within 2–3 DD)
    ex_spots: IntRange = (6, 30)  # spots per group
    ex_diameter: Range = (0.025, 0.12)  # DD per spot, log-uniform
    ex_cluster_spread: Range = (0.12, 0.35)  # DD, σ of a cluster's spots
    ex_ring_radius: Range = (0.35, 0.8)  # DD
    ex_ring_arc: Range = (200.0, 360.0)  # degrees of the ring that carry exudates
    se_probability: tuple[float, ...] = _per_grade(0.0, 0.0, 0.3, 1.0, 1.0)
    se_count: tuple[IntRange, ...] = _per_grade((0, 0), (0, 0), (1, 3), (2, 6), (2, 6))
    se_diameter: Range = (0.25, 0.5)  # DD
    se_arcade_spread: float = 0.45  # DD, σ of a cotton-wool spot's distance from an arcade
    irma_probability: tuple[float, ...] = _per_grade(0.0, 0.0, 0.0, 1.0, 0.7)
    irma_count: tuple[IntRange, ...] = _per_grade((0, 0), (0, 0), (0, 0), (1, 4), (1, 3))
    irma_radius: Range = (0.2, 0.4)  # DD extent of one IRMA patch
    irma_segments: IntRange = (2, 5)
    irma_width: Range = (0.018, 0.028)  # DD
    irma_tortuosity: float = 4.0  # rad per √DD: IRMA are markedly tortuous
    irma_fovea_clearance: float = 1.5  # DD: IRMA lie in the mid-periphery, beside branch vessels
    nvd_probability: tuple[float, ...] = _per_grade(0.0, 0.0, 0.0, 0.0, 0.65)  # NV at the disc
    nve_probability: tuple[float, ...] = _per_grade(0.0, 0.0, 0.0, 0.0, 0.6)  # NV elsewhere
    nvd_radius: Range = (0.5, 0.8)  # DD around the disc centre (≥ ¼–⅓ of the disc area is covered)
    nve_count: IntRange = (1, 3)
    nve_radius: Range = (0.3, 0.6)  # DD
    nve_along_arcade: Range = (1.5, 3.5)  # DD along an arcade from the disc where NVE sprout
    nv_strands: IntRange = (14, 32)  # fine vessels per tangle
    nv_width: Range = (0.012, 0.02)  # DD
    nv_loop: Range = (0.15, 0.45)  # loop radius / tangle radius: strands curl into loops
    nv_tortuosity: float = 2.5  # rad per √DD: new vessels wander, making a net rather than rings
    lesion_disc_clearance: float = 0.7  # DD: dot lesions are not placed on the disc
    lesion_edge_margin: float = 0.15  # DD: lesion centres keep this far inside the FOV edge
    posterior_fraction: float = 0.6  # share of MA/HE placed around the posterior pole
    posterior_spread: float = 1.8  # DD, σ around the fovea of the posterior-pole share
    photo: PhotoConfig = field(default_factory=PhotoConfig)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_count", "_groups", "_probability", "_fraction")) and isinstance(value, tuple) \
                    and len(value) == labels.NUM_GRADES:
                if any(v not in (0, 0.0, (0, 0)) for v in value[:1]):
                    raise ValueError(f"PhantomConfig.{f.name}: grade 0 must have no lesions, got {value[0]}")
                for v in value:
                    if isinstance(v, tuple) and not 0 <= v[0] <= v[1]:
                        raise ValueError(f"PhantomConfig.{f.name}: bad count range {v}")
                    if isinstance(v, float) and not 0.0 <= v <= 1.0:
                        raise ValueError(f"PhantomConfig.{f.name}: probability {v} outside 0..1")
        if self.ma_count[1][0] < 1:
            raise ValueError("PhantomConfig.ma_count: grade 1 needs at least one microaneurysm")
        if self.supersample < 1 or self.lesion_supersample < 1:
            raise ValueError(f"PhantomConfig.supersample must be ≥ 1, got {self.supersample}")
        if self.step <= 0 or self.min_vessel_width <= 0:
            raise ValueError("PhantomConfig.step and min_vessel_width must be positive")

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-ready data (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


@dataclass(frozen=True)
class PhantomLayout:
    """Where the anatomy of one phantom lies, in output pixels."""

    size: int
    center: tuple[float, float]  # FOV centre (x, y)
    fov_radius: float
    disc: tuple[float, float]  # optic disc centre (x, y)
    dd: float  # disc diameter (horizontal), the unit of every other length
    disc_aspect: float  # disc height / width
    fovea: tuple[float, float]
    faz_radius: float  # vessel-free radius around the fovea

    @property
    def disc_on_left(self) -> bool:
        return self.disc[0] < self.center[0]


@dataclass(frozen=True, eq=False)  # arrays have no single truth value: compare fields explicitly
class Phantom:
    """One phantom: ``label`` (H, W) uint8 class indices, ``image`` (H, W, 3) uint8 RGB."""

    label: np.ndarray
    image: np.ndarray
    grade: int
    seed: int


# --- small helpers ---------------------------------------------------------------------------------


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def _log_uniform(rng: np.random.Generator, r: Range, n: int) -> np.ndarray:
    return np.exp(rng.uniform(math.log(r[0]), math.log(r[1]), n))


def _count(rng: np.random.Generator, r: IntRange) -> int:
    return int(rng.integers(r[0], r[1] + 1))


def _check_grade(grade: int) -> int:
    if isinstance(grade, bool) or not isinstance(grade, (int, np.integer)) or not 0 <= grade < labels.NUM_GRADES:
        raise InputError(f"grade must be an integer 0..{labels.NUM_GRADES - 1}, got {grade!r}")
    return int(grade)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE or size % SIZE_MULTIPLE:
        raise InputError(f"size must be a multiple of {SIZE_MULTIPLE} and at least {MIN_SIZE}, got {size!r}")
    return int(size)


def _check_seed(seed: int, *, what: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"{what} must be a non-negative integer, got {seed!r}")
    return int(seed)


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of a run with seed ``seed`` (a 63-bit integer)."""
    state = np.random.SeedSequence([_check_seed(seed), _check_seed(index, what="index")]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def _stream(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([_check_seed(seed), stream]))


class _Frame:
    """The disc-centred frame of the arcades: ``u`` towards the fovea, ``v`` upwards, in DD."""

    def __init__(self, layout: PhantomLayout) -> None:
        disc, fovea = np.asarray(layout.disc), np.asarray(layout.fovea)
        self.origin = disc
        self.dd = layout.dd
        self.e = (fovea - disc) / np.linalg.norm(fovea - disc)
        # Perpendicular that points up in the image (y decreases), whichever side the disc is on.
        self.n = np.sign(self.e[0]) * np.array([self.e[1], -self.e[0]])

    def to_px(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return self.origin + (np.asarray(u)[..., None] * self.e + np.asarray(v)[..., None] * self.n) * self.dd

    def to_uv(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        d = (np.asarray(p, dtype=np.float64) - self.origin) / self.dd
        return d @ self.e, d @ self.n

    def fibre_angle(self, p: np.ndarray) -> np.ndarray:
        """Nerve-fibre direction (radians, image frame) at points ``(N, 2)``.

        Fibres leave the disc radially and arch around the fovea; the family of parabolas
        ``u = c v²`` with their vertex at the disc has tangent ``(2u, v)``, which does both.
        """
        u, v = self.to_uv(p)
        d = (2.0 * u)[..., None] * self.e + v[..., None] * self.n
        return np.arctan2(d[..., 1], d[..., 0])


# --- layout ----------------------------------------------------------------------------------------


def sample_layout(*, rng: np.random.Generator, size: int, config: PhantomConfig = PhantomConfig()) -> PhantomLayout:
    """Draw the anatomy's positions: FOV, disc (left or right with equal odds), fovea."""
    cfg = config
    half = size / 2.0
    radius = _uniform(rng, cfg.fov_radius) * half
    dd = _uniform(rng, cfg.disc_fraction) * 2.0 * radius
    side = -1.0 if rng.random() < 0.5 else 1.0  # -1: disc on the image's left (a left eye)
    jitter = rng.uniform(-cfg.fovea_jitter, cfg.fovea_jitter, 2) * radius
    fovea = np.array([half, half]) + jitter
    dist = _uniform(rng, cfg.disc_to_fovea) * dd
    below = _uniform(rng, cfg.fovea_below_disc) * dd
    disc = fovea + np.array([side * math.sqrt(dist**2 - below**2), -below])
    return PhantomLayout(
        size=size,
        center=(half, half),
        fov_radius=radius,
        disc=(float(disc[0]), float(disc[1])),
        dd=dd,
        disc_aspect=_uniform(rng, cfg.disc_aspect),
        fovea=(float(fovea[0]), float(fovea[1])),
        faz_radius=_uniform(rng, cfg.faz_radius) * dd,
    )


# --- vessel tree -----------------------------------------------------------------------------------


@dataclass
class _Path:
    """A drawn curve: vertices ``(N, 2)`` in output pixels and the width at each vertex (pixels)."""

    points: np.ndarray
    widths: np.ndarray


def _smooth_noise(rng: np.random.Generator, n: int, smoothing: int, *, unit: bool = True) -> np.ndarray:
    """``n`` samples of Gaussian noise low-pass filtered over about ``smoothing`` samples.

    ``unit``: scaled to unit variance (a smooth curve); otherwise a plain average, whose running sum
    keeps the variance of a random walk (smooth increments).
    """
    if smoothing <= 1:
        return rng.standard_normal(n)
    k = np.exp(-0.5 * (np.arange(-2 * smoothing, 2 * smoothing + 1) / smoothing) ** 2)
    k /= math.sqrt((k**2).sum()) if unit else k.sum()
    return np.convolve(rng.standard_normal(n + len(k) - 1), k, mode="valid")


class _TreeBuilder:
    """Grows the vessel tree: main trunks from the disc, then side branches, recursively."""

    def __init__(self, rng: np.random.Generator, layout: PhantomLayout, cfg: PhantomConfig) -> None:
        self.rng, self.layout, self.cfg = rng, layout, cfg
        self.frame = _Frame(layout)
        self.dd = layout.dd
        self.step_px = cfg.step * layout.dd
        # Branches end where they get thinner than the anatomy's limit or than the image can show.
        self.min_w = max(cfg.min_vessel_width * layout.dd, cfg.min_visible_px)
        self.paths: list[_Path] = []
        self.arcades: list[_Path] = []

    def _inside(self, pts: np.ndarray) -> np.ndarray:
        c, lay = np.asarray(self.layout.center), self.layout
        return np.hypot(*(pts - c).T) < lay.fov_radius

    def _truncate(self, pts: np.ndarray, widths: np.ndarray, *, leave_disc: bool) -> int:
        """Number of leading vertices to keep: stop outside the FOV, in the fovea, or (branches) in the disc."""
        lay = self.layout
        stop = ~self._inside(pts) | (widths < self.min_w)
        stop |= np.hypot(*(pts - np.asarray(lay.fovea)).T) < lay.faz_radius
        if leave_disc:
            stop[1:] |= np.hypot(*(pts[1:] - np.asarray(lay.disc)).T) < self.cfg.disc_keepout * self.dd
        hits = np.flatnonzero(stop)
        return int(hits[0]) if hits.size else len(pts)

    def tortuosity(self, width: float) -> float:
        ref = float(np.mean(self.cfg.vein_width)) * self.dd
        return self.cfg.tortuosity * (ref / max(width, self.min_w)) ** self.cfg.tortuosity_exponent

    def walk(self, start: np.ndarray, heading: float, width: float, *, tortuosity: float,
             taper: float, steer: float | None = None) -> _Path:
        """A smooth random-walk branch from ``start`` (px) with initial heading (rad) and width (px).

        The heading drifts at random and is pulled towards the local nerve-fibre direction (vessels
        and fibres both arch around the fovea), which gives the tree its arcuate flow.
        """
        cfg = self.cfg
        steer = cfg.fibre_steering if steer is None else steer
        length = min(cfg.max_branch_length, _uniform(self.rng, cfg.length_per_width) * width / self.dd)
        n = max(2, int(length / cfg.step))
        if taper > 0 and width > self.min_w:  # no need to walk past where the width runs out
            n = min(n, int(math.log(width / self.min_w) / (taper * cfg.step)) + 2)
        noise = tortuosity * math.sqrt(cfg.step) * _smooth_noise(self.rng, n, cfg.curve_smoothing, unit=False)
        e, nn, origin, dd = self.frame.e, self.frame.n, self.frame.origin, self.dd
        ex, ey, nx, ny = float(e[0]), float(e[1]), float(nn[0]), float(nn[1])
        pull = steer * cfg.step / 2.0
        theta = np.empty(n)
        x, y, th = float(start[0]) - origin[0], float(start[1]) - origin[1], heading
        cx, cy = self.layout.center[0] - origin[0], self.layout.center[1] - origin[1]
        r2 = self.layout.fov_radius**2
        for i in range(n):  # sequential: each step's pull depends on where the walk has got to
            if (x - cx) ** 2 + (y - cy) ** 2 > r2:
                n = i + 1
                theta = theta[:n]
                theta[i] = th
                break
            u, v = (x * ex + y * ey) / dd, (x * nx + y * ny) / dd
            fibre = math.atan2(2 * u * ey + v * ny, 2 * u * ex + v * nx)
            th += noise[i] - pull * math.sin(2.0 * (th - fibre))  # axial: either way along a fibre
            theta[i] = th
            x += self.step_px * math.cos(th)
            y += self.step_px * math.sin(th)
        steps = self.step_px * np.stack([np.cos(theta), np.sin(theta)], axis=1)
        pts = np.concatenate([start[None], start + np.cumsum(steps, axis=0)])
        widths = width * np.exp(-taper * cfg.step * np.arange(n + 1))
        keep = self._truncate(pts, widths, leave_disc=True)
        return _Path(pts[:keep], widths[:keep])

    def arcade(self, *, height: float, width: float, upper: bool, offset: float) -> _Path:
        """A temporal arcade: a parabola from the disc centre, passing ``height`` DD beside the fovea."""
        lay, cfg = self.layout, self.cfg
        fovea_u = math.dist(lay.disc, lay.fovea) / self.dd
        # u = a v² + b v: leaves the disc centre at slope b, opens towards the fovea, passes (fovea_u, height).
        b = _uniform(self.rng, cfg.arcade_slope)
        a = max(fovea_u - b * height, 0.1 * fovea_u) / height**2
        v = np.linspace(0.0, 4.0 * height, 4000)
        u = a * v**2 + b * v
        # Uniform arc-length resampling, then a smooth wobble across the curve.
        seg = np.hypot(np.diff(u), np.diff(v))
        s = np.concatenate([[0.0], np.cumsum(seg)])
        s_new = np.arange(0.0, s[-1], cfg.step)
        u, v = np.interp(s_new, s, u), np.interp(s_new, s, v)
        wobble = cfg.arcade_wobble * _smooth_noise(self.rng, len(s_new), int(1.0 / cfg.step)) / 2.0
        normal_u, normal_v = np.gradient(v), -np.gradient(u)  # a normal to the curve
        norm = np.hypot(normal_u, normal_v) + 1e-9
        ramp = np.clip(s_new / 1.0, 0.0, 1.0)  # no wobble where the vessel leaves the disc
        u = u + offset + ramp * wobble * normal_u / norm
        v = v + ramp * wobble * normal_v / norm
        pts = self.frame.to_px(u, v if upper else -v)
        widths = width * np.exp(-cfg.arcade_taper * s_new)
        keep = self._truncate(pts, widths, leave_disc=False)
        return _Path(pts[:keep], widths[:keep])

    def branch_out(self, path: _Path, depth: int) -> None:
        """Add side branches along ``path`` (reducing its width after each), then recurse into them."""
        cfg, rng = self.cfg, self.rng
        if depth > cfg.max_depth or len(path.points) < 3:
            self.paths.append(path)
            return

        def spacing_px() -> float:
            return _uniform(rng, cfg.branch_spacing) * self.dd

        seg = np.hypot(*np.diff(path.points, axis=0).T)
        arclen = np.concatenate([[0.0], np.cumsum(seg)])
        children: list[tuple[np.ndarray, float, float]] = []
        at = (cfg.branch_start * self.dd) if depth == 0 else spacing_px() * 0.7
        while at < arclen[-1]:
            i = int(np.searchsorted(arclen, at))
            if i >= len(path.points) - 1:
                break
            w = path.widths[i]
            child_w = w * _uniform(rng, cfg.branch_ratio)
            if child_w >= self.min_w:
                d = path.points[i + 1] - path.points[i]
                heading = math.atan2(d[1], d[0])
                turn = math.radians(_uniform(rng, cfg.branch_angle)) * (1 if rng.random() < 0.5 else -1)
                children.append((path.points[i].copy(), heading + turn, child_w))
                k = cfg.murray_exponent
                remaining = max(w**k - child_w**k, 0.0) ** (1.0 / k)
                path.widths[i:] *= max(remaining, 0.5 * w) / w
            at += spacing_px()
        keep = self._truncate(path.points, path.widths, leave_disc=False) if depth > 0 else len(path.points)
        self.paths.append(_Path(path.points[: max(keep, 2)], path.widths[: max(keep, 2)]))
        for start, heading, width in children:
            child = self.walk(start, heading, width, tortuosity=self.tortuosity(width), taper=cfg.branch_taper)
            if len(child.points) >= 2:
                self.branch_out(child, depth + 1)

    def build(self) -> list[_Path]:
        cfg, rng, lay = self.cfg, self.rng, self.layout
        vein = _uniform(rng, cfg.vein_width) * self.dd
        for upper in (True, False):
            height = _uniform(rng, cfg.arcade_height)
            artery = vein * _uniform(rng, cfg.artery_vein_ratio)
            a_height = height * _uniform(rng, cfg.artery_course)
            for h, w, off in ((height, vein, 0.0), (a_height, artery, cfg.artery_offset)):
                path = self.arcade(height=h, width=w, upper=upper, offset=off * (1 if rng.random() < 0.5 else -1))
                self.arcades.append(_Path(path.points.copy(), path.widths.copy()))
                self.branch_out(path, 0)
        # Nasal trunks: up and down, away from the fovea.
        nasal = math.atan2(-self.frame.e[1], -self.frame.e[0])
        up = math.atan2(self.frame.n[1], self.frame.n[0])
        origin = np.asarray(lay.disc)
        for sign in (1.0, -1.0):
            for w in (vein, vein * _uniform(rng, cfg.artery_vein_ratio)):
                angle = math.radians(_uniform(rng, cfg.nasal_angle))
                # Rotate from nasal towards up (sign +1) or down (sign -1).
                toward_up = math.copysign(1.0, math.sin(up - nasal))
                heading = nasal + sign * toward_up * angle
                path = self.walk(origin, heading, w * _uniform(rng, cfg.nasal_width),
                                 tortuosity=cfg.tortuosity, taper=cfg.branch_taper * 0.6)
                self.branch_out(path, 1)
        # Small papillomacular vessels from the disc's temporal rim towards the fovea.
        to_fovea = math.atan2(self.frame.e[1], self.frame.e[0])
        for _ in range(_count(rng, cfg.papillomacular)):
            heading = to_fovea + math.radians(rng.uniform(-cfg.papillomacular_spread, cfg.papillomacular_spread))
            start = origin + self.dd / 2.0 * np.array([math.cos(heading), math.sin(heading)])  # on the rim
            path = self.walk(start, heading, _uniform(rng, cfg.papillomacular_width) * self.dd,
                             tortuosity=cfg.tortuosity, taper=cfg.branch_taper)
            self.branch_out(path, 2)
        return self.paths


# --- drawing ---------------------------------------------------------------------------------------


class _Canvas:
    """A supersampled binary canvas: draw at ``k``× then area-average down and threshold at ½."""

    def __init__(self, size: int, k: int) -> None:
        self.size, self.k = size, k
        self.buf = np.zeros((size * k, size * k), np.uint8)

    def _px(self, pts: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(pts) * self.k + (self.k - 1) / 2.0).astype(np.int32)

    def path(self, path: _Path, *, min_px: float) -> None:
        """A polyline whose thickness follows ``path.widths`` (output pixels)."""
        if len(path.points) < 2:
            return
        pts = self._px(path.points)
        thick = np.maximum(np.round(np.maximum(path.widths, min_px) * self.k), 1).astype(int)
        cuts = np.flatnonzero(np.diff(thick)) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [len(pts)]])
        for a, b in zip(starts, ends):
            seg = pts[a : min(b + 1, len(pts))]
            if len(seg) >= 2:
                cv2.polylines(self.buf, [seg], False, 255, int(thick[a]), cv2.LINE_8)

    def polygon(self, pts: np.ndarray) -> None:
        cv2.fillPoly(self.buf, [self._px(pts)], 255, cv2.LINE_8)

    def ellipse(self, center: np.ndarray, axes: tuple[float, float], angle_deg: float) -> None:
        c = self._px(center)
        ax = (max(1, round(axes[0] * self.k)), max(1, round(axes[1] * self.k)))
        cv2.ellipse(self.buf, (int(c[0]), int(c[1])), ax, angle_deg, 0, 360, 255, -1, cv2.LINE_8)

    def circle(self, center: np.ndarray, radius: float) -> None:
        c = self._px(center)
        cv2.circle(self.buf, (int(c[0]), int(c[1])), max(1, round(radius * self.k)), 255, -1, cv2.LINE_8)

    def mask(self) -> np.ndarray:
        if self.k == 1:
            return self.buf > 0
        small = cv2.resize(self.buf, (self.size, self.size), interpolation=cv2.INTER_AREA)
        return small >= 128


def _blob(rng: np.random.Generator, center: np.ndarray, radius: float, *, roughness: float = 0.25,
          vertices: int = 14, aspect: float = 1.0, angle: float = 0.0) -> np.ndarray:
    """An irregular closed polygon (``(vertices, 2)`` px) around ``center``: a smooth noisy ellipse."""
    t = np.linspace(0.0, 2.0 * math.pi, vertices, endpoint=False)
    # Low harmonics only, so the outline is lumpy rather than spiky.
    r = np.ones(vertices)
    for h in (2, 3, 4):
        r += roughness / h * rng.standard_normal() * np.cos(h * t + rng.uniform(0, 2 * math.pi))
    r = np.clip(r, 0.45, 1.6) * radius
    x, y = r * np.cos(t) * aspect, r * np.sin(t)
    ca, sa = math.cos(angle), math.sin(angle)
    return center + np.stack([x * ca - y * sa, x * sa + y * ca], axis=1)


# --- lesions ---------------------------------------------------------------------------------------


class _LesionPainter:
    """Places the grade's lesions, each class on its own canvas."""

    def __init__(self, rng: np.random.Generator, layout: PhantomLayout, cfg: PhantomConfig,
                 tree: _TreeBuilder) -> None:
        self.rng, self.layout, self.cfg, self.tree = rng, layout, cfg, tree
        self.frame = tree.frame
        self.dd = layout.dd
        self.canvases: dict[int, _Canvas] = {}
        self.ma_centres: list[np.ndarray] = []

    def canvas(self, cls: int) -> _Canvas:
        if cls not in self.canvases:
            fine = cls in (labels.NEOVASCULARISATION, labels.IRMA)  # thin strands need the vessels' precision
            k = self.cfg.supersample if fine else self.cfg.lesion_supersample
            self.canvases[cls] = _Canvas(self.layout.size, k)
        return self.canvases[cls]

    def _ok(self, pts: np.ndarray) -> np.ndarray:
        """Candidates inside the FOV (with a margin) and off the optic disc."""
        lay, cfg = self.layout, self.cfg
        r = np.hypot(*(pts - np.asarray(lay.center)).T)
        off_disc = np.hypot(*(pts - np.asarray(lay.disc)).T) > cfg.lesion_disc_clearance * self.dd
        return (r < lay.fov_radius - cfg.lesion_edge_margin * self.dd) & off_disc

    def points(self, n: int, *, around: np.ndarray | None = None, spread: float = 0.0,
               posterior: float = 0.0) -> np.ndarray:
        """``n`` lesion centres (px): a share ``posterior`` around the fovea, the rest uniform in the FOV."""
        lay = self.layout
        out = np.zeros((0, 2))
        for _ in range(20):  # rejection sampling; the accepted share is large, so this ends quickly
            m = 3 * n + 8
            if around is not None:
                cand = around + self.rng.normal(0.0, spread * self.dd, (m, 2))
            else:
                ang = self.rng.uniform(0, 2 * math.pi, m)
                rad = lay.fov_radius * np.sqrt(self.rng.random(m))
                cand = np.asarray(lay.center) + rad[:, None] * np.stack([np.cos(ang), np.sin(ang)], 1)
                near = self.rng.random(m) < posterior
                cand[near] = np.asarray(lay.fovea) + self.rng.normal(0.0, self.cfg.posterior_spread * self.dd,
                                                                     (int(near.sum()), 2))
            out = np.concatenate([out, cand[self._ok(cand)]])
            if len(out) >= n:
                break
        return out[:n]

    # Microaneurysms: small round dots.
    def microaneurysms(self, n: int) -> None:
        if n <= 0:
            return
        cv = self.canvas(labels.MICROANEURYSM)
        pts = self.points(n, posterior=self.cfg.posterior_fraction)
        for p, d in zip(pts, _log_uniform(self.rng, self.cfg.ma_diameter, len(pts))):
            cv.circle(p, d * self.dd / 2.0)
        self.ma_centres.extend(pts)

    # Haemorrhages: dot/blot (irregular) and flame (elongated along the nerve fibres).
    def haemorrhages(self, n: int, flame_fraction: float) -> None:
        if n <= 0:
            return
        cfg, rng = self.cfg, self.rng
        cv = self.canvas(labels.HAEMORRHAGE)
        flame = rng.random(n) < flame_fraction
        n_flame = int(flame.sum())
        blots = self.points(n - n_flame, posterior=cfg.posterior_fraction)
        lo, hi = cfg.he_diameter
        sizes = lo * (hi / lo) ** (rng.random(len(blots)) ** cfg.he_size_skew)
        for p, d in zip(blots, sizes):
            cv.polygon(_blob(rng, p, d * self.dd / 2.0, roughness=0.35, aspect=_uniform(rng, (1.0, 1.4)),
                             angle=rng.uniform(0, math.pi)))
            if d > 0.2 and rng.random() < 0.5:  # blots are often confluent
                q = p + rng.normal(0, 0.25 * d * self.dd, 2)
                cv.polygon(_blob(rng, q, 0.6 * d * self.dd / 2.0, roughness=0.3))
        # Flames lie in the nerve-fibre layer, most often around the disc and along the arcades.
        flames = self.points(n_flame, around=np.asarray(self.layout.disc), spread=1.6)
        angles = self.frame.fibre_angle(flames) if len(flames) else []
        for p, a in zip(flames, angles):
            length = _uniform(rng, cfg.flame_length) * self.dd
            width = length / _uniform(rng, cfg.flame_aspect)
            cv.polygon(_blob(rng, p, width / 2.0, roughness=0.3, vertices=18,
                             aspect=length / width, angle=float(a)))

    # Hard exudates: sharp yellow spots in clusters or circinate rings near the fovea.
    def exudates(self, groups: int) -> None:
        cfg, rng = self.cfg, self.rng
        cv = self.canvas(labels.HARD_EXUDATE)
        for _ in range(groups):
            ang = rng.uniform(0, 2 * math.pi)
            dist = _uniform(rng, cfg.ex_distance) * self.dd
            centre = np.asarray(self.layout.fovea) + dist * np.array([math.cos(ang), math.sin(ang)])
            n = _count(rng, cfg.ex_spots)
            if rng.random() < cfg.ex_ring_probability:
                radius = _uniform(rng, cfg.ex_ring_radius) * self.dd
                arc = math.radians(_uniform(rng, cfg.ex_ring_arc))
                t = rng.uniform(0, 2 * math.pi) + rng.uniform(0, arc, n)
                rr = radius * (1.0 + rng.normal(0, 0.1, n))
                spots = centre + rr[:, None] * np.stack([np.cos(t), np.sin(t)], 1)
            else:
                spots = centre + rng.normal(0, _uniform(rng, cfg.ex_cluster_spread) * self.dd, (n, 2))
            spots = spots[self._ok(spots)]
            for p, d in zip(spots, _log_uniform(rng, cfg.ex_diameter, len(spots))):
                cv.polygon(_blob(rng, p, d * self.dd / 2.0, roughness=0.3, vertices=10))

    # Cotton-wool spots: pale, fluffy, near the arcades, elongated along the fibres.
    def cotton_wool(self, n: int) -> None:
        cfg, rng = self.cfg, self.rng
        arcades = [a for a in self.tree.arcades if len(a.points) > 10]
        if n <= 0 or not arcades:
            return
        cv = self.canvas(labels.SOFT_EXUDATE)
        placed = 0
        for _ in range(10 * n):
            if placed >= n:
                break
            arc = arcades[int(rng.integers(len(arcades)))]
            i = int(rng.integers(len(arc.points) // 6, len(arc.points)))
            p = arc.points[i] + rng.normal(0, cfg.se_arcade_spread * self.dd, 2)
            if not self._ok(p[None])[0]:
                continue
            d = _uniform(rng, cfg.se_diameter) * self.dd
            angle = float(self.frame.fibre_angle(p[None])[0])
            cv.polygon(_blob(rng, p, d / 2.0 / 1.3, roughness=0.3, aspect=1.3, angle=angle))
            for _ in range(int(rng.integers(1, 4))):  # fluffy lobes
                q = p + rng.normal(0, 0.2 * d, 2)
                cv.polygon(_blob(rng, q, _uniform(rng, (0.25, 0.4)) * d, roughness=0.35))
            placed += 1

    def _tangle(self, cls: int, centre: np.ndarray, radius: float, strands: int, width: Range,
                loop: Range, tortuosity: float) -> None:
        """Fine curly strands that stay within ``radius`` px of ``centre``: NV and IRMA."""
        cfg, rng, tree = self.cfg, self.rng, self.tree
        cv = self.canvas(cls)
        # Strands too fine for the image are drawn at the minimum width: draw fewer of them so that a
        # small image's tangle covers about the same share of its area instead of a solid blot.
        thinning = min(1.0, float(np.mean(width)) * self.dd / cfg.min_vessel_px)
        strands = max(2, round(strands * thinning))
        for _ in range(strands):
            r0 = radius * math.sqrt(rng.random()) * 0.7
            a0 = rng.uniform(0, 2 * math.pi)
            start = centre + r0 * np.array([math.cos(a0), math.sin(a0)])
            loop_r = _uniform(rng, loop) * radius
            curvature = (1 if rng.random() < 0.5 else -1) * self.dd / loop_r  # rad per DD
            length = rng.uniform(1.0, 2.5) * math.pi * loop_r / self.dd
            n = max(2, int(length / cfg.step))
            dtheta = tortuosity * math.sqrt(cfg.step) * _smooth_noise(rng, n, 2) + curvature * cfg.step
            theta = rng.uniform(0, 2 * math.pi) + np.cumsum(dtheta)
            pts = np.concatenate([start[None], start + np.cumsum(
                tree.step_px * np.stack([np.cos(theta), np.sin(theta)], 1), axis=0)])
            inside = np.hypot(*(pts - centre).T) <= radius
            stop = np.flatnonzero(~inside)
            pts = pts[: stop[0] if stop.size else len(pts)]
            w = _uniform(rng, width) * self.dd
            cv.path(_Path(pts, np.full(len(pts), w)), min_px=cfg.min_vessel_px)

    # IRMA: tortuous small-vessel patches beside branch vessels, away from the fovea.
    def irma(self, n: int) -> None:
        cfg, rng, lay = self.cfg, self.rng, self.layout
        thin = [p for p in self.tree.paths if len(p.points) > 4]
        for _ in range(n):
            for _ in range(20):
                path = thin[int(rng.integers(len(thin)))]
                p = path.points[int(rng.integers(len(path.points)))]
                if math.dist(p, lay.fovea) > cfg.irma_fovea_clearance * self.dd and self._ok(p[None])[0]:
                    break
            self._tangle(labels.IRMA, p, _uniform(rng, cfg.irma_radius) * self.dd, _count(rng, cfg.irma_segments),
                         cfg.irma_width, (0.5, 1.2), cfg.irma_tortuosity)

    # Neovascularisation: tangles of fine looping vessels at the disc and/or on the arcades.
    def neovascularisation(self, *, at_disc: bool, elsewhere: int) -> None:
        cfg, rng = self.cfg, self.rng
        if at_disc:
            self._tangle(labels.NEOVASCULARISATION, np.asarray(self.layout.disc),
                         _uniform(rng, cfg.nvd_radius) * self.dd, _count(rng, cfg.nv_strands),
                         cfg.nv_width, cfg.nv_loop, cfg.nv_tortuosity)
        arcades = [a for a in self.tree.arcades if len(a.points) > 10]
        for _ in range(elsewhere if arcades else 0):
            arc = arcades[int(rng.integers(len(arcades)))]
            s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(arc.points, axis=0).T))]) / self.dd
            ok = np.flatnonzero((s > cfg.nve_along_arcade[0]) & (s < cfg.nve_along_arcade[1]))
            i = int(ok[rng.integers(len(ok))]) if ok.size else len(arc.points) // 2
            radius = _uniform(rng, cfg.nve_radius) * self.dd
            self._tangle(labels.NEOVASCULARISATION, arc.points[i], radius,
                         max(4, int(_count(rng, cfg.nv_strands) * radius / (0.7 * self.dd))),
                         cfg.nv_width, cfg.nv_loop, cfg.nv_tortuosity)


# --- label map -------------------------------------------------------------------------------------


def generate_label_map(*, grade: int, rng: np.random.Generator, size: int = 512,
                       config: PhantomConfig = PhantomConfig(), layout: PhantomLayout | None = None) -> np.ndarray:
    """Draw a phantom label map, ``(size, size)`` uint8 class indices (see :mod:`fundus_studio.labels`).

    ``layout`` fixes the anatomy's positions (default: drawn from ``rng`` with :func:`sample_layout`,
    which is the first thing drawn, so a caller can reproduce it from an identical generator).
    """
    grade, size = _check_grade(grade), _check_size(size)
    cfg = config
    layout = layout if layout is not None else sample_layout(rng=rng, size=size, config=cfg)
    if layout.size != size:
        raise InputError(f"layout is for {layout.size}-px phantoms, asked for {size} px")
    shape = (size, size)

    # Field of view, disc.
    fov = np.zeros(shape, np.uint8)
    cv2.circle(fov, _fixed(layout.center), round(layout.fov_radius * _SHIFT_SCALE), 1, -1, cv2.LINE_8, _SHIFT)
    fov = fov.astype(bool)
    disc = np.zeros(shape, np.uint8)
    axes = (round(layout.dd / 2 * _SHIFT_SCALE), round(layout.dd / 2 * layout.disc_aspect * _SHIFT_SCALE))
    tilt = float(rng.uniform(-cfg.disc_tilt, cfg.disc_tilt))
    cv2.ellipse(disc, _fixed(layout.disc), axes, tilt, 0, 360, 1, -1, cv2.LINE_8, _SHIFT)

    # Vessel tree.
    tree = _TreeBuilder(rng, layout, cfg)
    vessels = _Canvas(size, cfg.supersample)
    for path in tree.build():
        vessels.path(path, min_px=cfg.min_vessel_px)

    # Lesions of the grade.
    paint = _LesionPainter(rng, layout, cfg, tree)
    paint.microaneurysms(_count(rng, cfg.ma_count[grade]))
    paint.haemorrhages(_count(rng, cfg.he_count[grade]), cfg.he_flame_fraction[grade])
    if rng.random() < cfg.ex_probability[grade]:
        paint.exudates(max(1, _count(rng, cfg.ex_groups[grade])))
    if rng.random() < cfg.se_probability[grade]:
        paint.cotton_wool(max(1, _count(rng, cfg.se_count[grade])))
    if rng.random() < cfg.irma_probability[grade]:
        paint.irma(max(1, _count(rng, cfg.irma_count[grade])))
    at_disc = rng.random() < cfg.nvd_probability[grade]
    elsewhere = _count(rng, cfg.nve_count) if rng.random() < cfg.nve_probability[grade] else 0
    if cfg.nvd_probability[grade] > 0 and not at_disc and not elsewhere:
        at_disc = True  # proliferative DR has NV somewhere: fall back to the disc
    if at_disc or elsewhere:
        paint.neovascularisation(at_disc=at_disc, elsewhere=elsewhere)

    masks: dict[int, np.ndarray] = {labels.RETINA: fov, labels.OPTIC_DISC: disc.astype(bool) & fov,
                                    labels.VESSEL: vessels.mask() & fov}
    faz = np.zeros(shape, np.uint8)
    cv2.circle(faz, _fixed(layout.fovea), round(layout.faz_radius * _SHIFT_SCALE), 1, -1, cv2.LINE_8, _SHIFT)
    for cls, canvas in paint.canvases.items():
        m = canvas.mask() & fov
        if cls in (labels.NEOVASCULARISATION, labels.IRMA):
            m &= ~faz.astype(bool)  # new and abnormal vessels stay out of the avascular fovea too
        masks[cls] = m
    if paint.ma_centres:
        c = np.clip(np.floor(np.asarray(paint.ma_centres)).astype(int), 0, size - 1)
        ma = masks[labels.MICROANEURYSM]
        ma[c[:, 1], c[:, 0]] = fov[c[:, 1], c[:, 0]]  # the smallest MA keeps at least one pixel
    return labels.compose(masks, shape=shape, base=labels.OUTSIDE)


# cv2 drawing with sub-pixel precision: coordinates carry this many fractional bits.
_SHIFT: int = 4
_SHIFT_SCALE: float = float(1 << _SHIFT)


def _fixed(p: tuple[float, float] | np.ndarray) -> tuple[int, int]:
    """Pixel-centre coordinates → cv2 fixed-point coordinates for drawing with ``shift=_SHIFT``."""
    return (round(float(p[0]) * _SHIFT_SCALE), round(float(p[1]) * _SHIFT_SCALE))


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
    seed = _check_seed(seed)
    rng = _stream(seed, _PHOTO_STREAM)
    pc = config.photo
    h, w = label.shape
    shape = (h, w)
    lm = _landmarks(label, config)
    dd = lm.dd
    present = np.bincount(label.ravel(), minlength=labels.NUM_CLASSES) > 0

    # The image is built planar, (3, H, W): per-pixel arithmetic then runs along whole rows.
    # Illumination: exposure, colour cast, vignetting, a gentle gradient and choroidal texture.
    base = _rgb(pc.retina_rgb) * _uniform(rng, pc.brightness)
    base *= np.exp(rng.normal(0.0, pc.tint_sigma, 3)).astype(np.float32)[:, None, None]
    rx = ((np.arange(w, dtype=np.float32) - lm.center[0]) / lm.fov_radius)[None, :]
    ry = ((np.arange(h, dtype=np.float32) - lm.center[1]) / lm.fov_radius)[:, None]
    rr2 = np.minimum(rx**2 + ry**2, 1.0)
    ang = rng.uniform(0, 2 * math.pi)
    illum = 1.0 - _uniform(rng, pc.vignette) * rr2 ** (pc.vignette_power / 2.0)
    illum += pc.gradient * rng.uniform(0.3, 1.0) * (rx * math.cos(ang) + ry * math.sin(ang))
    scale = max(h, w) / (2.0 * lm.fov_radius)  # noise cells are counted across the FOV
    for amp, cells in zip(pc.texture, pc.texture_cells):
        illum += amp * _noise(rng, shape, int(cells * scale))
    # Macula: darker and browner (per-channel depth), the foveola darker still.
    mac = _gauss(shape, lm.fovea, pc.macula_sigma * dd)
    img = (illum * (1.0 - pc.foveola_depth * _gauss(shape, lm.fovea, pc.foveola_sigma * dd))) \
        * (base * (1.0 - mac * _rgb(pc.macula_depth)))

    # Optic disc: the disc region with vessel gaps closed, a temporal cup, a bright halo.
    cup_ratio = _uniform(rng, pc.cup_ratio)
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


# --- phantoms and datasets -------------------------------------------------------------------------


def generate_phantom(*, grade: int, seed: int, size: int = 512, config: PhantomConfig = PhantomConfig()) -> Phantom:
    """One phantom from ``seed``: ``render_photo(label, seed=seed)`` paints the photo of its label map."""
    grade, size, seed = _check_grade(grade), _check_size(size), _check_seed(seed)
    label = generate_label_map(grade=grade, rng=_stream(seed, _LABEL_STREAM), size=size, config=config)
    image = render_photo(label, seed=seed, config=config)
    return Phantom(label=label, image=image, grade=grade, seed=seed)


def write_phantoms(
    out: str | os.PathLike[str],
    *,
    count: int,
    grade: int | None,
    size: int = 512,
    seed: int = 0,
    progress: bool = True,
    config: PhantomConfig = PhantomConfig(),
) -> Path:
    """Write (or resume) a studio dataset of ``count`` phantoms and return its folder.

    Sample ``i`` is ``phantom-{i:06d}`` with seed :func:`sample_seed`\\ ``(seed, i)`` and grade
    ``grade``, or ``i % NUM_GRADES`` when ``grade`` is None. Samples already present are skipped, so
    re-running a command (or raising ``count``) only adds what is missing; a folder written with a
    different seed, grade or config is refused.
    """
    from tqdm.auto import tqdm

    from fundus_studio.dataset import DatasetWriter

    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise InputError(f"count must be a positive integer, got {count!r}")
    if grade is not None:
        _check_grade(grade)
    size, seed = _check_size(size), _check_seed(seed)
    meta = {
        "generator": "fundus_studio.phantom",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "grade": grade,
        "config": config.to_dict(),
    }
    writer = DatasetWriter(out, size=size, created_by="fundus-studio phantom", meta=meta)
    old = writer.info.get("meta", {})
    for key in ("generator_version", "seed", "grade", "config"):
        if key in meta and old.get(key) != meta[key]:
            raise DatasetError(
                f"{writer.root}: holds phantoms written with a different {key} "
                f"({old.get(key)!r} there, {meta[key]!r} now); use a new folder to change it"
                if key != "config" else f"{writer.root}: holds phantoms written with a different config; "
                "use a new folder to change it"
            )
    done = writer.done_ids
    todo = [i for i in range(count) if f"phantom-{i:06d}" not in done]
    with tqdm(total=count, initial=count - len(todo), disable=not progress, unit="phantom",
              desc=f"phantoms → {writer.root}") as bar:
        for i in todo:
            g = grade if grade is not None else i % labels.NUM_GRADES
            s = sample_seed(seed, i)
            ph = generate_phantom(grade=g, seed=s, size=size, config=config)
            writer.add(sample_id=f"phantom-{i:06d}", image=ph.image, label=ph.label, grade=g,
                       source="phantom", seed=s)
            bar.update(1)
    return writer.root
