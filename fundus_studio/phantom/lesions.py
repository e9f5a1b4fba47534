"""A phantom's lesions: where each lesion of a DR grade goes and what shape it takes (DATA.md, "DR grades
and phantom priors"). Each class is drawn on its own supersampled canvas.
"""

from __future__ import annotations

import math

import numpy as np

from fundus_studio import labels
from fundus_studio.errors import InputError
from fundus_studio.phantom.anatomy import TreeBuilder
from fundus_studio.phantom.config import PhantomConfig, PhantomLayout, Range, check_seed
from fundus_studio.phantom.draw import Canvas, Curve, blob, int_in, log_uniform, smooth_noise, uniform

# NV away from the disc draws nv_strands strands in a tangle of this radius (DD), and fewer or more in
# proportion to its radius (but at least NVE_MIN_STRANDS), so that a small tangle is as sparse as a large one.
NVE_REFERENCE_RADIUS: float = 0.7
NVE_MIN_STRANDS: int = 4


# --- one lesion each: the shapes, reusable by any code that draws lesions ---------------------------
# Sizes are in disc diameters (DD) with ``dd`` the disc diameter in pixels, unless they say pixels;
# centres are ``(x, y)`` pixels. Each draws on a :class:`Canvas` with the generator it is given.


def microaneurysm(cv: Canvas, centre: np.ndarray, diameter: float, *, dd: float) -> None:
    """A small round dot."""
    cv.circle(centre, diameter * dd / 2.0)


def blot_haemorrhage(cv: Canvas, rng: np.random.Generator, centre: np.ndarray, diameter: float, *,
                     dd: float) -> None:
    """A dot/blot haemorrhage: an irregular oval; large ones often with a confluent second blot."""
    cv.polygon(blob(rng, centre, diameter * dd / 2.0, roughness=0.35, aspect=uniform(rng, (1.0, 1.4)),
                    angle=rng.uniform(0, math.pi)))
    if diameter > 0.2 and rng.random() < 0.5:
        q = centre + rng.normal(0, 0.25 * diameter * dd, 2)
        cv.polygon(blob(rng, q, 0.6 * diameter * dd / 2.0, roughness=0.3))


def flame_haemorrhage(cv: Canvas, rng: np.random.Generator, centre: np.ndarray, *, length: float, width: float,
                      angle: float) -> None:
    """A flame haemorrhage: ``length`` × ``width`` pixels, long axis at ``angle`` radians (the fibres')."""
    cv.polygon(blob(rng, centre, width / 2.0, roughness=0.3, vertices=18, aspect=length / width, angle=angle))


def hard_exudate(cv: Canvas, rng: np.random.Generator, centre: np.ndarray, diameter: float, *, dd: float) -> None:
    """One sharp-edged exudate spot (a group is many of these)."""
    cv.polygon(blob(rng, centre, diameter * dd / 2.0, roughness=0.3, vertices=10))


def cotton_wool_spot(cv: Canvas, rng: np.random.Generator, centre: np.ndarray, diameter_px: float, *,
                     angle: float) -> None:
    """A cotton-wool spot: an oval elongated at ``angle`` radians plus one to three fluffy lobes."""
    cv.polygon(blob(rng, centre, diameter_px / 2.0 / 1.3, roughness=0.3, aspect=1.3, angle=angle))
    for _ in range(int(rng.integers(1, 4))):
        q = centre + rng.normal(0, 0.2 * diameter_px, 2)
        cv.polygon(blob(rng, q, uniform(rng, (0.25, 0.4)) * diameter_px, roughness=0.35))


def tangle(cv: Canvas, rng: np.random.Generator, centre: np.ndarray, radius: float, *, strands: int, width: Range,
           loop: Range, tortuosity: float, dd: float, step: float, step_px: float, min_px: float) -> None:
    """Fine curly strands that stay within ``radius`` px of ``centre``: NV and IRMA.

    ``width`` and ``step`` (between vertices) in DD, ``loop`` the loop radius / ``radius``,
    ``tortuosity`` in rad per √DD; strands are drawn at least ``min_px`` pixels wide.
    """
    # Strands too fine for the image are drawn at the minimum width: draw fewer of them so that a
    # small image's tangle covers about the same share of its area instead of a solid blot.
    thinning = min(1.0, float(np.mean(width)) * dd / min_px)
    strands = max(2, round(strands * thinning))
    for _ in range(strands):
        r0 = radius * math.sqrt(rng.random()) * 0.7
        a0 = rng.uniform(0, 2 * math.pi)
        start = centre + r0 * np.array([math.cos(a0), math.sin(a0)])
        loop_r = uniform(rng, loop) * radius
        curvature = (1 if rng.random() < 0.5 else -1) * dd / loop_r  # rad per DD
        length = rng.uniform(1.0, 2.5) * math.pi * loop_r / dd
        n = max(2, int(length / step))
        dtheta = tortuosity * math.sqrt(step) * smooth_noise(rng, n, 2) + curvature * step
        theta = rng.uniform(0, 2 * math.pi) + np.cumsum(dtheta)
        pts = np.concatenate([start[None], start + np.cumsum(
            step_px * np.stack([np.cos(theta), np.sin(theta)], 1), axis=0)])
        inside = np.hypot(*(pts - centre).T) <= radius
        stop = np.flatnonzero(~inside)
        pts = pts[: stop[0] if stop.size else len(pts)]
        w = uniform(rng, width) * dd
        cv.path(Curve(pts, np.full(len(pts), w)), min_px=min_px)


# --- a grade's lesions ----------------------------------------------------------------------------


class LesionPainter:
    """Places the grade's lesions, each class on its own canvas."""

    def __init__(self, rng: np.random.Generator, layout: PhantomLayout, cfg: PhantomConfig,
                 tree: TreeBuilder) -> None:
        self.rng, self.layout, self.cfg, self.tree = rng, layout, cfg, tree
        self.frame = tree.frame
        self.dd = layout.dd
        self.canvases: dict[int, Canvas] = {}
        self.ma_centres: list[np.ndarray] = []

    def canvas(self, cls: int) -> Canvas:
        if cls not in self.canvases:
            fine = cls in (labels.NEOVASCULARISATION, labels.IRMA)  # thin strands need the vessels' precision
            k = self.cfg.supersample if fine else self.cfg.lesion_supersample
            self.canvases[cls] = Canvas(self.layout.size, k)
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
        for p, d in zip(pts, log_uniform(self.rng, self.cfg.ma_diameter, len(pts))):
            microaneurysm(cv, p, d, dd=self.dd)
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
            blot_haemorrhage(cv, rng, p, d, dd=self.dd)
        # Flames lie in the nerve-fibre layer, most often around the disc and along the arcades.
        flames = self.points(n_flame, around=np.asarray(self.layout.disc), spread=1.6)
        angles = self.frame.fibre_angle(flames) if len(flames) else []
        for p, a in zip(flames, angles):
            length = uniform(rng, cfg.flame_length) * self.dd
            flame_haemorrhage(cv, rng, p, length=length, width=length / uniform(rng, cfg.flame_aspect), angle=float(a))

    # Hard exudates: sharp yellow spots in clusters or circinate rings near the fovea.
    def exudates(self, groups: int) -> None:
        cfg, rng = self.cfg, self.rng
        cv = self.canvas(labels.HARD_EXUDATE)
        for _ in range(groups):
            ang = rng.uniform(0, 2 * math.pi)
            dist = uniform(rng, cfg.ex_distance) * self.dd
            centre = np.asarray(self.layout.fovea) + dist * np.array([math.cos(ang), math.sin(ang)])
            n = int_in(rng, cfg.ex_spots)
            if rng.random() < cfg.ex_ring_probability:
                radius = uniform(rng, cfg.ex_ring_radius) * self.dd
                arc = math.radians(uniform(rng, cfg.ex_ring_arc))
                t = rng.uniform(0, 2 * math.pi) + rng.uniform(0, arc, n)
                rr = radius * (1.0 + rng.normal(0, 0.1, n))
                spots = centre + rr[:, None] * np.stack([np.cos(t), np.sin(t)], 1)
            else:
                spots = centre + rng.normal(0, uniform(rng, cfg.ex_cluster_spread) * self.dd, (n, 2))
            spots = spots[self._ok(spots)]
            for p, d in zip(spots, log_uniform(rng, cfg.ex_diameter, len(spots))):
                hard_exudate(cv, rng, p, d, dd=self.dd)

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
            d = uniform(rng, cfg.se_diameter) * self.dd
            cotton_wool_spot(cv, rng, p, d, angle=float(self.frame.fibre_angle(p[None])[0]))
            placed += 1

    def _tangle(self, cls: int, centre: np.ndarray, radius: float, strands: int, width: Range,
                loop: Range, tortuosity: float) -> None:
        tangle(self.canvas(cls), self.rng, centre, radius, strands=strands, width=width, loop=loop,
               tortuosity=tortuosity, dd=self.dd, step=self.cfg.step, step_px=self.tree.step_px,
               min_px=self.cfg.min_vessel_px)

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
            self._tangle(labels.IRMA, p, uniform(rng, cfg.irma_radius) * self.dd, int_in(rng, cfg.irma_segments),
                         cfg.irma_width, (0.5, 1.2), cfg.irma_tortuosity)

    # Neovascularisation: tangles of fine looping vessels at the disc and/or on the arcades.
    def neovascularisation(self, *, at_disc: bool, elsewhere: int) -> None:
        cfg, rng = self.cfg, self.rng
        if at_disc:
            self._tangle(labels.NEOVASCULARISATION, np.asarray(self.layout.disc),
                         uniform(rng, cfg.nvd_radius) * self.dd, int_in(rng, cfg.nv_strands),
                         cfg.nv_width, cfg.nv_loop, cfg.nv_tortuosity)
        arcades = [a for a in self.tree.arcades if len(a.points) > 10]
        for _ in range(elsewhere if arcades else 0):
            arc = arcades[int(rng.integers(len(arcades)))]
            s = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(arc.points, axis=0).T))]) / self.dd
            ok = np.flatnonzero((s > cfg.nve_along_arcade[0]) & (s < cfg.nve_along_arcade[1]))
            i = int(ok[rng.integers(len(ok))]) if ok.size else len(arc.points) // 2
            radius = uniform(rng, cfg.nve_radius) * self.dd
            self._tangle(labels.NEOVASCULARISATION, arc.points[i], radius,
                         max(NVE_MIN_STRANDS, int(int_in(rng, cfg.nv_strands) * radius / (NVE_REFERENCE_RADIUS * self.dd))),
                         cfg.nv_width, cfg.nv_loop, cfg.nv_tortuosity)


# --- one lesion stamped into a label map -------------------------------------------------------------

# What :func:`draw_lesion` can draw, and the class each shape is painted as.
LESION_KINDS: dict[str, int] = {
    "microaneurysm": labels.MICROANEURYSM,
    "blot_haemorrhage": labels.HAEMORRHAGE,
    "flame_haemorrhage": labels.HAEMORRHAGE,
    "hard_exudate": labels.HARD_EXUDATE,
    "cotton_wool_spot": labels.SOFT_EXUDATE,
    "neovascularisation": labels.NEOVASCULARISATION,
    "irma": labels.IRMA,
}


def nominal_disc_diameter(size: int, config: PhantomConfig = PhantomConfig()) -> float:
    """The disc diameter (pixels) of an average phantom of side ``size``: the unit lesion sizes scale with."""
    return float(np.mean(config.disc_fraction)) * float(np.mean(config.fov_radius)) * size


def draw_lesion(index_map: np.ndarray, kind: str, *, centre: tuple[float, float], diameter: float, seed: int,
                angle: float = 0.0, dd: float | None = None, strands: int | None = None,
                config: PhantomConfig = PhantomConfig()) -> np.ndarray:
    """One lesion of ``kind`` (a key of :data:`LESION_KINDS`) drawn into a copy of ``index_map``.

    Args:
        index_map: ``(H, W)`` uint8 class indices; it is not modified.
        kind: the lesion's shape, e.g. ``"blot_haemorrhage"``, ``"flame_haemorrhage"``, ``"irma"``.
        centre: ``(x, y)`` in pixels.
        diameter: the lesion's extent in pixels (a flame's length, a tangle's diameter).
        seed: the shape's seed (outline, lobes, strands): same seed, same lesion.
        angle: long-axis direction in radians for flames and cotton-wool spots (x to the right, y down).
        dd: disc diameter in pixels, which sets the width of NV/IRMA strands and when a blot gets a
            confluent neighbour (default: :func:`nominal_disc_diameter` of the map's side).
        strands: NV/IRMA strands in the tangle (default: the phantoms' mean count, whatever its size).

    Returns:
        ``(H, W)`` uint8: the map with the lesion's pixels set to its class inside the field of view
        (pixels that are not ``outside``); shapes are those of the phantom generator.
    """
    index_map = labels.check_index_map(index_map, what="draw_lesion map")
    if kind not in LESION_KINDS:
        raise InputError(f"unknown lesion kind {kind!r}; known: {', '.join(LESION_KINDS)}")
    if not diameter > 0:
        raise InputError(f"lesion diameter must be positive, got {diameter!r}")
    cfg = config
    h, w = index_map.shape
    dd = nominal_disc_diameter(max(h, w), cfg) if dd is None else float(dd)
    if not dd > 0:
        raise InputError(f"disc diameter must be positive, got {dd!r}")
    rng = np.random.default_rng(np.random.SeedSequence(check_seed(seed)))
    c = np.asarray(centre, dtype=np.float64)
    cls = LESION_KINDS[kind]
    fine = cls in (labels.NEOVASCULARISATION, labels.IRMA)
    cv = Canvas(max(h, w), cfg.supersample if fine else cfg.lesion_supersample)
    if kind == "microaneurysm":
        microaneurysm(cv, c, diameter / dd, dd=dd)
    elif kind == "blot_haemorrhage":
        blot_haemorrhage(cv, rng, c, diameter / dd, dd=dd)
    elif kind == "flame_haemorrhage":
        flame_haemorrhage(cv, rng, c, length=diameter, width=diameter / float(np.mean(cfg.flame_aspect)), angle=angle)
    elif kind == "hard_exudate":
        hard_exudate(cv, rng, c, diameter / dd, dd=dd)
    elif kind == "cotton_wool_spot":
        cotton_wool_spot(cv, rng, c, diameter, angle=angle)
    else:
        nv = cls == labels.NEOVASCULARISATION
        if strands is None:
            strands = round(float(np.mean(cfg.nv_strands if nv else cfg.irma_segments)))
        elif strands < 1:
            raise InputError(f"a tangle needs at least one strand, got {strands!r}")
        tangle(cv, rng, c, diameter / 2.0, strands=strands,
               width=cfg.nv_width if nv else cfg.irma_width, loop=cfg.nv_loop if nv else (0.5, 1.2),
               tortuosity=cfg.nv_tortuosity if nv else cfg.irma_tortuosity, dd=dd, step=cfg.step,
               step_px=cfg.step * dd, min_px=cfg.min_vessel_px)
    mask = cv.mask()[:h, :w] & (index_map != labels.OUTSIDE)
    if kind == "microaneurysm":  # the smallest dot keeps its centre pixel, as in the phantoms
        x, y = int(math.floor(c[0])), int(math.floor(c[1]))
        if 0 <= x < w and 0 <= y < h:
            mask[y, x] = index_map[y, x] != labels.OUTSIDE
    out = index_map.copy()
    out[mask] = cls
    return out
