"""What a phantom is made of: its configuration (geometry, lesion statistics, the photo's appearance),
the layout of one phantom's anatomy, the finished :class:`Phantom`, and the seeds it is drawn from."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fundus_studio import labels
from fundus_studio.errors import InputError

Range = tuple[float, float]
IntRange = tuple[int, int]

# Smallest side the phantoms are drawn at; sides must be multiples of this (the U-Net's stride).
SIZE_MULTIPLE: int = 16
MIN_SIZE: int = 64
# Independent random streams derived from one sample seed: the label map and the photo's appearance
# must not share draws, so that re-rendering a label with the same seed gives the same photo.
LABEL_STREAM: int = 0
PHOTO_STREAM: int = 1
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


# --- checks and seeds ------------------------------------------------------------------------------


def check_grade(grade: int) -> int:
    if isinstance(grade, bool) or not isinstance(grade, (int, np.integer)) or not 0 <= grade < labels.NUM_GRADES:
        raise InputError(f"grade must be an integer 0..{labels.NUM_GRADES - 1}, got {grade!r}")
    return int(grade)


def check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < MIN_SIZE or size % SIZE_MULTIPLE:
        raise InputError(f"size must be a multiple of {SIZE_MULTIPLE} and at least {MIN_SIZE}, got {size!r}")
    return int(size)


def check_seed(seed: int, *, what: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"{what} must be a non-negative integer, got {seed!r}")
    return int(seed)


def sample_seed(seed: int, index: int) -> int:
    """The seed of sample ``index`` of a run with seed ``seed`` (a 63-bit integer)."""
    state = np.random.SeedSequence([check_seed(seed), check_seed(index, what="index")]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def random_stream(seed: int, which: int) -> np.random.Generator:
    """The generator of stream ``which`` (``LABEL_STREAM``, ``PHOTO_STREAM``) of a sample seed."""
    return np.random.default_rng(np.random.SeedSequence([check_seed(seed), which]))
