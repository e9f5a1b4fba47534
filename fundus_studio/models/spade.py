"""SPADE-family renderer: semantic label map → fundus photograph.

The generator follows SPADE (Park et al., "Semantic Image Synthesis with Spatially-Adaptive
Normalization", CVPR 2019): residual blocks whose normalisation layers are modulated per pixel by
γ, β predicted from the label map (their Eq. 1, ``γ·(x − μ)/σ + β``), starting from a downsampled
label map and, optionally, a latent code ``z`` that a VAE style encoder produces from a reference
photo. The cost of SPADE sits in its normalisation branches (PERF.md: 70 % of the FLOPs), so the
modulation is configurable per resolution level:

- ``"spade"``: a shared label embedding (3×3 conv → ReLU, SPADE's ``mlp_shared``) is computed once
  per level and shared by every normalisation layer of that level; one conv then predicts the γ, β
  of all normalisation layers of a block at once. The hidden width is set per level.
- ``"clade"``: class-adaptive normalisation (Tan et al., "Efficient Semantic Image Synthesis via
  Class-Adaptive Normalization", TPAMI 2021): γ, β looked up per class, i.e. a bias-free 1×1 conv
  of the one-hot map. Near free, and still per pixel: a one-pixel microaneurysm gets its own γ, β.

The discriminator is the multi-scale PatchGAN of pix2pixHD/SPADE (spectral norm, instance norm) on
``concat(one-hot, photo)``, returning every intermediate feature map for the feature-matching loss.
Losses and update steps live in the training code; this file holds modules and small helpers only.

Shapes: label maps are one-hot (or soft, e.g. anti-aliased) ``(B, num_classes, H, W)`` float maps
(``fundus_studio.labels.to_one_hot``); photos are ``(B, 3, H, W)`` in ``[-1, 1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from fundus_studio.labels import NUM_CLASSES

NORM_KINDS: tuple[str, ...] = ("spade", "clade")
PARAM_FREE_NORMS: tuple[str, ...] = ("instance", "batch")
LABEL_DOWNSAMPLING: tuple[str, ...] = ("area", "nearest")
LEAKY_SLOPE = 0.2  # LeakyReLU slope used throughout SPADE and pix2pixHD


# ----------------------------------------------------------------------------------------------
# Configs


def _tuple_field(config: object, name: str) -> tuple:
    """Coerce a list field (as JSON gives back) to a tuple on a frozen dataclass; returns it."""
    value = getattr(config, name)
    if isinstance(value, list):
        value = tuple(value)
        object.__setattr__(config, name, value)
    if not isinstance(value, tuple):
        raise ValueError(f"{type(config).__name__}.{name} must be a tuple, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class SpadeGeneratorConfig:
    """Architecture of :class:`SpadeGenerator`. Per-level tuples run from the lowest resolution
    (``H / 2**num_up``) to full resolution; ``num_up = len(channels) - 1``."""

    num_classes: int = NUM_CLASSES  # channels of the one-hot label map
    # Defaults: the demo-cpu design (docs/models.md). Official SPADE ngf 64: the paper-512 preset.
    channels: tuple[int, ...] = (256, 256, 128, 64, 16, 16)  # feature width of each level's blocks
    blocks: tuple[int, ...] = (1, 2, 1, 1, 1, 1)  # SPADE residual blocks per level (official: 1,2,1,1,1,1)
    norm: tuple[str, ...] = ("spade", "spade", "spade", "spade", "spade", "clade")  # modulation per level
    spade_hidden: tuple[int, ...] = (128, 128, 64, 32, 16, 0)  # shared-embedding width ("spade" levels; official 128)
    spade_kernel: tuple[int, ...] = (3, 3, 3, 1, 1, 1)  # kernel of the γ/β convs per level (official: 3)
    z_dim: int = 64  # latent size (style code); 0 = no latent, the render is a function of the labels
    z_grid: int = 4  # the latent is projected to a z_grid² map, resized to the start resolution
    label_downsample: str = "area"  # label map at low levels: "area" (class fractions) or "nearest"
    param_free_norm: str = "instance"  # normalisation before modulation: "instance" or "batch"
    share_shortcut_modulation: bool = True  # learnt shortcut reuses norm_0's γ, β (official: own SPADE)
    spectral_norm: bool = True  # spectral norm on the residual convs (as official SPADE)
    out_channels: int = 3  # RGB
    eps: float = 1e-5  # normalisation epsilon

    def __post_init__(self) -> None:
        channels = _tuple_field(self, "channels")
        levels = len(channels)
        if levels < 1:
            raise ValueError("SpadeGeneratorConfig.channels needs at least one level")
        for name in ("blocks", "norm", "spade_hidden", "spade_kernel"):
            value = _tuple_field(self, name)
            if len(value) != levels:
                raise ValueError(
                    f"SpadeGeneratorConfig.{name} has {len(value)} entries but channels has {levels}: "
                    "give one entry per resolution level (lowest resolution first)"
                )
        if self.num_classes < 1:
            raise ValueError(f"SpadeGeneratorConfig.num_classes must be >= 1, got {self.num_classes}")
        if any(c < 1 for c in channels):
            raise ValueError(f"SpadeGeneratorConfig.channels must be positive, got {channels}")
        if any(b < 1 for b in self.blocks):
            raise ValueError(f"SpadeGeneratorConfig.blocks must be >= 1 per level, got {self.blocks}")
        for level, (kind, hidden) in enumerate(zip(self.norm, self.spade_hidden)):
            if kind not in NORM_KINDS:
                raise ValueError(f"SpadeGeneratorConfig.norm[{level}] = {kind!r}; choose from {NORM_KINDS}")
            if kind == "spade" and hidden < 1:
                raise ValueError(
                    f"SpadeGeneratorConfig.spade_hidden[{level}] = {hidden}: a 'spade' level needs a "
                    "positive hidden width"
                )
            if hidden < 0:
                raise ValueError(f"SpadeGeneratorConfig.spade_hidden[{level}] must be >= 0, got {hidden}")
        if any(k < 1 or k % 2 == 0 for k in self.spade_kernel):
            raise ValueError(f"SpadeGeneratorConfig.spade_kernel must be odd and positive, got {self.spade_kernel}")
        if self.z_dim < 0:
            raise ValueError(f"SpadeGeneratorConfig.z_dim must be >= 0, got {self.z_dim}")
        if self.z_grid < 1:
            raise ValueError(f"SpadeGeneratorConfig.z_grid must be >= 1, got {self.z_grid}")
        if self.label_downsample not in LABEL_DOWNSAMPLING:
            raise ValueError(
                f"SpadeGeneratorConfig.label_downsample = {self.label_downsample!r}; choose from {LABEL_DOWNSAMPLING}"
            )
        if self.param_free_norm not in PARAM_FREE_NORMS:
            raise ValueError(
                f"SpadeGeneratorConfig.param_free_norm = {self.param_free_norm!r}; choose from {PARAM_FREE_NORMS}"
            )
        if self.out_channels < 1:
            raise ValueError(f"SpadeGeneratorConfig.out_channels must be >= 1, got {self.out_channels}")
        if not self.eps > 0:
            raise ValueError(f"SpadeGeneratorConfig.eps must be > 0, got {self.eps}")

    @property
    def num_up(self) -> int:
        """Number of ×2 upsamplings between the start resolution and the output."""
        return len(self.channels) - 1

    @property
    def stride(self) -> int:
        """Height and width of the input must be multiples of this."""
        return 2**self.num_up


@dataclass(frozen=True)
class StyleEncoderConfig:
    """Architecture of :class:`StyleEncoder` (SPADE's ``ConvEncoder``); defaults: demo-cpu."""

    z_dim: int = 64  # latent size; must equal the generator's z_dim
    width: int = 16  # channels of the first conv (official ndf: 64)
    max_width: int = 128  # channel cap (official: 8·ndf)
    num_layers: int = 6  # stride-2 3×3 convs (official: 6 for 256² input)
    input_size: int = 256  # photos are resized (antialiased bilinear) to input_size² first
    image_channels: int = 3  # RGB
    spectral_norm: bool = True  # spectral norm on every conv (official: yes)

    def __post_init__(self) -> None:
        for name in ("z_dim", "width", "max_width", "num_layers", "input_size", "image_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"StyleEncoderConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_width < self.width:
            raise ValueError(f"StyleEncoderConfig.max_width ({self.max_width}) < width ({self.width})")
        if self.input_size % 2**self.num_layers:
            raise ValueError(
                f"StyleEncoderConfig.input_size ({self.input_size}) must be a multiple of "
                f"2**num_layers = {2**self.num_layers}"
            )


@dataclass(frozen=True)
class PatchDiscriminatorConfig:
    """Architecture of :class:`MultiscalePatchDiscriminator` (pix2pixHD / SPADE layout); defaults:
    demo-cpu (half the official width)."""

    num_classes: int = NUM_CLASSES  # one-hot channels concatenated with the photo
    image_channels: int = 3  # RGB
    width: int = 32  # channels of the first conv (official ndf: 64)
    max_width: int = 256  # channel cap (official: 512)
    num_layers: int = 4  # convs per scale before the output conv (official n_layers_D: 4)
    num_scales: int = 2  # discriminators on the image downsampled 1×, 2×, … (official num_D: 2)
    norm: str = "instance"  # "instance" or "none" on the inner convs
    spectral_norm: bool = True  # spectral norm on every conv

    def __post_init__(self) -> None:
        for name in ("num_classes", "image_channels", "width", "max_width", "num_layers", "num_scales"):
            if getattr(self, name) < 1:
                raise ValueError(f"PatchDiscriminatorConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_width < self.width:
            raise ValueError(f"PatchDiscriminatorConfig.max_width ({self.max_width}) < width ({self.width})")
        if self.norm not in ("instance", "none"):
            raise ValueError(f"PatchDiscriminatorConfig.norm = {self.norm!r}; choose 'instance' or 'none'")


@dataclass(frozen=True)
class SpadePreset:
    """The three networks of one SPADE setup; ``encoder`` is None when the generator has no latent."""

    generator: SpadeGeneratorConfig
    encoder: StyleEncoderConfig | None
    discriminator: PatchDiscriminatorConfig


# ----------------------------------------------------------------------------------------------
# Helpers


def _maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    return _spectral_norm(module) if enabled else module


def _check_image(x: torch.Tensor, *, channels: int, stride: int, what: str) -> None:
    """Raise ValueError unless ``x`` is ``(B, channels, H, W)`` with H and W multiples of stride."""
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"{what}: expected shape (B, {channels}, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h < stride or w < stride or h % stride or w % stride:
        raise ValueError(
            f"{what}: height and width must be positive multiples of the network stride {stride}, "
            f"got {h}×{w}"
        )


def _same_format(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``x`` in channels-last memory if ``ref`` is, so that convolutions stay on the fast path."""
    if ref.is_contiguous(memory_format=torch.channels_last) and not ref.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    return x


def label_pyramid(label: torch.Tensor, *, levels: int, mode: str) -> list[torch.Tensor]:
    """Label map at full resolution and ``levels - 1`` halvings, lowest resolution first.

    ``mode="area"`` averages 2×2 cells (soft class fractions: a one-pixel lesion still contributes
    1/4ⁿ at level n instead of vanishing); ``"nearest"`` keeps every other pixel (official SPADE).
    """
    out = [label]
    for _ in range(levels - 1):
        prev = out[-1]
        out.append(F.avg_pool2d(prev, 2) if mode == "area" else prev[:, :, ::2, ::2])
    return out[::-1]


def reparameterize(
    mu: torch.Tensor, logvar: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Draw ``z = μ + σ·ε`` with ``ε ~ N(0, I)`` from ``generator`` (VAE trick); shapes ``(B, z_dim)``."""
    eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
    return mu + eps * torch.exp(0.5 * logvar)


def fold_spectral_norm(module: nn.Module) -> nn.Module:
    """Replace every spectral-norm parametrization in ``module`` by its current normalised weight.

    For inference: outputs are unchanged (the weight ``W / σ(W)`` is computed with the stored power-
    iteration vectors, as in eval mode) and each forward skips the division. Works in place and
    returns ``module``; the module cannot be trained further with spectral norm afterwards.
    """
    training = module.training
    module.eval()  # eval: no power iteration while the weight is materialised
    with torch.no_grad():
        for sub in module.modules():
            if parametrize.is_parametrized(sub):
                for name in list(sub.parametrizations.keys()):
                    parametrize.remove_parametrizations(sub, name, leave_parametrized=True)
    module.train(training)
    return module


# ----------------------------------------------------------------------------------------------
# Normalisation and modulation


class ParamFreeNorm(nn.Module):
    """``(x − μ) / σ`` without affine parameters (SPADE's param-free norm), ``(B, C, H, W)``.

    Instance statistics of a single image are computed with ``F.batch_norm`` in training mode (for
    B = 1 the batch statistics are the instance statistics): on channels-last CPU tensors this is
    many times faster than ``F.instance_norm``, which first copies the input to a contiguous layout.
    """

    def __init__(self, channels: int, *, kind: str, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.bn = nn.BatchNorm2d(channels, affine=False, eps=eps) if kind == "batch" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn is not None:
            return self.bn(x)
        if x.shape[0] == 1:
            return F.batch_norm(x, None, None, training=True, eps=self.eps)
        return F.instance_norm(x, eps=self.eps)


class LabelEmbedding(nn.Module):
    """SPADE's ``mlp_shared``: 3×3 conv of the label map + ReLU, ``(B, L, H, W) → (B, hidden, H, W)``.
    Computed once per level and shared by all the level's normalisation layers."""

    def __init__(self, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(num_classes, hidden, 3, padding=1)

    def forward(self, label: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(label))


class Modulation(nn.Module):
    """Predicts the multiplier ``1 + γ`` and the shift ``β`` of several normalisation layers in one
    convolution (fewer, larger convs run faster than SPADE's separate mlp_gamma / mlp_beta).

    ``"spade"``: a k×k conv of the shared label embedding (SPADE Eq. 1). ``"clade"``: a bias-free
    1×1 conv of the one-hot map, i.e. a per-class table of γ, β (CLADE). The conv outputs ``1 + γ``
    directly: its γ bias (SPADE) or γ table entries (CLADE) start at 1, so a fresh layer modulates
    like official SPADE's ``1 + γ`` with γ's bias at 0, without an extra pass to add the 1.
    """

    def __init__(self, widths: tuple[int, ...], *, kind: str, in_channels: int, kernel: int) -> None:
        super().__init__()
        self.widths = widths
        total = 2 * sum(widths)
        is_gamma = torch.cat([torch.cat([torch.ones(w), torch.zeros(w)]) for w in widths])
        if kind == "spade":
            self.conv = nn.Conv2d(in_channels, total, kernel, padding=kernel // 2)
            with torch.no_grad():
                self.conv.bias.add_(is_gamma)
        else:
            # Rows of the table for one class sum the one-hot to exactly that class's γ, β.
            self.conv = nn.Conv2d(in_channels, total, 1, bias=False)
            with torch.no_grad():
                self.conv.weight.copy_(is_gamma[:, None, None, None].expand_as(self.conv.weight))

    def forward(self, cond: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``cond (B, in, H, W)`` → per layer ``(1 + γ, β)``, each ``(B, width, H, W)``."""
        out = self.conv(cond)
        pairs = []
        start = 0
        for w in self.widths:
            pairs.append((out[:, start : start + w], out[:, start + w : start + 2 * w]))
            start += 2 * w
        return pairs


def _no_autograd() -> bool:
    """True under ``torch.no_grad`` / ``torch.inference_mode``: element-wise steps may work in place."""
    return torch.is_inference_mode_enabled() or not torch.is_grad_enabled()


def _modulate(x_norm: torch.Tensor, gamma1: torch.Tensor, beta: torch.Tensor, *, inplace: bool) -> torch.Tensor:
    """SPADE Eq. 1 on an already normalised ``x``: ``x_norm · (1 + γ) + β`` (in place if allowed;
    fresh full-resolution tensors cost page faults on CPU, often more than the arithmetic)."""
    if inplace:
        return x_norm.mul_(gamma1).add_(beta)
    return torch.addcmul(beta, x_norm, gamma1)


# ----------------------------------------------------------------------------------------------
# Blocks


class SpadeResBlock(nn.Module):
    """SPADE ResBlk (Park et al. 2019): norm → LReLU → 3×3 conv → norm → LReLU → 3×3 conv, plus a
    learnt shortcut (norm → 1×1 conv) when the width changes. ``x (B, fin, H, W) → (B, fout, H, W)``;
    ``cond`` has x's height and width.

    All γ, β of the block come from one :class:`Modulation`. The shortcut and the main path share
    the param-free normalisation of ``x``; with ``share_shortcut_modulation`` they also share its
    γ, β (one modulated tensor instead of two: the shortcut's SPADE costs as much as norm_0's).
    Under ``no_grad`` / ``inference_mode`` the element-wise steps run in place.
    """

    def __init__(
        self, fin: int, fout: int, *, kind: str, cond_channels: int, kernel: int, param_free_norm: str,
        spectral_norm: bool, share_shortcut_modulation: bool, eps: float,
    ) -> None:
        super().__init__()
        fmid = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.shared_shortcut = share_shortcut_modulation
        self.norm_in = ParamFreeNorm(fin, kind=param_free_norm, eps=eps)
        self.norm_mid = ParamFreeNorm(fmid, kind=param_free_norm, eps=eps)
        own_shortcut = self.learned_shortcut and not share_shortcut_modulation
        widths = (fin, fmid, fin) if own_shortcut else (fin, fmid)
        self.modulation = Modulation(widths, kind=kind, in_channels=cond_channels, kernel=kernel)
        self.conv_0 = _maybe_sn(nn.Conv2d(fin, fmid, 3, padding=1), spectral_norm)
        self.conv_1 = _maybe_sn(nn.Conv2d(fmid, fout, 3, padding=1), spectral_norm)
        if self.learned_shortcut:
            self.conv_s = _maybe_sn(nn.Conv2d(fin, fout, 1, bias=False), spectral_norm)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``cond``: the level's label embedding ("spade") or one-hot map ("clade") at x's size."""
        inplace = _no_autograd()
        mods = self.modulation(cond)
        x_norm = self.norm_in(x)
        if not self.learned_shortcut:
            shortcut = x
            h = _modulate(x_norm, *mods[0], inplace=inplace)
        elif self.shared_shortcut:
            # One modulated x feeds both paths (the shortcut before the activation, as in SPADE).
            h = _modulate(x_norm, *mods[0], inplace=inplace)
            shortcut = self.conv_s(h)
        else:
            shortcut = self.conv_s(_modulate(x_norm, *mods[2], inplace=False))
            h = _modulate(x_norm, *mods[0], inplace=inplace)
        dx = self.conv_0(F.leaky_relu(h, LEAKY_SLOPE, inplace=inplace))
        dx = self.norm_mid(dx)
        dx = self.conv_1(F.leaky_relu(_modulate(dx, *mods[1], inplace=inplace), LEAKY_SLOPE, inplace=True))
        return dx.add_(shortcut) if inplace else dx + shortcut


class SpadeLevel(nn.Module):
    """The residual blocks at one resolution, sharing one label embedding (``"spade"``) or the
    one-hot map itself (``"clade"``). ``x (B, fin, H, W) → (B, fout, H, W)``."""

    def __init__(
        self, fin: int, fout: int, *, num_blocks: int, kind: str, hidden: int, kernel: int, cfg: SpadeGeneratorConfig
    ) -> None:
        super().__init__()
        self.embedding = LabelEmbedding(cfg.num_classes, hidden) if kind == "spade" else None
        cond_channels = hidden if kind == "spade" else cfg.num_classes
        self.blocks = nn.ModuleList(
            SpadeResBlock(
                fin if i == 0 else fout, fout, kind=kind, cond_channels=cond_channels, kernel=kernel,
                param_free_norm=cfg.param_free_norm, spectral_norm=cfg.spectral_norm,
                share_shortcut_modulation=cfg.share_shortcut_modulation, eps=cfg.eps,
            )
            for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        cond = label if self.embedding is None else self.embedding(label)
        for block in self.blocks:
            x = block(x, cond)
        return x


# ----------------------------------------------------------------------------------------------
# Networks


class SpadeGenerator(nn.Module):
    """Label map (+ latent) → photo.

    Starts at ``H / stride`` from a 3×3 conv of the downsampled label map plus, if ``z_dim > 0``, a
    linear projection of ``z`` (as SPADE's VAE mode); then one :class:`SpadeLevel` per resolution
    with nearest ×2 upsampling between levels; then LReLU → 3×3 conv → tanh.

    Args:
        config: the architecture.

    Forward:
        label: ``(B, num_classes, H, W)`` one-hot (or soft) map; H, W multiples of ``config.stride``.
        z: ``(B, z_dim)`` latent, e.g. from :class:`StyleEncoder`; if None and ``z_dim > 0`` it is
            drawn from N(0, I) with ``generator`` (seeded renders). A generator with ``z_dim = 0``
            takes no latent; a wrong shape raises ValueError.
        generator: random source for the latent when ``z`` is None.

    Returns:
        ``(B, out_channels, H, W)`` in ``[-1, 1]``.
    """

    def __init__(self, config: SpadeGeneratorConfig) -> None:
        super().__init__()
        self.config = config
        ch = config.channels
        self.head = nn.Conv2d(config.num_classes, ch[0], 3, padding=1)
        self.z_proj = nn.Linear(config.z_dim, ch[0] * config.z_grid**2) if config.z_dim > 0 else None
        self.levels = nn.ModuleList(
            SpadeLevel(
                ch[max(i - 1, 0)], ch[i], num_blocks=config.blocks[i], kind=config.norm[i],
                hidden=config.spade_hidden[i], kernel=config.spade_kernel[i], cfg=config,
            )
            for i in range(len(ch))
        )
        self.to_rgb = nn.Conv2d(ch[-1], config.out_channels, 3, padding=1)

    def forward(
        self, label: torch.Tensor, z: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        cfg = self.config
        _check_image(label, channels=cfg.num_classes, stride=cfg.stride, what="SpadeGenerator label map")
        labels = label_pyramid(label, levels=len(cfg.channels), mode=cfg.label_downsample)
        x = self.head(labels[0])
        if self.z_proj is not None:
            batch = label.shape[0]
            if z is None:
                z = torch.randn(batch, cfg.z_dim, generator=generator, device=label.device, dtype=label.dtype)
            if z.shape != (batch, cfg.z_dim):
                raise ValueError(f"SpadeGenerator: expected z of shape ({batch}, {cfg.z_dim}), got {tuple(z.shape)}")
            zmap = self.z_proj(z).view(batch, cfg.channels[0], cfg.z_grid, cfg.z_grid)
            if zmap.shape[-2:] != x.shape[-2:]:
                zmap = F.interpolate(zmap, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + _same_format(zmap, x)
        elif z is not None:
            raise ValueError("SpadeGenerator: this generator has z_dim = 0 and takes no latent")
        for i, (level, lab) in enumerate(zip(self.levels, labels)):
            if i > 0:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = level(x, lab)
        return torch.tanh(self.to_rgb(F.leaky_relu(x, LEAKY_SLOPE, inplace=_no_autograd())))


class StyleEncoder(nn.Module):
    """VAE encoder of a reference photo (SPADE's ``ConvEncoder``): ``(B, C, H, W) → (μ, log σ²)``,
    each ``(B, z_dim)``. Any H, W: the photo is first resized to ``input_size²`` (antialiased
    bilinear), then ``num_layers`` stride-2 3×3 convs with instance norm and LReLU, then two linear
    heads. Draw ``z`` with :func:`reparameterize`."""

    def __init__(self, config: StyleEncoderConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        cin = config.image_channels
        for i in range(config.num_layers):
            cout = min(config.width * 2**i, config.max_width)
            layers.append(_maybe_sn(nn.Conv2d(cin, cout, 3, stride=2, padding=1), config.spectral_norm))
            layers.append(nn.InstanceNorm2d(cout, affine=False))
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
            cin = cout
        self.features = nn.Sequential(*layers)
        flat = cin * (config.input_size // 2**config.num_layers) ** 2
        self.fc_mu = nn.Linear(flat, config.z_dim)
        self.fc_logvar = nn.Linear(flat, config.z_dim)

    def forward(self, photo: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _check_image(photo, channels=self.config.image_channels, stride=1, what="StyleEncoder photo")
        size = self.config.input_size
        if photo.shape[-2:] != (size, size):
            photo = F.interpolate(photo, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        h = self.features(photo).flatten(1)
        return self.fc_mu(h), self.fc_logvar(h)


class PatchDiscriminator(nn.Module):
    """One PatchGAN (pix2pixHD ``NLayerDiscriminator``): 4×4 convs, stride 2 except the last two.
    ``(B, in, H, W)`` → list of every layer's output, the last being the ``(B, 1, h, w)`` logits."""

    def __init__(self, in_channels: int, config: PatchDiscriminatorConfig) -> None:
        super().__init__()
        kernel, pad = 4, 2  # official kw = 4, padw = ceil((kw - 1) / 2)
        sn = config.spectral_norm
        width = config.width
        layers = [nn.Sequential(_maybe_sn(nn.Conv2d(in_channels, width, kernel, 2, pad), sn), nn.LeakyReLU(LEAKY_SLOPE))]
        for n in range(1, config.num_layers):
            prev, width = width, min(width * 2, config.max_width)
            stride = 1 if n == config.num_layers - 1 else 2
            norm: nn.Module = nn.InstanceNorm2d(width, affine=False) if config.norm == "instance" else nn.Identity()
            layers.append(
                nn.Sequential(_maybe_sn(nn.Conv2d(prev, width, kernel, stride, pad), sn), norm, nn.LeakyReLU(LEAKY_SLOPE))
            )
        layers.append(nn.Sequential(nn.Conv2d(width, 1, kernel, 1, pad)))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for layer in self.layers:
            x = layer(x)
            feats.append(x)
        return feats


class MultiscalePatchDiscriminator(nn.Module):
    """``num_scales`` PatchGANs on ``concat(label, photo)`` at full, ½, ¼ … resolution (3×3 average
    pooling between scales, as pix2pixHD).

    Forward:
        label: ``(B, num_classes, H, W)`` one-hot map.
        photo: ``(B, image_channels, H, W)`` real or generated photo in ``[-1, 1]``.

    Returns:
        ``outputs[scale][layer]``: every layer's feature map per scale, full resolution first; the
        last entry of each scale is its ``(B, 1, h, w)`` patch logits, the others serve the feature-
        matching loss.
    """

    def __init__(self, config: PatchDiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        in_channels = config.num_classes + config.image_channels
        self.scales = nn.ModuleList(PatchDiscriminator(in_channels, config) for _ in range(config.num_scales))

    def forward(self, label: torch.Tensor, photo: torch.Tensor) -> list[list[torch.Tensor]]:
        cfg = self.config
        _check_image(label, channels=cfg.num_classes, stride=1, what="discriminator label map")
        _check_image(photo, channels=cfg.image_channels, stride=1, what="discriminator photo")
        if label.shape[0] != photo.shape[0] or label.shape[-2:] != photo.shape[-2:]:
            raise ValueError(
                f"discriminator: label {tuple(label.shape)} and photo {tuple(photo.shape)} differ in batch or size"
            )
        x = torch.cat([label, photo], dim=1)
        outputs = []
        for i, disc in enumerate(self.scales):
            if i > 0:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outputs.append(disc(x))
        return outputs


# ----------------------------------------------------------------------------------------------
# Presets

SPADE_PRESETS: dict[str, SpadePreset] = {
    # Tests and wiring checks: stride 4, a few thousand parameters.
    "smoke": SpadePreset(
        generator=SpadeGeneratorConfig(
            channels=(16, 16, 8), blocks=(1, 1, 1), norm=("spade", "spade", "clade"), spade_hidden=(8, 8, 0),
            spade_kernel=(3, 3, 1), z_dim=8, z_grid=2, spectral_norm=True,
        ),
        encoder=StyleEncoderConfig(z_dim=8, width=4, max_width=16, num_layers=3, input_size=32),
        discriminator=PatchDiscriminatorConfig(width=8, max_width=16, num_layers=2, num_scales=2),
    ),
    # The app's live renderer on a 2-core CPU (docs/models.md: ≤ 0.15 s at 256², ≤ 0.5 s at 512²).
    "demo-cpu": SpadePreset(
        generator=SpadeGeneratorConfig(),
        encoder=StyleEncoderConfig(),
        discriminator=PatchDiscriminatorConfig(),
    ),
    # Official SPADE (ngf 64, 5 upsamplings, batch-norm statistics, VAE with z_dim 256): a GPU recipe.
    "paper-512": SpadePreset(
        generator=SpadeGeneratorConfig(
            channels=(1024, 1024, 512, 256, 128, 64), blocks=(1, 2, 1, 1, 1, 1), norm=("spade",) * 6,
            spade_hidden=(128,) * 6, spade_kernel=(3,) * 6, z_dim=256, z_grid=8, param_free_norm="batch",
            share_shortcut_modulation=False,
        ),
        encoder=StyleEncoderConfig(z_dim=256, width=64, max_width=512, num_layers=6, input_size=256),
        discriminator=PatchDiscriminatorConfig(width=64, max_width=512, num_layers=4, num_scales=2),
    ),
}
