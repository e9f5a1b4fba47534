"""A phantom's anatomy: where the field of view, the optic disc and the fovea lie (:func:`sample_layout`)
and the vessel tree grown from the disc along the temporal arcades (:class:`TreeBuilder`).

Lengths are in disc diameters (DD) unless their names say pixels (DATA.md, "Geometry of a 45–50°
fundus photo").
"""

from __future__ import annotations

import math

import numpy as np

from fundus_studio.phantom.config import PhantomConfig, PhantomLayout
from fundus_studio.phantom.draw import Curve, int_in, smooth_noise, uniform

class Frame:
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
    radius = uniform(rng, cfg.fov_radius) * half
    dd = uniform(rng, cfg.disc_fraction) * 2.0 * radius
    side = -1.0 if rng.random() < 0.5 else 1.0  # -1: disc on the image's left (a left eye)
    jitter = rng.uniform(-cfg.fovea_jitter, cfg.fovea_jitter, 2) * radius
    fovea = np.array([half, half]) + jitter
    dist = uniform(rng, cfg.disc_to_fovea) * dd
    below = uniform(rng, cfg.fovea_below_disc) * dd
    disc = fovea + np.array([side * math.sqrt(dist**2 - below**2), -below])
    return PhantomLayout(
        size=size,
        center=(half, half),
        fov_radius=radius,
        disc=(float(disc[0]), float(disc[1])),
        dd=dd,
        disc_aspect=uniform(rng, cfg.disc_aspect),
        fovea=(float(fovea[0]), float(fovea[1])),
        faz_radius=uniform(rng, cfg.faz_radius) * dd,
    )


# --- vessel tree -----------------------------------------------------------------------------------


class TreeBuilder:
    """Grows the vessel tree: main trunks from the disc, then side branches, recursively."""

    def __init__(self, rng: np.random.Generator, layout: PhantomLayout, cfg: PhantomConfig) -> None:
        self.rng, self.layout, self.cfg = rng, layout, cfg
        self.frame = Frame(layout)
        self.dd = layout.dd
        self.step_px = cfg.step * layout.dd
        # Branches end where they get thinner than the anatomy's limit or than the image can show.
        self.min_w = max(cfg.min_vessel_width * layout.dd, cfg.min_visible_px)
        self.paths: list[Curve] = []
        self.arcades: list[Curve] = []

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
             taper: float, steer: float | None = None) -> Curve:
        """A smooth random-walk branch from ``start`` (px) with initial heading (rad) and width (px).

        The heading drifts at random and is pulled towards the local nerve-fibre direction (vessels
        and fibres both arch around the fovea), which gives the tree its arcuate flow.
        """
        cfg = self.cfg
        steer = cfg.fibre_steering if steer is None else steer
        length = min(cfg.max_branch_length, uniform(self.rng, cfg.length_per_width) * width / self.dd)
        n = max(2, int(length / cfg.step))
        if taper > 0 and width > self.min_w:  # no need to walk past where the width runs out
            n = min(n, int(math.log(width / self.min_w) / (taper * cfg.step)) + 2)
        noise = tortuosity * math.sqrt(cfg.step) * smooth_noise(self.rng, n, cfg.curve_smoothing, unit=False)
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
        return Curve(pts[:keep], widths[:keep])

    def arcade(self, *, height: float, width: float, upper: bool, offset: float) -> Curve:
        """A temporal arcade: a parabola from the disc centre, passing ``height`` DD beside the fovea."""
        lay, cfg = self.layout, self.cfg
        fovea_u = math.dist(lay.disc, lay.fovea) / self.dd
        # u = a v² + b v: leaves the disc centre at slope b, opens towards the fovea, passes (fovea_u, height).
        b = uniform(self.rng, cfg.arcade_slope)
        a = max(fovea_u - b * height, 0.1 * fovea_u) / height**2
        v = np.linspace(0.0, 4.0 * height, 4000)
        u = a * v**2 + b * v
        # Uniform arc-length resampling, then a smooth wobble across the curve.
        seg = np.hypot(np.diff(u), np.diff(v))
        s = np.concatenate([[0.0], np.cumsum(seg)])
        s_new = np.arange(0.0, s[-1], cfg.step)
        u, v = np.interp(s_new, s, u), np.interp(s_new, s, v)
        wobble = cfg.arcade_wobble * smooth_noise(self.rng, len(s_new), int(1.0 / cfg.step)) / 2.0
        normal_u, normal_v = np.gradient(v), -np.gradient(u)  # a normal to the curve
        norm = np.hypot(normal_u, normal_v) + 1e-9
        ramp = np.clip(s_new / 1.0, 0.0, 1.0)  # no wobble where the vessel leaves the disc
        u = u + offset + ramp * wobble * normal_u / norm
        v = v + ramp * wobble * normal_v / norm
        pts = self.frame.to_px(u, v if upper else -v)
        widths = width * np.exp(-cfg.arcade_taper * s_new)
        keep = self._truncate(pts, widths, leave_disc=False)
        return Curve(pts[:keep], widths[:keep])

    def branch_out(self, path: Curve, depth: int) -> None:
        """Add side branches along ``path`` (reducing its width after each), then recurse into them."""
        cfg, rng = self.cfg, self.rng
        if depth > cfg.max_depth or len(path.points) < 3:
            self.paths.append(path)
            return

        def spacing_px() -> float:
            return uniform(rng, cfg.branch_spacing) * self.dd

        seg = np.hypot(*np.diff(path.points, axis=0).T)
        arclen = np.concatenate([[0.0], np.cumsum(seg)])
        children: list[tuple[np.ndarray, float, float]] = []
        at = (cfg.branch_start * self.dd) if depth == 0 else spacing_px() * 0.7
        while at < arclen[-1]:
            i = int(np.searchsorted(arclen, at))
            if i >= len(path.points) - 1:
                break
            w = path.widths[i]
            child_w = w * uniform(rng, cfg.branch_ratio)
            if child_w >= self.min_w:
                d = path.points[i + 1] - path.points[i]
                heading = math.atan2(d[1], d[0])
                turn = math.radians(uniform(rng, cfg.branch_angle)) * (1 if rng.random() < 0.5 else -1)
                children.append((path.points[i].copy(), heading + turn, child_w))
                k = cfg.murray_exponent
                remaining = max(w**k - child_w**k, 0.0) ** (1.0 / k)
                path.widths[i:] *= max(remaining, 0.5 * w) / w
            at += spacing_px()
        keep = self._truncate(path.points, path.widths, leave_disc=False) if depth > 0 else len(path.points)
        self.paths.append(Curve(path.points[: max(keep, 2)], path.widths[: max(keep, 2)]))
        for start, heading, width in children:
            child = self.walk(start, heading, width, tortuosity=self.tortuosity(width), taper=cfg.branch_taper)
            if len(child.points) >= 2:
                self.branch_out(child, depth + 1)

    def build(self) -> list[Curve]:
        cfg, rng, lay = self.cfg, self.rng, self.layout
        vein = uniform(rng, cfg.vein_width) * self.dd
        for upper in (True, False):
            height = uniform(rng, cfg.arcade_height)
            artery = vein * uniform(rng, cfg.artery_vein_ratio)
            a_height = height * uniform(rng, cfg.artery_course)
            for h, w, off in ((height, vein, 0.0), (a_height, artery, cfg.artery_offset)):
                path = self.arcade(height=h, width=w, upper=upper, offset=off * (1 if rng.random() < 0.5 else -1))
                self.arcades.append(Curve(path.points.copy(), path.widths.copy()))
                self.branch_out(path, 0)
        # Nasal trunks: up and down, away from the fovea.
        nasal = math.atan2(-self.frame.e[1], -self.frame.e[0])
        up = math.atan2(self.frame.n[1], self.frame.n[0])
        origin = np.asarray(lay.disc)
        for sign in (1.0, -1.0):
            for w in (vein, vein * uniform(rng, cfg.artery_vein_ratio)):
                angle = math.radians(uniform(rng, cfg.nasal_angle))
                # Rotate from nasal towards up (sign +1) or down (sign -1).
                toward_up = math.copysign(1.0, math.sin(up - nasal))
                heading = nasal + sign * toward_up * angle
                path = self.walk(origin, heading, w * uniform(rng, cfg.nasal_width),
                                 tortuosity=cfg.tortuosity, taper=cfg.branch_taper * 0.6)
                self.branch_out(path, 1)
        # Small papillomacular vessels from the disc's temporal rim towards the fovea.
        to_fovea = math.atan2(self.frame.e[1], self.frame.e[0])
        for _ in range(int_in(rng, cfg.papillomacular)):
            heading = to_fovea + math.radians(rng.uniform(-cfg.papillomacular_spread, cfg.papillomacular_spread))
            start = origin + self.dd / 2.0 * np.array([math.cos(heading), math.sin(heading)])  # on the rim
            path = self.walk(start, heading, uniform(rng, cfg.papillomacular_width) * self.dd,
                             tortuosity=cfg.tortuosity, taper=cfg.branch_taper)
            self.branch_out(path, 2)
        return self.paths
