"""Adaptive discriminator augmentation (Karras et al. 2020, "Training Generative Adversarial Networks
with Limited Data") for label maps.

Only label-safe transforms: x-flips, 90° rotations and integer translations whose uncovered border
is filled with the ``outside`` class. Each is an exact pixel permutation (plus fill), so a one-hot
map stays one-hot and a softmax map still sums to one; they are done for the whole batch with one
``gather``, which passes gradients to the generator's fakes. Reals and fakes go through the same
function with the same probability ``p``.

The probability follows the overfitting heuristic r_t = E[sign(D(augmented real))]: every
``interval`` minibatches p moves by ±(images seen in the interval) / ``speed_images`` towards
r_t = ``target`` and is clamped to [0, p_max] with p_max < 1 (at p = 1 augmentations would leak).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fundus_studio.labels import OUTSIDE


@dataclass(frozen=True)
class ADAConfig:
    enabled: bool = True  # adapt p; when False p stays at p_init
    target: float = 0.6  # target of r_t = E[sign(D(real))] (the paper's value)
    interval: int = 4  # minibatches between adjustments
    speed_images: int = 500_000  # images for p to travel 0 → 1
    p_init: float = 0.0  # starting probability
    p_max: float = 0.8  # ceiling, < 1: beyond ~0.8 these transforms start to leak into G
    xflip: bool = True  # horizontal flip
    rotate90: bool = True  # rotation by k · 90°
    translate: float = 0.125  # maximal integer shift as a fraction of the side (0 disables)

    def __post_init__(self) -> None:
        if not -1.0 < self.target < 1.0:
            raise ValueError(f"ADA target must lie in (-1, 1), got {self.target}")
        if self.interval < 1 or self.speed_images < 1:
            raise ValueError("ADA interval and speed_images must be positive")
        if not 0.0 <= self.p_max < 1.0:
            raise ValueError(f"ADA p_max must lie in [0, 1), got {self.p_max}")
        if not 0.0 <= self.p_init <= self.p_max:
            raise ValueError(f"ADA p_init must lie in [0, p_max], got {self.p_init}")
        if not 0.0 <= self.translate < 0.5:
            raise ValueError(f"ADA translate must lie in [0, 0.5), got {self.translate}")


def augment(
    x: torch.Tensor, *, p: float, config: ADAConfig, generator: torch.Generator | None = None,
    fill_class: int = OUTSIDE,
) -> torch.Tensor:
    """Apply each enabled transform to each map independently with probability ``p``.

    x: (B, C, S, S) one-hot or probability maps → same shape. Differentiable with respect to ``x``.
    The random draws come from ``generator`` (on x's device), so a seeded run is reproducible.
    """
    b, c, h, w = x.shape
    if h != w:
        raise ValueError(f"augment expects square maps, got {h}×{w}")
    if p <= 0.0 or b == 0:
        return x
    dev = x.device

    def chance() -> torch.Tensor:
        return torch.rand(b, device=dev, generator=generator) < p

    # Output pixel (i, j) reads source pixel (si, sj): compose the inverse transforms.
    ii = torch.arange(h, device=dev).view(1, h, 1).expand(b, h, w)
    jj = torch.arange(w, device=dev).view(1, 1, w).expand(b, h, w)
    si, sj = ii, jj
    if config.translate > 0:
        shift = max(1, round(config.translate * h))
        d = torch.randint(-shift, shift + 1, (2, b), device=dev, generator=generator)
        d = d * chance().long()
        si, sj = si - d[0].view(b, 1, 1), sj - d[1].view(b, 1, 1)
    if config.rotate90:
        k = torch.randint(0, 4, (b,), device=dev, generator=generator) * chance().long()
        k = k.view(b, 1, 1)
        # inverse of a k·90° counter-clockwise rotation, for k = 0..3
        ri = torch.where(k == 0, si, torch.where(k == 1, sj, torch.where(k == 2, h - 1 - si, w - 1 - sj)))
        rj = torch.where(k == 0, sj, torch.where(k == 1, h - 1 - si, torch.where(k == 2, w - 1 - sj, si)))
        si, sj = ri, rj
    if config.xflip:
        flip = chance().view(b, 1, 1)
        sj = torch.where(flip, w - 1 - sj, sj)
    valid = (si >= 0) & (si < h) & (sj >= 0) & (sj < w)
    index = (si.clamp(0, h - 1) * w + sj.clamp(0, w - 1)).view(b, 1, h * w).expand(b, c, h * w)
    out = torch.gather(x.reshape(b, c, h * w), 2, index).view(b, c, h, w)
    fill = torch.zeros(c, device=dev, dtype=x.dtype)
    fill[fill_class] = 1.0
    return torch.where(valid.unsqueeze(1), out, fill.view(1, c, 1, 1))


class AdaptiveAugment:
    """The ADA controller: holds p, accumulates sign(D(real)), and adjusts p every interval.

    ``update`` takes the summed signs and counts already reduced across ranks (the trainer does the
    all-reduce), so every rank holds the same p.
    """

    def __init__(self, config: ADAConfig) -> None:
        self.config = config
        self.p = config.p_init
        self.r_t = 0.0  # the last measured E[sign(D(real))]
        self._sign_sum = 0.0
        self._count = 0
        self._batches = 0

    def __call__(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        return augment(x, p=self.p, config=self.config, generator=generator)

    def accumulate(self, *, sign_sum: float, count: int) -> None:
        """Add one minibatch: Σ sign(D(augmented real)) and the number of reals (over all ranks)."""
        self._sign_sum += sign_sum
        self._count += count
        self._batches += 1
        if self._batches >= self.config.interval:
            self._adjust()

    def _adjust(self) -> None:
        self.r_t = self._sign_sum / max(1, self._count)
        if self.config.enabled:
            step = self._count / self.config.speed_images  # images seen this interval, as a fraction of 0 → 1
            direction = 1.0 if self.r_t > self.config.target else -1.0
            self.p = float(min(self.config.p_max, max(0.0, self.p + direction * step)))
        self._sign_sum, self._count, self._batches = 0.0, 0, 0

    def state_dict(self) -> dict[str, Any]:
        return {"p": self.p, "r_t": self.r_t, "sign_sum": self._sign_sum, "count": self._count,
                "batches": self._batches}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.p = float(state["p"])
        self.r_t = float(state["r_t"])
        self._sign_sum = float(state["sign_sum"])
        self._count = int(state["count"])
        self._batches = int(state["batches"])
