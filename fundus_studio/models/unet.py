"""U-Net lesion segmenter: fundus photo → per-class logits (Ronneberger et al., "U-Net:
Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015).

The layout is the common PyTorch U-Net: a double 3×3 conv per level, max-pool down, bilinear (or
transposed-conv) up, skip concatenation, 1×1 conv out. With bilinear upsampling the bottom level
and each decoder conv output half the width, which makes the ``paper-512`` preset (64 base
channels, depth 4) the 17.3 M-parameter, 80 GFLOP-at-256² network of the paper's public code
(PERF.md).

The output has one channel per chosen taxonomy class (``config.classes``, all of them or a subset),
as logits: the loss (softmax cross-entropy or per-class sigmoid) belongs to the training code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fundus_studio.labels import NUM_CLASSES

UPSAMPLING: tuple[str, ...] = ("bilinear", "transpose")
NORMS: tuple[str, ...] = ("batch", "instance", "none")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`UNet`."""

    classes: tuple[int, ...] = tuple(range(NUM_CLASSES))  # taxonomy indices predicted, one output channel each
    in_channels: int = 3  # RGB photo
    base_channels: int = 24  # width of the first level (paper: 64); doubles per level
    max_channels: int = 384  # width cap for deep levels (paper: 1024, i.e. none)
    depth: int = 5  # 2× downsamplings; H and W must be multiples of 2**depth (paper: 4)
    upsample: str = "bilinear"  # "bilinear" (paper) or "transpose" (2×2 transposed conv)
    norm: str = "batch"  # after every 3×3 conv: "batch" (paper), "instance" or "none"

    def __post_init__(self) -> None:
        classes = self.classes
        if isinstance(classes, list):
            classes = tuple(classes)
            object.__setattr__(self, "classes", classes)
        if not isinstance(classes, tuple) or not classes:
            raise ValueError(f"UNetConfig.classes must be a non-empty tuple of class indices, got {classes!r}")
        if any(not 0 <= c < NUM_CLASSES for c in classes) or len(set(classes)) != len(classes):
            raise ValueError(
                f"UNetConfig.classes must be distinct taxonomy indices in 0..{NUM_CLASSES - 1}, got {classes}"
            )
        for name in ("in_channels", "base_channels", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"UNetConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_channels < self.base_channels:
            raise ValueError(f"UNetConfig.max_channels ({self.max_channels}) < base_channels ({self.base_channels})")
        if self.upsample not in UPSAMPLING:
            raise ValueError(f"UNetConfig.upsample = {self.upsample!r}; choose from {UPSAMPLING}")
        if self.norm not in NORMS:
            raise ValueError(f"UNetConfig.norm = {self.norm!r}; choose from {NORMS}")
        if self.upsample == "bilinear" and min(self.widths) < 2:
            raise ValueError("UNetConfig: bilinear upsampling halves widths; base_channels must be >= 2")

    @property
    def widths(self) -> tuple[int, ...]:
        """Encoder width per level, level 0 (full resolution) to ``depth`` (bottom)."""
        return tuple(min(self.base_channels * 2**i, self.max_channels) for i in range(self.depth + 1))

    @property
    def stride(self) -> int:
        """Height and width of the input must be multiples of this."""
        return 2**self.depth


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class DoubleConv(nn.Module):
    """(3×3 conv → norm → ReLU) × 2: ``(B, cin, H, W) → (B, cout, H, W)``."""

    def __init__(self, cin: int, cout: int, *, mid: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"  # a following norm makes the conv bias redundant
        self.net = nn.Sequential(
            nn.Conv2d(cin, mid, 3, padding=1, bias=bias), _norm(norm, mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 3, padding=1, bias=bias), _norm(norm, cout), nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Up(nn.Module):
    """Upsample ×2, concatenate the encoder skip, double conv: ``(B, cin, h, w), (B, skip, 2h, 2w)
    → (B, cout, 2h, 2w)``."""

    def __init__(self, cin: int, skip: int, cout: int, *, mode: str, norm: str) -> None:
        super().__init__()
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
            cat = cin // 2 + skip
            self.conv = DoubleConv(cat, cout, mid=cout, norm=norm)
        else:
            self.up = None
            cat = cin + skip
            self.conv = DoubleConv(cat, cout, mid=cat // 2, norm=norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False) if self.up is None else self.up(x)
        return self.conv(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    """Photo → per-class segmentation logits.

    Args:
        config: the architecture.

    Forward:
        x: ``(B, in_channels, H, W)`` photo (normalised as in training); H and W positive multiples
            of ``config.stride = 2**depth``.

    Returns:
        ``(B, len(config.classes), H, W)`` logits; channel ``k`` is taxonomy class ``config.classes[k]``.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        bilinear = config.upsample == "bilinear"
        self.inc = DoubleConv(config.in_channels, w[0], mid=w[0], norm=config.norm)
        # With bilinear upsampling the bottom outputs half its width (no learnt upsampling to halve it).
        bottom = w[-1] // 2 if bilinear else w[-1]
        self.down = nn.ModuleList(
            DoubleConv(w[i - 1], bottom if i == config.depth else w[i], mid=bottom if i == config.depth else w[i], norm=config.norm)
            for i in range(1, config.depth + 1)
        )
        ups = []
        c = bottom
        for i in range(config.depth, 0, -1):
            out = (w[i - 1] // 2 if i > 1 else w[0]) if bilinear else w[i - 1]
            ups.append(Up(c, w[i - 1], out, mode=config.upsample, norm=config.norm))
            c = out
        self.up = nn.ModuleList(ups)
        self.outc = nn.Conv2d(c, len(config.classes), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"UNet: expected input of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h < cfg.stride or w < cfg.stride or h % cfg.stride or w % cfg.stride:
            raise ValueError(
                f"UNet: height and width must be positive multiples of 2**depth = {cfg.stride}, got {h}×{w}"
            )
        skips = [self.inc(x)]
        for down in self.down:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        x = skips.pop()
        for up in self.up:
            x = up(x, skips.pop())
        return self.outc(x)


UNET_PRESETS: dict[str, UNetConfig] = {
    # Tests and wiring checks: a few thousand parameters.
    "smoke": UNetConfig(base_channels=4, depth=2, max_channels=16),
    # The shipped demo segmenter: narrow, trains in ~20 min on 2 CPU cores (checkpoints/README.md).
    "demo-cpu": UNetConfig(base_channels=16, depth=4, max_channels=128),
    # The widest U-Net that stays under 1 s at 512² on our 2-core CPU (the defaults; docs/models.md).
    "wide-cpu": UNetConfig(),
    # Son et al.'s public U-Net: 64 base channels, bilinear, 17.3 M parameters.
    "paper-512": UNetConfig(base_channels=64, depth=4, max_channels=1024),
}
