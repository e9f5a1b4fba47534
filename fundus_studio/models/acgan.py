"""The grade-conditioned label-map ACGAN (Son et al., "Synthesis of Diabetic Retina Fundus Images
Using Semantic Label Generation"): a generator that paints a semantic label map for a DR grade and a
discriminator that judges realness and predicts the grade (Odena et al., ACGAN).

Only the networks live here; losses, ADA and sampling live in ``training/`` and
``fundus_studio/pipeline.py``. Both networks take one :class:`ACGANConfig`, so the G : D capacity
ratio is set by the config's widths (the paper's networks are ≈ 10 : 1 in parameters).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from fundus_studio.labels import NUM_CLASSES, NUM_GRADES

# LeakyReLU slope of the discriminator (DCGAN / BigGAN practice).
LEAKY_SLOPE: float = 0.2


@dataclass(frozen=True)
class ACGANConfig:
    """Architecture of the generator and the discriminator (the training recipe lives elsewhere)."""

    resolution: int = 256  # side R of the generated map; a power of two ≥ 2 × start_resolution
    start_resolution: int = 4  # side of the generator's first feature map and the discriminator's last
    z_dim: int = 128  # latent size
    grade_dim: int = 32  # size of the learned grade embedding, concatenated to z
    num_classes: int = NUM_CLASSES  # channels of a label map (taxonomy classes)
    num_grades: int = NUM_GRADES  # DR grades the generator is conditioned on
    g_channels: int = 16  # generator channels at full resolution; doubled per halving of resolution
    g_max_channels: int = 256  # cap of generator channels at low resolution
    d_channels: int = 8  # discriminator channels at full resolution; doubled per halving
    d_max_channels: int = 128  # cap of discriminator channels
    norm_groups: int = 8  # GroupNorm groups of the generator's conditional norms
    g_spectral_norm: bool = False  # spectral norm in G as well (D always has it)
    mbstd_group: int = 4  # minibatch-stddev group size in D (Karras et al. 2018, ProGAN §3); 0 = off

    def __post_init__(self) -> None:
        if self.start_resolution < 2 or self.start_resolution & (self.start_resolution - 1):
            raise ValueError(f"start_resolution must be a power of two ≥ 2, got {self.start_resolution}")
        if self.resolution & (self.resolution - 1) or self.resolution < 2 * self.start_resolution:
            raise ValueError(
                f"resolution must be a power of two ≥ 2 × start_resolution ({2 * self.start_resolution}), "
                f"got {self.resolution}"
            )
        for name in ("z_dim", "grade_dim", "num_classes", "num_grades", "g_channels", "g_max_channels",
                     "d_channels", "d_max_channels", "norm_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.mbstd_group < 0:
            raise ValueError(f"mbstd_group must be ≥ 0 (0 = off), got {self.mbstd_group}")
        if self.num_classes < 2 or self.num_grades < 2:
            raise ValueError("num_classes and num_grades must be at least 2")
        for res in self.resolutions():
            ch = self.g_width(res)
            if ch % min(self.norm_groups, ch):
                raise ValueError(f"generator width {ch} at {res}² is not divisible by norm_groups={self.norm_groups}")

    def resolutions(self) -> list[int]:
        """Feature-map sides from start_resolution up to resolution, e.g. [4, 8, …, 256]."""
        n = int(math.log2(self.resolution // self.start_resolution))
        return [self.start_resolution * 2**i for i in range(n + 1)]

    def g_width(self, res: int) -> int:
        return min(self.g_max_channels, self.g_channels * self.resolution // res)

    def d_width(self, res: int) -> int:
        return min(self.d_max_channels, self.d_channels * self.resolution // res)


def _sn(module: nn.Module, enabled: bool) -> nn.Module:
    return spectral_norm(module) if enabled else module


def mbstd_group_size(batch: int, group: int) -> int:
    """The group size minibatch_stddev uses for a batch of ``batch``: the largest divisor ≤ ``group``."""
    return max(d for d in range(1, min(group, batch) + 1) if batch % d == 0)


def minibatch_stddev(x: torch.Tensor, *, group: int) -> torch.Tensor:
    """Append one channel holding the mean standard deviation of the features over a group of samples
    (Karras et al. 2018, ProGAN §3). A collapsed generator makes this ≈ 0 on fakes but not on reals,
    so D can see a lack of variety that no single sample shows.

    Groups are *consecutive* samples (``x.view(-1, g, …)``): a batch made of [reals; fakes] whose
    halves are multiples of the group size never mixes the two. The group size is the largest
    divisor of B that is ≤ ``group``. (B, C, H, W) → (B, C + 1, H, W).
    """
    b, c, h, w = x.shape
    g = mbstd_group_size(b, group)
    y = x.float().view(b // g, g, c, h, w)
    std = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))  # (B/g,)
    feat = std.repeat_interleave(g).view(b, 1, 1, 1).expand(b, 1, h, w).to(x.dtype)
    return torch.cat([x, feat], dim=1)


class ConditionalNorm(nn.Module):
    """GroupNorm whose scale and shift come from the conditioning vector (BigGAN's conditional BN,
    with groups instead of batch statistics so that a sample does not depend on its batch-mates).

    x: (B, ch, H, W), cond: (B, cond_dim) → (B, ch, H, W).
    """

    def __init__(self, ch: int, cond_dim: int, *, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(min(groups, ch), ch, affine=False)
        self.affine = nn.Linear(cond_dim, 2 * ch)
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)  # starts as plain normalisation: scale 1, shift 0

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.affine(cond)[:, :, None, None].chunk(2, dim=1)
        return self.norm(x) * (1 + gamma) + beta


class GBlock(nn.Module):
    """Residual up-block: norm → ReLU → ×2 nearest → conv → norm → ReLU → conv, plus a 1×1 skip.

    (B, c_in, r, r), cond (B, cond_dim) → (B, c_out, 2r, 2r).
    """

    def __init__(self, c_in: int, c_out: int, cond_dim: int, *, groups: int, sn: bool) -> None:
        super().__init__()
        self.norm1 = ConditionalNorm(c_in, cond_dim, groups=groups)
        self.conv1 = _sn(nn.Conv2d(c_in, c_out, 3, padding=1), sn)
        self.norm2 = ConditionalNorm(c_out, cond_dim, groups=groups)
        self.conv2 = _sn(nn.Conv2d(c_out, c_out, 3, padding=1), sn)
        self.skip = _sn(nn.Conv2d(c_in, c_out, 1), sn)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.norm1(x, cond)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), cond)))
        return h + self.skip(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Generator(nn.Module):
    """Label-map generator G(z, grade).

    Args:
        config: the architecture.
    Shapes:
        z: (B, z_dim) float, grade: (B,) int64 in 0..num_grades-1 → logits (B, num_classes, R, R)
        with R = config.resolution. Softmax over dim 1 gives class probabilities.
    z enters the stem and, with the grade embedding, the scale and shift of every conditional norm.
    """

    def __init__(self, config: ACGANConfig) -> None:
        super().__init__()
        self.config = config
        res = config.resolutions()
        cond_dim = config.z_dim + config.grade_dim
        sn = config.g_spectral_norm
        self.embed = nn.Embedding(config.num_grades, config.grade_dim)
        c0 = config.g_width(res[0])
        self.stem = _sn(nn.Linear(cond_dim, c0 * res[0] ** 2), sn)
        self.blocks = nn.ModuleList(
            GBlock(config.g_width(r), config.g_width(2 * r), cond_dim, groups=config.norm_groups, sn=sn)
            for r in res[:-1]
        )
        c_out = config.g_width(res[-1])
        self.norm_out = nn.GroupNorm(min(config.norm_groups, c_out), c_out)
        self.to_logits = _sn(nn.Conv2d(c_out, config.num_classes, 3, padding=1), sn)

    def forward(self, z: torch.Tensor, grade: torch.Tensor) -> torch.Tensor:
        cond = torch.cat([z, self.embed(grade)], dim=1)
        r0 = self.config.start_resolution
        x = self.stem(cond).view(z.shape[0], -1, r0, r0)
        for block in self.blocks:
            x = block(x, cond)
        return self.to_logits(F.relu(self.norm_out(x)))


class DBlock(nn.Module):
    """Residual down-block with spectral norm: LReLU → conv → avg-pool → LReLU → conv, plus a pooled
    1×1 skip. (B, c_in, r, r) → (B, c_out, r/2, r/2). The second conv runs at the halved side, which
    keeps D's cost well below G's, as in the paper's light discriminator."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = spectral_norm(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.avg_pool2d(self.conv1(F.leaky_relu(x, LEAKY_SLOPE)), 2)
        h = self.conv2(F.leaky_relu(h, LEAKY_SLOPE))
        return h + self.skip(F.avg_pool2d(x, 2))


class Discriminator(nn.Module):
    """Realness and grade critic D(x) with an auxiliary classifier (ACGAN).

    Shapes:
        x: (B, num_classes, R, R) one-hot or softmax map → (realness (B,), grade_logits (B, num_grades)).
        Realness is an unbounded score (hinge loss); grade_logits feed a cross-entropy.
    With ``mbstd_group`` > 0 the outputs of a sample depend on its group of batch-mates (consecutive
    samples; see :func:`minibatch_stddev`): feed reals and fakes in group-aligned blocks.
    """

    def __init__(self, config: ACGANConfig) -> None:
        super().__init__()
        self.config = config
        res = config.resolutions()[::-1]  # R, R/2, …, start
        self.from_map = spectral_norm(nn.Conv2d(config.num_classes, config.d_width(res[0]), 3, padding=1))
        self.blocks = nn.ModuleList(DBlock(config.d_width(r), config.d_width(r // 2)) for r in res[:-1])
        c_last = config.d_width(res[-1])
        # With minibatch stddev, one more 3×3 conv mixes the statistic into the last features.
        self.mbstd_conv = (spectral_norm(nn.Conv2d(c_last + 1, c_last, 3, padding=1)) if config.mbstd_group
                           else None)
        self.realness = spectral_norm(nn.Linear(c_last, 1))
        self.grade = spectral_norm(nn.Linear(c_last, config.num_grades))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.from_map(x)
        for block in self.blocks:
            h = block(h)
        if self.mbstd_conv is not None:
            h = self.mbstd_conv(minibatch_stddev(F.leaky_relu(h, LEAKY_SLOPE), group=self.config.mbstd_group))
        h = F.leaky_relu(h, LEAKY_SLOPE).sum(dim=(2, 3))  # global sum pooling (SN-GAN)
        return self.realness(h).squeeze(1), self.grade(h)
