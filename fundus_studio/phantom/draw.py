"""Drawing primitives shared by the anatomy and the lesions: seeded draws from ranges, smooth noise,
curves with a width, a supersampled binary canvas, irregular blobs. Lengths here are output pixels."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from fundus_studio.phantom.config import IntRange, Range

# --- random draws ----------------------------------------------------------------------------------


def uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def log_uniform(rng: np.random.Generator, r: Range, n: int) -> np.ndarray:
    return np.exp(rng.uniform(math.log(r[0]), math.log(r[1]), n))


def int_in(rng: np.random.Generator, r: IntRange) -> int:
    return int(rng.integers(r[0], r[1] + 1))


@dataclass
class Curve:
    """A drawn curve: vertices ``(N, 2)`` in output pixels and the width at each vertex (pixels)."""

    points: np.ndarray
    widths: np.ndarray


def smooth_noise(rng: np.random.Generator, n: int, smoothing: int, *, unit: bool = True) -> np.ndarray:
    """``n`` samples of Gaussian noise low-pass filtered over about ``smoothing`` samples.

    ``unit``: scaled to unit variance (a smooth curve); otherwise a plain average, whose running sum
    keeps the variance of a random walk (smooth increments).
    """
    if smoothing <= 1:
        return rng.standard_normal(n)
    k = np.exp(-0.5 * (np.arange(-2 * smoothing, 2 * smoothing + 1) / smoothing) ** 2)
    k /= math.sqrt((k**2).sum()) if unit else k.sum()
    return np.convolve(rng.standard_normal(n + len(k) - 1), k, mode="valid")


# --- drawing ---------------------------------------------------------------------------------------


class Canvas:
    """A supersampled binary canvas: draw at ``k``× then area-average down and threshold at ½."""

    def __init__(self, size: int, k: int) -> None:
        self.size, self.k = size, k
        self.buf = np.zeros((size * k, size * k), np.uint8)

    def _px(self, pts: np.ndarray) -> np.ndarray:
        return np.round(np.asarray(pts) * self.k + (self.k - 1) / 2.0).astype(np.int32)

    def path(self, path: Curve, *, min_px: float) -> None:
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


def blob(rng: np.random.Generator, center: np.ndarray, radius: float, *, roughness: float = 0.25,
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


SHIFT: int = 4
SHIFT_SCALE: float = float(1 << SHIFT)


def fixed_point(p: tuple[float, float] | np.ndarray) -> tuple[int, int]:
    """Pixel-centre coordinates → cv2 fixed-point coordinates for drawing with ``shift=SHIFT``."""
    return (round(float(p[0]) * SHIFT_SCALE), round(float(p[1]) * SHIFT_SCALE))
