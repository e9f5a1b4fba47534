"""Train the grade-conditioned label-map ACGAN (Son et al.) with adaptive augmentation.

    python -m training.acgan --data data/phantoms --out runs/acgan --preset demo-cpu
    torchrun --standalone --nproc_per_node 2 -m training.acgan --data ... --out ...   # DDP

Per step: one D update (hinge + auxiliary grade CE on reals and fakes), then ``g_steps`` G updates
(hinge + weighted auxiliary grade CE on its fakes — the term the paper's code left out of G's loss).
Reals and fakes pass through the same label-safe ADA before D. Re-running resumes; ``--steps`` is
the total. Samples without a grade are left out of the data (the model is grade-conditioned).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fundus_studio.labels import NUM_GRADES
from fundus_studio.models.acgan import ACGANConfig, Discriminator, Generator, mbstd_group_size
from fundus_studio.pipeline import LabelSampler, LabelSamplingConfig, probabilities_to_labels
from training import harness
from training.ada import ADAConfig, AdaptiveAugment

FAKE_INPUTS: tuple[str, ...] = ("softmax", "straight-through")
MODE_SEEKING_EPS: float = 1e-5  # MSGAN's denominator guard


@dataclass(frozen=True)
class TrainConfig:
    data: Path = Path("data/phantoms")  # studio dataset; only samples with a grade are used
    out: Path = Path("runs/acgan")  # run folder; re-running resumes it
    preset: str = "demo-cpu"  # the preset these values came from (recorded)
    seed: int = 0  # seeds models, batches, latents and ADA
    steps: int = 3000  # TOTAL steps; one step = 1 D update + g_steps G updates
    resume: bool = False  # fail unless RUN/state exists (resuming is automatic anyway)
    device: str = "auto"  # auto | cpu | cuda
    export_to: Path | None = None  # also copy acgan.safetensors/.json here
    model: ACGANConfig = field(default_factory=ACGANConfig)  # the architecture
    ada: ADAConfig = field(default_factory=ADAConfig)  # adaptive augmentation
    batch: int = 16  # maps per rank per step
    lr_g: float = 2e-4  # Adam learning rate of G
    lr_d: float = 2e-4  # Adam learning rate of D
    betas: tuple[float, float] = (0.0, 0.99)  # Adam betas (GAN practice: no first-moment momentum)
    g_steps: int = 2  # G updates per D update (the paper's 2)
    aux_weight_d: float = 1.0  # weight of D's grade CE on reals and fakes
    aux_weight_g: float = 1.0  # weight of G's grade CE on its fakes
    aux_d_on_fakes: bool = True  # D's grade CE on fakes too (Odena); False = reals only (see docs: collapse)
    aux_label_smoothing: float = 0.0  # label smoothing of D's grade CE (keeps D's classifier from overconfidence)
    r1_gamma: float = 0.0  # R1 penalty weight on augmented reals (0 = off)
    mode_seeking_weight: float = 0.0  # MSGAN term (Mao et al. 2019) against z being ignored; 0 = off
    fake_input: str = "softmax"  # what D sees of a fake: softmax | straight-through (one-hot forward)
    balanced: bool = False  # draw batches grade-balanced (with replacement)
    downsample: str = "area"  # how dataset maps are brought to model.resolution (harness.resize_index_map);
    # "fractions": D sees reals as soft class fractions (thin vessels survive as partial occupancy)
    ema_half_life_images: float = 10_000.0  # G_ema's weight half-life in generated images
    log_every: int = 10  # steps between metrics rows
    sample_every: int = 250  # steps between sample grids
    sample_cols: int = 8  # samples per grade in a grid
    snapshot_every: int = 250  # steps between saved states
    amp: bool = False  # bf16 autocast (CUDA only)
    compile: bool = False  # torch.compile G and D
    channels_last: bool = True  # NHWC memory format: about 2× faster convolutions on CPU (PERF.md)
    threads: int = 0  # torch CPU threads per process; 0 = torch's default (use 1 on a shared, busy machine)
    debug_checksums: bool = False  # each rank writes RUN/checksums/rank<r>.json (weight hashes) at the end

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "g_steps", "log_every", "sample_every", "sample_cols", "snapshot_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.fake_input not in FAKE_INPUTS:
            raise ValueError(f"fake_input must be one of {FAKE_INPUTS}, got {self.fake_input!r}")
        if min(self.lr_g, self.lr_d) <= 0 or min(self.aux_weight_d, self.aux_weight_g, self.r1_gamma,
                                                  self.mode_seeking_weight) < 0:
            raise ValueError("learning rates must be positive and loss weights non-negative")
        if not 0.0 <= self.aux_label_smoothing < 1.0:
            raise ValueError(f"aux_label_smoothing must lie in [0, 1), got {self.aux_label_smoothing}")
        if self.downsample == "fractions" and self.fake_input != "softmax":
            raise ValueError("soft reals (downsample='fractions') need soft fakes: fake_input='softmax'")
        if self.model.mbstd_group and self.batch % mbstd_group_size(2 * self.batch, self.model.mbstd_group):
            raise ValueError(f"batch {self.batch} would mix reals and fakes in one minibatch-stddev group of "
                             f"{mbstd_group_size(2 * self.batch, self.model.mbstd_group)}: use a multiple of "
                             f"model.mbstd_group={self.model.mbstd_group}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")


# Trains in well under an hour on 2 CPU cores; sampled at 64² and upsampled.
DEMO_CPU: dict[str, Any] = {
    "model": {"resolution": 64, "z_dim": 64, "grade_dim": 16, "g_channels": 8, "g_max_channels": 128,
              "d_channels": 8, "d_max_channels": 64},
    "ada": {"speed_images": 100_000},
    "batch": 16, "steps": 3000, "downsample": "keep-lesions", "ema_half_life_images": 5_000.0,
    # Against intra-grade mode collapse (docs/training.md, "Mode collapse"): D judges one-hot fakes
    # (straight-through), as it judges one-hot reals; minibatch stddev in D (model default); D's grade
    # classifier on reals only, label-smoothed; D ahead of G (TTUR-style
    # learning rates, one G update per D update instead of the paper's two).
    "fake_input": "straight-through", "lr_g": 2e-4, "lr_d": 4e-4, "g_steps": 1, "aux_d_on_fakes": False,
    "aux_label_smoothing": 0.1, "aux_weight_g": 1.0,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Seconds on a laptop CPU: the tests' recipe.
    "smoke": {
        "model": {"resolution": 32, "z_dim": 32, "grade_dim": 8, "g_channels": 8, "g_max_channels": 32,
                  "d_channels": 8, "d_max_channels": 16},
        "ada": {"speed_images": 1000, "interval": 1},
        "batch": 4, "steps": 4, "log_every": 1, "sample_every": 2, "sample_cols": 2, "snapshot_every": 2,
        "ema_half_life_images": 100.0,
    },
    "demo-cpu": DEMO_CPU,
    # demo-cpu on soft maps: reals are 64² class fractions and fakes G's softmax, so a vessel is a
    # partial occupancy for both; the label upsampler turns the result into sharp 512² classes.
    "soft-cpu": {**DEMO_CPU, "downsample": "fractions", "fake_input": "softmax"},
    # The paper's scale (256², ≈ 10 : 1 G : D), for GPUs.
    "paper-256": {
        "model": {"resolution": 256, "z_dim": 128, "grade_dim": 32, "g_channels": 16, "g_max_channels": 192,
                  "d_channels": 8, "d_max_channels": 48},
        "ada": {"speed_images": 500_000},
        "batch": 64, "steps": 40_000, "amp": True, "downsample": "area", "ema_half_life_images": 10_000.0,
        "sample_every": 1000, "snapshot_every": 1000, "log_every": 50,
    },
}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m training.acgan", description=__doc__.split("\n\n")[0])
    harness.add_common_arguments(parser, presets=PRESETS, default_preset="demo-cpu")
    parser.add_argument("--batch", type=int, default=None, help="maps per rank per step")
    parser.add_argument("--balanced", action="store_const", const=True, default=None, help="grade-balanced batches")
    parser.add_argument("--debug-checksums", action="store_const", const=True, default=None,
                        help="write per-rank weight hashes to RUN/checksums/ (checks DDP sync)")
    args = parser.parse_args(argv)
    given = {k: getattr(args, k) for k in ("data", "out", "steps", "seed", "device", "export_to", "threads", "batch",
                                           "balanced", "debug_checksums")}
    given["resume"] = args.resume or None
    try:
        return harness.resolve(TrainConfig, presets=PRESETS, preset=args.preset, given=given, overrides=args.overrides)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


# --- losses (Son et al. §2.1; Odena et al. ACGAN; hinge loss of Miyato et al.) --------------------


def to_d_input(logits: torch.Tensor, *, mode: str) -> torch.Tensor:
    """G's logits → the map D judges: softmax, or one-hot in the forward pass with softmax gradients."""
    probs = logits.float().softmax(dim=1)
    if mode == "softmax":
        return probs
    hard = F.one_hot(probs.argmax(dim=1), probs.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    return hard + probs - probs.detach()


def mode_seeking_loss(fake: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """MSGAN (Mao et al. 2019, eq. 3): 1 / (mean |G(z1) - G(z2)| / mean |z1 - z2|) over the pairs
    (first half, second half) of a batch whose halves share their grades; small when G ignores z."""
    h = fake.shape[0] // 2
    ratio = (fake[:h] - fake[h:2 * h]).abs().mean(dim=(1, 2, 3)) / (z[:h] - z[h:2 * h]).abs().mean(dim=1)
    return 1.0 / (ratio.mean() + MODE_SEEKING_EPS)



def within_grade_disagreement(maps: np.ndarray) -> float:
    """(grades, cols, H, W) maps → mean fraction of pixels on which two maps of one grade differ, over
    all pairs (the evaluation's diversity measure; ≈ 0 when G ignores z)."""
    n = maps.shape[1]
    pairs = [(maps[:, i] != maps[:, j]).mean() for i in range(n) for j in range(i + 1, n)]
    return float(np.mean(pairs)) if pairs else float("nan")


def sample_grid(g_ema: Generator, *, seed: int, cols: int) -> tuple[np.ndarray, float]:
    """One row per grade, ``cols`` maps each (same latents per column), at the generator's resolution;
    returns the grid image and the maps' within-grade disagreement."""
    sampler = LabelSampler(g_ema, config=LabelSamplingConfig(size=g_ema.config.resolution),
                           device=next(g_ema.parameters()).device)
    grades = [g for g in range(NUM_GRADES) for _ in range(cols)]
    z = sampler.latents(count=cols, seed=seed).repeat(NUM_GRADES, 1)
    with torch.no_grad():
        probs = sampler.probabilities(z, torch.tensor(grades))
    maps = probabilities_to_labels(probs, size=g_ema.config.resolution).cpu().numpy()
    maps = maps.reshape(NUM_GRADES, cols, *maps.shape[1:])
    return harness.label_grid(maps), within_grade_disagreement(maps)


# --- training -----------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) the ACGAN in ``cfg.out``; return the inference checkpoint's path."""
    # Build.
    harness.set_threads(cfg.threads)
    dist = harness.init_distributed(device=cfg.device)
    run = harness.Run(cfg.out, kind="acgan", config=cfg, architecture={"model": cfg.model}, dist=dist,
                      preset=cfg.preset)
    dev = dist.device
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    data = harness.load_label_maps(cfg.data, resolution=cfg.model.resolution, require_grade=True,
                                   downsample=cfg.downsample)
    run.log.info("data: %d graded maps at %d² (grades %s; %d without grade left out)", len(data),
                 cfg.model.resolution, data.description["grade_counts"], data.description["skipped_without_grade"])
    # "fractions": reals are soft class fractions, so D compares soft with soft (fake_input softmax)
    soft_reals = cfg.downsample == "fractions"
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    G = Generator(cfg.model).to(dev, memory_format=fmt)
    D = Discriminator(cfg.model).to(dev, memory_format=fmt)
    G_ema = harness.make_ema(G)
    n_g, n_d = (sum(p.numel() for p in m.parameters()) for m in (G, D))
    run.log.info("G %.2f M parameters, D %.2f M (G : D = %.1f : 1)", n_g / 1e6, n_d / 1e6, n_g / n_d)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=cfg.betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=cfg.betas)
    ada = AdaptiveAugment(cfg.ada)
    gen = torch.Generator(device=dev).manual_seed(cfg.seed * 7919 + dist.rank)  # latents, fake grades, ADA
    state = harness.TrainState(modules={"G": G, "D": D, "G_ema": G_ema}, optimizers={"G": opt_g, "D": opt_d},
                               extras={"ada": ada}, generators={"train": gen})

    # Resume.
    start = run.resume(state, require=cfg.resume)
    G_ddp, D_ddp = dist.wrap(G), dist.wrap(D)
    if cfg.compile:
        G_ddp, D_ddp = torch.compile(G_ddp), torch.compile(D_ddp)
    d_plain = torch.compile(D) if cfg.compile else D  # G steps call D without DDP: no D gradients to sync
    sampler = harness.BatchSampler(len(data), batch=cfg.batch, seed=cfg.seed, rank=dist.rank,
                                   world_size=dist.world_size,
                                   weights=harness.balanced_weights(data.grades) if cfg.balanced else None)
    decay = harness.ema_decay(half_life_images=cfg.ema_half_life_images,
                              batch_images=cfg.batch * dist.world_size * cfg.g_steps)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and dev.type == "cuda"
                else contextlib.nullcontext())
    if start >= cfg.steps:
        run.log.info("already at step %d ≥ --steps %d: nothing to train", start, cfg.steps)

    # Loop.
    last: dict[str, float] = {}
    t0, t0_step = time.perf_counter(), start
    stopped = False
    try:
        for step in run.steps(state, total=cfg.steps, snapshot_every=cfg.snapshot_every,
                              postfix_keys=("loss_d", "loss_g", "ada_p", "r_t")):
            idx = sampler.indices(step)
            real = data.soft(idx, device=dev) if soft_reals else data.one_hot(idx, device=dev)
            real, y_real = real.contiguous(memory_format=fmt), data.grades[idx].to(dev)
            b = real.shape[0]

            # D: hinge on realness + grade CE on reals (and fakes), one forward for both halves (group-
            # aligned, so minibatch-stddev groups never mix reals and fakes).
            D.requires_grad_(True)
            with torch.no_grad(), autocast:
                z = torch.randn(b, cfg.model.z_dim, device=dev, generator=gen)
                fake = to_d_input(G(z, y_real), mode=cfg.fake_input)
            real_in = real.requires_grad_(cfg.r1_gamma > 0)
            x = torch.cat([ada(real_in, generator=gen), ada(fake.float(), generator=gen)])
            with autocast:
                realness, grade_logits = D_ddp(x)
            realness, grade_logits = realness.float(), grade_logits.float()
            r_real, r_fake = realness[:b], realness[b:]
            ce = F.cross_entropy(grade_logits[:b], y_real, label_smoothing=cfg.aux_label_smoothing)
            if cfg.aux_d_on_fakes:
                ce = ce + F.cross_entropy(grade_logits[b:], y_real, label_smoothing=cfg.aux_label_smoothing)
            loss_d = F.relu(1 - r_real).mean() + F.relu(1 + r_fake).mean() + cfg.aux_weight_d * ce
            if cfg.r1_gamma > 0:
                (grad,) = torch.autograd.grad(r_real.sum(), real_in, create_graph=True)
                loss_d = loss_d + cfg.r1_gamma / 2 * grad.square().sum(dim=(1, 2, 3)).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            signs = dist.all_reduce_sum(torch.tensor([r_real.detach().sign().sum().item(), float(b)]))
            ada.accumulate(sign_sum=float(signs[0]), count=int(signs[1]))

            # G: hinge + weighted grade CE on its own fakes (the term missing from the paper's code).
            D.requires_grad_(False)
            for _ in range(cfg.g_steps):
                z = torch.randn(b, cfg.model.z_dim, device=dev, generator=gen)
                y = y_real[torch.randperm(b, device=dev, generator=gen)]
                if cfg.mode_seeking_weight > 0:
                    y = torch.cat([y[: b // 2], y[: b - b // 2]])  # pairs of halves share their grades
                with autocast:
                    fake = to_d_input(G_ddp(z, y), mode=cfg.fake_input)
                    r_g, g_logits = d_plain(ada(fake.float(), generator=gen))
                loss_adv = -r_g.float().mean()
                loss_aux = F.cross_entropy(g_logits.float(), y)
                loss_g = loss_adv + cfg.aux_weight_g * loss_aux
                if cfg.mode_seeking_weight > 0:
                    loss_g = loss_g + cfg.mode_seeking_weight * mode_seeking_loss(fake.float(), z)
                opt_g.zero_grad(set_to_none=True)
                loss_g.backward()
                opt_g.step()
                harness.ema_update(G_ema, G, decay=decay)

            # Log and sample.
            if step % cfg.log_every == 0 or step == cfg.steps:
                stats = dist.all_reduce_mean(torch.tensor([
                    loss_d.item(), loss_g.item(), loss_aux.item(), r_real.mean().item(), r_fake.mean().item(),
                    (grade_logits[:b].argmax(1) == y_real).float().mean().item(),
                    (g_logits.argmax(1) == y).float().mean().item()]))
                elapsed, n_steps = time.perf_counter() - t0, step - t0_step
                t0, t0_step = time.perf_counter(), step
                # acc_real: D's grade accuracy on reals; acc_fake: on G's fakes (does G obey the grade?)
                last = dict(zip(("loss_d", "loss_g", "loss_g_aux", "d_real", "d_fake", "acc_real", "acc_fake"),
                                stats.tolist()))
                last.update(ada_p=ada.p, r_t=ada.r_t, sec_per_step=elapsed / max(1, n_steps))
                run.log_scalars(step, last)
            if dist.is_main and (step % cfg.sample_every == 0 or step == cfg.steps):
                grid, diversity = sample_grid(G_ema, seed=cfg.seed, cols=cfg.sample_cols)
                run.save_grid(step, grid)
                run.log.info("step %d: within-grade disagreement of G_ema samples %.3f", step, diversity)
    except harness.StopRequested:
        stopped = True  # state saved by run.steps; still write the inference checkpoint below

    # Snapshot: the inference checkpoint from the EMA weights (also when stopped by Ctrl-C).
    path = run.export(G_ema, name="acgan", step=state.step, metrics=last, export_to=cfg.export_to,
                      data={**data.description, "training": "acgan", "preset": cfg.preset})
    if cfg.debug_checksums:
        harness.write_checksums(cfg.out, rank=dist.rank, step=state.step, modules={"G": G, "D": D, "G_ema": G_ema},
                                ada_p=ada.p)
    run.close()
    harness.shutdown(dist)
    if stopped:
        raise harness.StopRequested
    return path


def main(argv: list[str] | None = None) -> int:
    return harness.run_main(train, parse_args(argv), prog="training.acgan")


if __name__ == "__main__":
    raise SystemExit(main())
