"""Train the SPADE renderer (label map → fundus photo) on studio-dataset pairs.

    python -m training.spade --data data/phantoms-train --out runs/spade --preset demo-cpu --threads 1
    torchrun --standalone --nproc_per_node 2 -m training.spade --data ... --out ...   # DDP

Per step (SPADE's defaults, Park et al. 2019): one G (+ style encoder) update with the hinge
adversarial loss, feature matching (λ 10), KL of the style code (λ 0.05, when the encoder is on) and
an optional class-balanced pixel L1; then one D update with the hinge loss on concat(one-hot, photo)
using the same fakes, detached. TTUR: Adam (0, 0.9), lr 1e-4 for G, 4e-4 for D. No VGG loss (see
docs/spade_training.md). Re-running resumes; ``--steps`` is the total.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fundus_studio.checkpoint import config_to_dict, load_model, read_info
from fundus_studio.labels import COLORS, FINE_STRUCTURES, NUM_CLASSES
from fundus_studio.models.spade import (
    SPADE_PRESETS, MultiscalePatchDiscriminator, PatchDiscriminatorConfig, SpadeGenerator, SpadeGeneratorConfig,
    StyleEncoder, StyleEncoderConfig, reparameterize,
)
from fundus_studio.errors import CheckpointError
from fundus_studio.imageio import atomic_write
from fundus_studio.pipeline import encoder_path_for, tensor_to_photo
from training import harness
from training.harness.data import DOWNSAMPLE_MODES


@dataclass(frozen=True)
class TrainConfig:
    data: Path = Path("data/phantoms")  # studio dataset of (photo, label map) pairs
    out: Path = Path("runs/spade")  # run folder; re-running resumes it
    preset: str = "demo-cpu"  # the preset these values came from (recorded)
    seed: int = 0  # seeds models, batches, latents and augmentation
    steps: int = 600  # TOTAL steps; one step = 1 G update + 1 D update
    resume: bool = False  # fail unless RUN/state exists (resuming is automatic anyway)
    device: str = "auto"  # auto | cpu | cuda
    export_to: Path | None = None  # also copy spade(.json/.safetensors) [+ spade_encoder] here
    init: Path | None = None  # fine-tune: a new run starts G (and E) from this spade.safetensors; D starts fresh
    generator: SpadeGeneratorConfig = field(default_factory=SpadeGeneratorConfig)  # G's architecture
    encoder: StyleEncoderConfig = field(default_factory=StyleEncoderConfig)  # used when style_encoder
    discriminator: PatchDiscriminatorConfig = field(default_factory=PatchDiscriminatorConfig)  # D's architecture
    style_encoder: bool = True  # train a VAE style encoder with G (z = E(real photo)); else z ~ N(0, I)
    resolution: int = 256  # pairs are resized to this (photos area-resized, maps by `downsample`)
    downsample: str = "keep-lesions"  # label-map resizing (harness.resize_index_map): lesions survive
    crop: int = 0  # train on random crop²-pixel crops of the resized pairs; 0 = whole images
    vflip: bool = False  # also flip vertically (horizontal flips are always on: left/right eyes)
    batch: int = 2  # pairs per rank per step
    lr_g: float = 1e-4  # Adam learning rate of G and the encoder (TTUR, SPADE default)
    lr_d: float = 4e-4  # Adam learning rate of D (TTUR, SPADE default)
    betas: tuple[float, float] = (0.0, 0.9)  # Adam betas (SPADE's with TTUR)
    fm_weight: float = 10.0  # feature matching λ (pix2pixHD / SPADE)
    kl_weight: float = 0.05  # KL(q(z|photo) ‖ N(0, I)) λ, per image (SPADE sums over the batch)
    pixel_weight: float = 0.0  # class-balanced L1 to the real photo; 0 = off (see docs/spade_training.md)
    # Class-balanced L1 of the high-pass images (image − Gaussian blur) over the fine structures only
    # (vessels, lesions): their local contrast, which the plain L1 barely sees (a faint 1-px
    # microaneurysm costs almost nothing there); 0 = off. The background is left out: its texture has
    # no phase a label map fixes.
    detail_weight: float = 0.0
    detail_sigma: float = 1.5  # the high-pass's Gaussian sd in pixels at the training resolution
    ema: bool = False  # keep an EMA of G's weights and export it instead of G
    ema_half_life_images: float = 10_000.0  # G_ema's weight half-life in training images
    log_every: int = 10  # steps between metrics rows
    sample_every: int = 100  # steps between sample grids
    sample_rows: int = 4  # fixed training pairs shown in each grid (label | render(s) | photo)
    snapshot_every: int = 100  # steps between saved states
    amp: bool = False  # bf16 autocast (CUDA only)
    compile: bool = False  # torch.compile G, D and the encoder
    channels_last: bool = True  # NHWC memory format: about 2× faster convolutions on CPU (PERF.md)
    threads: int = 0  # torch CPU threads per process; 0 = torch's default (use 1 on a shared, busy machine)
    debug_checksums: bool = False  # each rank writes RUN/checksums/rank<r>.json (weight hashes) at the end

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "resolution", "log_every", "sample_every", "sample_rows", "snapshot_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        stride = self.generator.stride
        size = self.crop or self.resolution
        if self.resolution % stride or self.crop % stride or self.crop > self.resolution or self.crop < 0:
            raise ValueError(f"resolution ({self.resolution}) and crop ({self.crop}) must be multiples of the "
                             f"generator stride {stride}, with 0 ≤ crop ≤ resolution")
        if size < 2 ** self.discriminator.num_scales:
            raise ValueError(f"training size {size} is too small for {self.discriminator.num_scales} D scales")
        if self.downsample not in DOWNSAMPLE_MODES:
            raise ValueError(f"downsample must be one of {DOWNSAMPLE_MODES}, got {self.downsample!r}")
        if self.style_encoder and not self.generator.z_dim == self.encoder.z_dim > 0:
            raise ValueError(f"style_encoder needs generator.z_dim == encoder.z_dim > 0, got "
                             f"{self.generator.z_dim} and {self.encoder.z_dim}")
        if self.generator.num_classes != NUM_CLASSES or self.discriminator.num_classes != NUM_CLASSES:
            raise ValueError(f"generator/discriminator num_classes must be the taxonomy's {NUM_CLASSES}")
        if self.detail_weight < 0 or self.detail_sigma <= 0:
            raise ValueError(f"detail_weight must be ≥ 0 and detail_sigma > 0, got {self.detail_weight}, {self.detail_sigma}")
        if min(self.lr_g, self.lr_d) <= 0 or min(self.fm_weight, self.kl_weight, self.pixel_weight) < 0:
            raise ValueError("learning rates must be positive and loss weights non-negative")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")


def _preset(name: str) -> dict[str, Any]:
    """A SPADE_PRESETS architecture as a config dict (the trainer's presets build on it)."""
    arch = config_to_dict(SPADE_PRESETS[name])
    return {"generator": arch["generator"], "encoder": arch["encoder"], "discriminator": arch["discriminator"]}


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a laptop CPU: the tests' recipe (encoder off; --set style_encoder=true turns it on).
    "smoke": {
        **_preset("smoke"), "style_encoder": False, "resolution": 32, "downsample": "nearest", "batch": 2,
        "steps": 4, "pixel_weight": 1.0, "ema": True, "ema_half_life_images": 20.0, "log_every": 1,
        "sample_every": 2, "sample_rows": 2, "snapshot_every": 2,
    },
    # 256² on 2 CPU cores: 2000 steps ≈ 42 min at 1.25 s/step (docs/spade_training.md). The
    # class-balanced pixel L1 gives a short run a signal where tiny lesions count as much as the
    # background; the GAN and feature-matching terms alone need far more steps than a CPU affords.
    "demo-cpu": {
        **_preset("demo-cpu"), "style_encoder": True, "resolution": 256, "downsample": "keep-lesions",
        "batch": 2, "steps": 2000, "pixel_weight": 10.0, "ema": False, "log_every": 10, "sample_every": 100,
        "snapshot_every": 50,
    },
    # Official SPADE scale at 512² for GPUs: no pixel loss (it pulls renders towards the mean photo and
    # is not needed with 10⁵ steps of GAN + feature matching), EMA of G on, bf16 autocast.
    "paper-512": {
        **_preset("paper-512"), "style_encoder": True, "resolution": 512, "downsample": "area", "batch": 4,
        "steps": 100_000, "pixel_weight": 0.0, "ema": True, "ema_half_life_images": 10_000.0, "amp": True,
        "log_every": 50, "sample_every": 1000, "snapshot_every": 1000,
    },
}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m training.spade", description=__doc__.split("\n\n")[0])
    harness.add_common_arguments(parser, presets=PRESETS, default_preset="demo-cpu")
    parser.add_argument("--batch", type=int, default=None, help="pairs per rank per step")
    parser.add_argument("--init", type=Path, default=None,
                        help="fine-tune: a new run starts G (and E) from this spade.safetensors (e.g. checkpoints/)")
    parser.add_argument("--debug-checksums", action="store_const", const=True, default=None,
                        help="write per-rank weight hashes to RUN/checksums/ (checks DDP sync)")
    args = parser.parse_args(argv)
    given = {k: getattr(args, k) for k in ("data", "out", "steps", "seed", "device", "export_to", "threads", "batch",
                                           "debug_checksums", "init")}
    given["resume"] = args.resume or None
    try:
        return harness.resolve(TrainConfig, presets=PRESETS, preset=args.preset, given=given, overrides=args.overrides)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


# --- augmentation and losses (SPADE / pix2pixHD) -------------------------------------------------


def augment(photo: torch.Tensor, label: torch.Tensor, *, crop: int, vflip: bool,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random flips (and crop) for photo ``(B, 3, R, R)`` and one-hot label ``(B, C, R, R)``,
    as whole-batch tensor ops (one gather for the crop, one ``where`` per flip)."""
    x = torch.cat([photo, label], dim=1)
    b, _, h, w = x.shape
    dev = x.device
    flips = [(-1, torch.rand(b, device=dev, generator=generator) < 0.5)]
    if vflip:
        flips.append((-2, torch.rand(b, device=dev, generator=generator) < 0.5))
    for dim, mask in flips:
        x = torch.where(mask.view(b, 1, 1, 1), x.flip(dim), x)
    if crop and crop < h:
        top = torch.randint(0, h - crop + 1, (b,), device=dev, generator=generator)
        left = torch.randint(0, w - crop + 1, (b,), device=dev, generator=generator)
        offs = torch.arange(crop, device=dev)
        rows, cols = (top[:, None] + offs)[:, :, None], (left[:, None] + offs)[:, None, :]
        x = x[torch.arange(b, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (B, C, c, c)
    return x[:, : photo.shape[1]], x[:, photo.shape[1]:]


def hinge_d(pred: list[list[torch.Tensor]], *, real: bool) -> torch.Tensor:
    """D's hinge loss (Lim & Ye; SPADE), averaged over scales: mean relu(1 ∓ logits)."""
    sign = -1.0 if real else 1.0
    return torch.stack([F.relu(1.0 + sign * p[-1].float()).mean() for p in pred]).mean()


def feature_matching(fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]]) -> torch.Tensor:
    """pix2pixHD Eq. 4: L1 between D's intermediate features of fake and real, summed over layers,
    averaged over scales (the λ is applied by the caller)."""
    per_scale = [sum(F.l1_loss(f.float(), r.detach().float()) for f, r in zip(fs[:-1], rs[:-1]))
                 for fs, rs in zip(fake, real)]
    return torch.stack(per_scale).mean()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) summed over z, averaged over the batch (VAE, Kingma & Welling)."""
    return (-0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(dim=1)).mean()


def class_balanced_l1(fake: torch.Tensor, real: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Mean over the classes present in the batch of each class's mean L1: a 1-px microaneurysm's
    class weighs as much as the background (plain L1 never learnt them in 300 steps, docs/models.md).
    fake, real: ``(B, 3, H, W)``; label: one-hot ``(B, C, H, W)``."""
    err = (fake.float() - real.float()).abs().mean(dim=1, keepdim=True)  # (B, 1, H, W)
    per_class = (err * label).sum(dim=(0, 2, 3))
    count = label.sum(dim=(0, 2, 3))
    present = count > 0
    return (per_class[present] / count[present]).mean()



def gaussian_blur(x: torch.Tensor, *, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(B, C, H, W)``, reflect-padded (no dark rim at the image edge)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def detail_l1(fake: torch.Tensor, real: torch.Tensor, label: torch.Tensor, *, sigma: float,
              classes: tuple[int, ...] = FINE_STRUCTURES) -> torch.Tensor:
    """Mean over the ``classes`` present in the batch of each one's mean L1 between the high-pass
    images (x − blur(x)): a render whose microaneurysm is there but faint pays for the missing contrast.
    fake, real: ``(B, 3, H, W)``; label: one-hot ``(B, C, H, W)``. Zero when no such class is present."""
    fake, real = fake.float(), real.float()
    err = ((fake - gaussian_blur(fake, sigma=sigma)) - (real - gaussian_blur(real, sigma=sigma))).abs().mean(dim=1, keepdim=True)
    mask = label[:, list(classes)].float()
    count = mask.sum(dim=(0, 2, 3))
    present = count > 0
    if not bool(present.any()):
        return fake.sum() * 0.0  # keeps the graph: the caller adds it to the loss
    return ((err * mask).sum(dim=(0, 2, 3))[present] / count[present]).mean()


@torch.no_grad()
def sample_grid(g: SpadeGenerator, encoder: StyleEncoder | None, photo: torch.Tensor, label: torch.Tensor, *,
                seed: int) -> np.ndarray:
    """One row per pair: label colours | render (z from ``seed``) | [render in the photo's style] | photo."""
    modules = [m for m in (g, encoder) if m is not None]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()  # no spectral-norm power iteration: sampling leaves the training state untouched
    z_gen = torch.Generator(device=label.device).manual_seed(seed)
    cols = [COLORS[label.argmax(dim=1).cpu().numpy()], tensor_to_photo(g(label, generator=z_gen))]
    if encoder is not None:
        cols.append(tensor_to_photo(g(label, encoder(photo)[0])))
    cols.append(tensor_to_photo(photo))
    for m, mode in zip(modules, modes):
        m.train(mode)
    return harness.image_grid(np.stack(cols, axis=1))


# --- training -----------------------------------------------------------------------------------

INIT_FILE = "init.json"  # RUN/init.json: the checkpoint a fine-tuning run started from


def init_from(path: Path, *, G: SpadeGenerator, E: StyleEncoder | None, G_ema: nn.Module | None) -> None:
    """Copy an exported renderer's weights (and its ``_encoder`` sibling's, when E is trained) into the
    fresh modules, spectral-norm state (u, v) included, as float32; a checkpoint of another
    architecture is a CheckpointError, not a silent partial load."""
    parts = [(G, path, SpadeGenerator, "generator")]
    if E is not None:
        encoder = encoder_path_for(path)
        if not encoder.is_file():
            raise CheckpointError(f"{path}: no style encoder beside it, but this run trains one (--set style_encoder=false?)")
        parts.append((E, encoder, StyleEncoder, "encoder"))
    for module, source, cls, what in parts:
        loaded = load_model(source, expected=cls)
        if loaded.config != module.config:
            raise CheckpointError(f"{path}: its {what} architecture differs from this run's: {loaded.config} vs {module.config}")
        module.load_state_dict({k: v.float() for k, v in loaded.state_dict().items()})
    if G_ema is not None:
        G_ema.load_state_dict(G.state_dict())


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) the renderer in ``cfg.out``; return the inference checkpoint's path."""
    # Build.
    harness.set_threads(cfg.threads)
    dist = harness.init_distributed(device=cfg.device)
    arch = {"generator": cfg.generator, "discriminator": cfg.discriminator,
            "encoder": cfg.encoder if cfg.style_encoder else None}
    run = harness.Run(cfg.out, kind="spade", config=cfg, architecture=arch, dist=dist, preset=cfg.preset)
    dev = dist.device
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    pairs = harness.load_pairs(cfg.data, resolution=cfg.resolution, downsample=cfg.downsample)
    run.log.info("data: %d pairs at %d²", len(pairs), cfg.resolution)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    G = SpadeGenerator(cfg.generator).to(dev, memory_format=fmt)
    D = MultiscalePatchDiscriminator(cfg.discriminator).to(dev, memory_format=fmt)
    E = StyleEncoder(cfg.encoder).to(dev, memory_format=fmt) if cfg.style_encoder else None
    G_ema = harness.make_ema(G) if cfg.ema else None
    n = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in (("G", G), ("D", D), ("E", E)) if m is not None}
    run.log.info("parameters (M): %s", ", ".join(f"{k} {v:.2f}" for k, v in n.items()))
    g_params = [*G.parameters(), *(E.parameters() if E is not None else [])]
    opt_g = torch.optim.Adam(g_params, lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed * 7919 + dist.rank)  # latents, augmentation
    modules: dict[str, nn.Module] = {"G": G, "D": D, **({"E": E} if E is not None else {}),
                                     **({"G_ema": G_ema} if G_ema is not None else {})}
    state = harness.TrainState(modules=modules, optimizers={"G": opt_g, "D": opt_d}, generators={"train": gen})

    # Resume (or start from a shipped renderer).
    start = run.resume(state, require=cfg.resume)
    init_file = cfg.out / INIT_FILE
    if start == 0 and cfg.init is not None:
        init_from(cfg.init, G=G, E=E, G_ema=G_ema)
        source = read_info(cfg.init)  # recorded now: the file at that path may be replaced later
        if dist.is_main:
            with atomic_write(init_file, "w") as fh:
                json.dump({"checkpoint": str(cfg.init), "sha256": source.get("sha256"), "step": source.get("step"),
                           "created_by": source.get("created_by")}, fh, indent=2)
        run.log.info("initialised G%s from %s", " and E" if E is not None else "", cfg.init)
    G_ddp, D_ddp = dist.wrap(G), dist.wrap(D)
    E_ddp = dist.wrap(E) if E is not None else None
    if cfg.compile:
        G_ddp, D_ddp = torch.compile(G_ddp), torch.compile(D_ddp)
        E_ddp = torch.compile(E_ddp) if E_ddp is not None else None
    d_plain = torch.compile(D) if cfg.compile else D  # the G step calls D without DDP: no D gradients to sync
    sampler = harness.BatchSampler(len(pairs), batch=cfg.batch, seed=cfg.seed, rank=dist.rank,
                                   world_size=dist.world_size)
    decay = harness.ema_decay(half_life_images=cfg.ema_half_life_images, batch_images=cfg.batch * dist.world_size)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and dev.type == "cuda"
                else contextlib.nullcontext())
    fixed = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.sample_rows]
    if start >= cfg.steps:
        run.log.info("already at step %d ≥ --steps %d: nothing to train", start, cfg.steps)

    # Loop.
    last: dict[str, float] = {}
    t0, t0_step = time.perf_counter(), start
    stopped = False
    try:
        for step in run.steps(state, total=cfg.steps, snapshot_every=cfg.snapshot_every,
                              postfix_keys=("loss_d", "loss_g", "g_pix")):
            real, label = pairs.batch(sampler.indices(step), device=dev)
            real, label = augment(real, label, crop=cfg.crop, vflip=cfg.vflip, generator=gen)
            real, label = real.contiguous(memory_format=fmt), label.contiguous(memory_format=fmt)
            b = real.shape[0]

            # G (+ E): hinge + feature matching + KL + class-balanced L1, D frozen and not wrapped.
            D.requires_grad_(False)
            with autocast:
                if E_ddp is not None:
                    mu, logvar = (t.float() for t in E_ddp(real))
                    z = reparameterize(mu, logvar, generator=gen)
                else:
                    z = torch.randn(b, cfg.generator.z_dim, device=dev, generator=gen) if cfg.generator.z_dim else None
                fake = G_ddp(label, z)
                pred = d_plain(torch.cat([label, label]), torch.cat([fake, real]))
            pred_fake = [[t[:b] for t in scale] for scale in pred]
            pred_real = [[t[b:] for t in scale] for scale in pred]
            g_adv = -torch.stack([p[-1].float().mean() for p in pred_fake]).mean()
            g_fm = feature_matching(pred_fake, pred_real)
            g_kl = kl_divergence(mu, logvar) if E_ddp is not None else torch.zeros((), device=dev)
            g_pix = class_balanced_l1(fake, real, label) if cfg.pixel_weight > 0 else torch.zeros((), device=dev)
            g_detail = (detail_l1(fake, real, label, sigma=cfg.detail_sigma) if cfg.detail_weight > 0
                        else torch.zeros((), device=dev))
            loss_g = (g_adv + cfg.fm_weight * g_fm + cfg.kl_weight * g_kl + cfg.pixel_weight * g_pix
                      + cfg.detail_weight * g_detail)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            if G_ema is not None:
                harness.ema_update(G_ema, G, decay=decay)

            # D: hinge on concat(label, photo), reals and this step's fakes (detached) in one forward.
            D.requires_grad_(True)
            with autocast:
                pred = D_ddp(torch.cat([label, label]), torch.cat([fake.detach(), real]))
            d_fake = hinge_d([[t[:b] for t in scale] for scale in pred], real=False)
            d_real = hinge_d([[t[b:] for t in scale] for scale in pred], real=True)
            loss_d = d_fake + d_real
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()

            # Log and sample.
            if step % cfg.log_every == 0 or step == cfg.steps:
                keys = ("loss_d", "d_real", "d_fake", "loss_g", "g_adv", "g_fm", "g_kl", "g_pix", "g_detail")
                stats = dist.all_reduce_mean(torch.stack([t.detach().float() for t in
                                                          (loss_d, d_real, d_fake, loss_g, g_adv, g_fm, g_kl, g_pix,
                                                           g_detail)]))
                elapsed, n_steps = time.perf_counter() - t0, step - t0_step
                t0, t0_step = time.perf_counter(), step
                last = dict(zip(keys, stats.tolist()), sec_per_step=elapsed / max(1, n_steps))
                run.log_scalars(step, last)
            if dist.is_main and (step % cfg.sample_every == 0 or step == cfg.steps):
                photo_s, label_s = pairs.batch(fixed, device=dev)
                run.save_grid(step, sample_grid(G_ema if G_ema is not None else G, E, photo_s, label_s,
                                                seed=cfg.seed))
    except harness.StopRequested:
        stopped = True  # state saved by run.steps; still write the inference checkpoint below

    # Snapshot: the inference checkpoints (spectral norm NOT folded: the pipeline folds after loading).
    data = {**pairs.description, "downsample": cfg.downsample, "training": "spade", "preset": cfg.preset}
    if init_file.is_file():  # a fine-tuned renderer names what it started from
        data["init"] = json.loads(init_file.read_text())
    path = run.export(G_ema if G_ema is not None else G, name="spade", data=data, step=state.step, metrics=last,
                      export_to=cfg.export_to)
    if E is not None:
        run.export(E, name="spade_encoder", data=data, step=state.step, metrics=last, export_to=cfg.export_to)
    if cfg.debug_checksums:
        harness.write_checksums(cfg.out, rank=dist.rank, step=state.step, modules=modules)
    run.close()
    harness.shutdown(dist)
    if stopped:
        raise harness.StopRequested
    return path


def main(argv: list[str] | None = None) -> int:
    return harness.run_main(train, parse_args(argv), prog="training.spade")


if __name__ == "__main__":
    raise SystemExit(main())
