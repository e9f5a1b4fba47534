"""Networks of the two-stage label-map generator: a grade-conditioned flow-matching prior over coarse
*soft* label maps, and a label upsampler that turns coarse class fractions into sharp full-size classes.

Why two stages (docs/training.md, "Label maps that look like retinas"): a 2-px vessel at 512² is a
partial occupancy of 0.1–0.4 in an 8×8 block, so the area fractions of a map at 64² still hold the
whole vessel tree, while arg-maxed 64² labels lose it. The prior models those fractions; the
upsampler, trained on real maps only, learns where inside each block the classes lie.

- :class:`FlowUNet` is the velocity field v(x_t, t, grade) of rectified flow / flow matching
  (Lipman et al. 2023, eq. 23; Liu et al. 2023): x_t = (1 - t) x_0 + t x_1 with x_0 ~ N(0, I) and
  x_1 = 2 f - 1 for the class fractions f ∈ [0, 1]. Shapes: x (B, C, R, R), t (B,) in [0, 1],
  grade (B,) int64 in 0..num_grades (the extra index ``num_grades`` means "no grade", for
  classifier-free guidance, Ho & Salimans 2022) → velocity (B, C, R, R).
- :class:`LabelUpsampler`: class fractions (B, C, r, r) (rows sum to 1) → class logits
  (B, C, r·f, r·f). Its output is a correction added to the log of the bilinearly upsampled
  fractions, so an untrained upsampler already equals bilinear upsampling.

Only the networks live here: the flow-matching loss and the ODE sampler live in
``training/label_flow.py`` and ``fundus_studio/pipeline.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fundus_studio.labels import NUM_CLASSES, NUM_GRADES

# log(p + LOG_EPS) of the upsampled fractions: the upsampler's prior logits stay finite at p = 0.
LOG_EPS: float = 1e-3


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and not n & (n - 1)


@dataclass(frozen=True)
class LabelFlowConfig:
    """Architecture of the flow-matching prior (the procedure lives in training/label_flow.py)."""

    resolution: int = 64  # side R of the coarse soft map it generates
    num_classes: int = NUM_CLASSES  # channels of a map (taxonomy classes)
    num_grades: int = NUM_GRADES  # DR grades; index num_grades = unconditional
    channels: tuple[int, ...] = (16, 32, 64, 128)  # widths at R, R/2, R/4, …; one level per entry
    blocks: int = 1  # residual blocks per level on the way down (one more on the way up)
    emb_dim: int = 128  # width of the time + grade embedding
    norm_groups: int = 8  # GroupNorm groups
    attention: bool = True  # one self-attention layer at the lowest resolution (global layout)

    def __post_init__(self) -> None:
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"channels must be a non-empty tuple of positive widths, got {self.channels}")
        if not _is_power_of_two(self.resolution) or self.resolution < 2 ** (len(self.channels) - 1) * 4:
            raise ValueError(f"resolution must be a power of two ≥ 4 · 2^(levels-1), got {self.resolution}")
        for ch in self.channels:
            if ch % min(self.norm_groups, ch):
                raise ValueError(f"width {ch} is not divisible by norm_groups={self.norm_groups}")
        for name in ("num_classes", "num_grades", "blocks", "emb_dim", "norm_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """(B,) times in [0, 1] → (B, dim) sinusoidal features (Vaswani et al.; DDPM's time embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([args.sin(), args.cos()], dim=1)
    return F.pad(emb, (0, dim % 2))


class ResBlock(nn.Module):
    """GN → SiLU → conv → GN modulated by the embedding (scale, shift) → SiLU → conv, plus a skip
    (the DDPM / ADM residual block). (B, c_in, H, W), emb (B, E) → (B, c_out, H, W)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, *, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out, affine=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (ADM's zero init)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.conv2(F.silu(self.norm2(h) * (1 + scale) + shift))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over positions with a residual (SAGAN / ADM), for the global layout
    (one disc, vessels leaving it). (B, ch, H, W) → (B, ch, H, W)."""

    def __init__(self, ch: int, *, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(dim=1)
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.out(attn.transpose(1, 2).reshape(b, c, h, w))


class FlowUNet(nn.Module):
    """Velocity field of the grade-conditioned flow-matching prior.

    Args:
        config: the architecture.
    Shapes:
        x: (B, C, R, R) float, t: (B,) float in [0, 1], grade: (B,) int64 in 0..num_grades
        (num_grades = unconditional) → velocity (B, C, R, R).
    """

    def __init__(self, config: LabelFlowConfig) -> None:
        super().__init__()
        self.config = config
        ch, e, g = config.channels, config.emb_dim, config.norm_groups
        self.time = nn.Sequential(nn.Linear(e, e), nn.SiLU(), nn.Linear(e, e))
        self.grade = nn.Embedding(config.num_grades + 1, e)
        self.stem = nn.Conv2d(config.num_classes, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i, c in enumerate(ch):
            c_prev = ch[max(i - 1, 0)]
            self.down.append(nn.ModuleList(ResBlock(c_prev if j == 0 else c, c, e, groups=g)
                                           for j in range(config.blocks)))
            if i < len(ch) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid1 = ResBlock(ch[-1], ch[-1], e, groups=g)
        self.attn = SelfAttention(ch[-1], groups=g) if config.attention else nn.Identity()
        self.mid2 = ResBlock(ch[-1], ch[-1], e, groups=g)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(ch))):
            c_in = ch[min(i + 1, len(ch) - 1)]
            self.up.append(nn.ModuleList([ResBlock(c_in + ch[i], ch[i], e, groups=g)]
                                         + [ResBlock(ch[i], ch[i], e, groups=g) for _ in range(config.blocks)]))
            if i > 0:
                self.upsample.append(nn.Conv2d(ch[i], ch[i], 3, padding=1))
        self.norm_out = nn.GroupNorm(min(g, ch[0]), ch[0])
        self.to_velocity = nn.Conv2d(ch[0], config.num_classes, 3, padding=1)
        nn.init.zeros_(self.to_velocity.weight)
        nn.init.zeros_(self.to_velocity.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, grade: torch.Tensor) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.config.emb_dim)) + self.grade(grade)
        h = self.stem(x)
        skips = []
        for i, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for i, blocks in enumerate(self.up):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in blocks:
                h = block(h, emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.to_velocity(F.silu(self.norm_out(h)))


# --- the label upsampler ------------------------------------------------------------------------


@dataclass(frozen=True)
class UpsamplerConfig:
    """Architecture of the coarse-fractions → sharp-classes upsampler."""

    coarse_resolution: int = 64  # side r of the fractions it reads (the prior's R)
    factor: int = 8  # output side = r · factor; a power of two
    num_classes: int = NUM_CLASSES  # channels in and out
    channels: tuple[int, ...] = (64, 32, 16, 8)  # widths at r, 2r, 4r, …; log2(factor) + 1 entries
    coarse_blocks: int = 2  # residual blocks at the coarse side (context for where a vessel runs)

    def __post_init__(self) -> None:
        if self.factor < 2 or not _is_power_of_two(self.factor) or not _is_power_of_two(self.coarse_resolution):
            raise ValueError(f"factor (≥ 2) and coarse_resolution must be powers of two, got {self.factor}, "
                             f"{self.coarse_resolution}")
        if len(self.channels) != int(math.log2(self.factor)) + 1 or min(self.channels) < 1:
            raise ValueError(f"channels needs log2(factor) + 1 = {int(math.log2(self.factor)) + 1} positive "
                             f"widths, got {self.channels}")
        if self.num_classes < 2 or self.coarse_blocks < 0:
            raise ValueError("num_classes must be ≥ 2 and coarse_blocks ≥ 0")

    @property
    def resolution(self) -> int:
        """Side of the maps it outputs."""
        return self.coarse_resolution * self.factor


class _PlainRes(nn.Module):
    """conv → ReLU → conv with a residual; no normalisation (the output must not depend on the
    batch or on the image's statistics). (B, ch, H, W) → same."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class LabelUpsampler(nn.Module):
    """Coarse class fractions → sharp class logits at ``factor`` × the side.

    Each ×2 stage sees its features and the fractions bilinearly upsampled to its side; the last
    layer adds a learned correction to log(upsampled fractions + ε).

    Shapes: fractions (B, C, r, r) with rows summing to 1 → logits (B, C, r·factor, r·factor).
    """

    def __init__(self, config: UpsamplerConfig) -> None:
        super().__init__()
        self.config = config
        ch, c = config.channels, config.num_classes
        self.stem = nn.Conv2d(c, ch[0], 3, padding=1)
        self.coarse = nn.Sequential(*(_PlainRes(ch[0]) for _ in range(config.coarse_blocks)))
        self.stages = nn.ModuleList(
            nn.ModuleDict({"up": nn.Conv2d(ch[i], ch[i + 1], 3, padding=1),
                           "mix": nn.Conv2d(ch[i + 1] + c, ch[i + 1], 3, padding=1)})
            for i in range(len(ch) - 1)
        )
        self.to_logits = nn.Conv2d(ch[-1], c, 3, padding=1)
        nn.init.zeros_(self.to_logits.weight)
        nn.init.zeros_(self.to_logits.bias)

    def forward(self, fractions: torch.Tensor) -> torch.Tensor:
        h = self.coarse(F.relu(self.stem(fractions)))
        side = fractions.shape[-1]
        for stage in self.stages:
            side *= 2
            h = F.relu(stage["up"](F.interpolate(h, size=(side, side), mode="nearest")))
            prior = F.interpolate(fractions, size=(side, side), mode="bilinear", align_corners=False)
            h = F.relu(stage["mix"](torch.cat([h, prior], dim=1)))
        return torch.log(prior.clamp(min=0) + LOG_EPS) + self.to_logits(h)
