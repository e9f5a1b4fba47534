"""Train the grade-conditioned flow-matching prior over coarse soft label maps.

    python -m training.label_flow --data data/phantoms --out runs/label_flow --preset demo-cpu

Flow matching with straight paths (Lipman et al. 2023, eq. 23; rectified flow, Liu et al. 2023): for
a real map's class fractions f at the coarse side, x_1 = 2 f − 1, noise x_0 ~ N(0, I), a time t drawn
logit-normal (Esser et al. 2024, §3.1) or, with probability ``t_uniform``, uniformly — the logit-normal
alone almost never draws t > 0.9, and a velocity untrained there leaves the last noise in the map as
speckles of every class — x_t = (1 − t) x_0 + t x_1, and the network regresses the
velocity x_1 − x_0. A plain regression loss: nothing to balance, no mode to collapse into. The grade is
dropped with probability ``uncond_prob`` so that sampling can use classifier-free guidance (Ho &
Salimans 2022). Maps are flipped left-right at random (left and right eyes). Re-running resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fundus_studio.labels import NUM_GRADES
from fundus_studio.models.label_flow import FlowUNet, LabelFlowConfig
from fundus_studio.pipeline import FlowSamplingConfig, integrate_flow, probabilities_to_labels
from training import harness
from training.acgan import within_grade_disagreement


@dataclass(frozen=True)
class TrainConfig:
    data: Path = Path("data/phantoms")  # studio dataset; only samples with a grade are used
    out: Path = Path("runs/label_flow")  # run folder; re-running resumes it
    preset: str = "demo-cpu"  # the preset these values came from (recorded)
    seed: int = 0  # seeds the model, batches, noise and times
    steps: int = 20_000  # TOTAL optimisation steps
    resume: bool = False  # fail unless RUN/state exists
    device: str = "auto"  # auto | cpu | cuda
    export_to: Path | None = None  # also copy label_flow.safetensors/.json here
    model: LabelFlowConfig = field(default_factory=LabelFlowConfig)  # the architecture
    batch: int = 32  # maps per rank per step
    lr: float = 5e-4  # AdamW learning rate after warm-up
    warmup: int = 200  # steps of linear learning-rate warm-up
    decay_start: int = 0  # 0: constant rate after warm-up; else a cosine decay from this step to lr·lr_min at `steps`
    lr_min: float = 0.05  # the decay's final rate as a fraction of lr
    weight_decay: float = 0.0  # AdamW weight decay
    uncond_prob: float = 0.1  # probability of dropping the grade (classifier-free guidance)
    t_mean: float = 0.0  # mean of the logit-normal time distribution
    t_std: float = 1.0  # sd of the logit-normal time distribution
    t_uniform: float = 0.0  # share of times drawn uniformly instead: trains the ends (t ≈ 1 removes the last noise)
    grad_clip: float = 1.0  # gradient-norm clip
    balanced: bool = True  # grade-balanced batches (with replacement)
    ema_half_life_images: float = 20_000.0  # EMA weights' half-life in training images
    log_every: int = 10  # steps between metrics rows
    sample_every: int = 500  # steps between sample grids
    sample_cols: int = 8  # samples per grade in a grid
    snapshot_every: int = 500  # steps between saved states
    keep_every: int = 0  # also export the EMA weights as label_flow-<step> every this many steps (0 = off)
    amp: bool = False  # bf16 autocast (CUDA only)
    channels_last: bool = True  # NHWC memory format
    threads: int = 0  # torch CPU threads; 0 = torch's default

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "log_every", "sample_every", "sample_cols", "snapshot_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or self.warmup < 0 or self.weight_decay < 0 or self.grad_clip <= 0 or self.keep_every < 0:
            raise ValueError("lr and grad_clip must be positive; warmup, weight_decay and keep_every non-negative")
        if not 0 <= self.decay_start < self.steps or not 0 < self.lr_min <= 1:
            raise ValueError(f"decay_start must lie in [0, steps) and lr_min in (0, 1], got {self.decay_start}, "
                             f"{self.lr_min}")
        if not 0.0 <= self.uncond_prob < 1.0:
            raise ValueError(f"uncond_prob must lie in [0, 1), got {self.uncond_prob}")
        if self.t_std <= 0 or not 0.0 <= self.t_uniform <= 1.0:
            raise ValueError(f"t_std must be positive and t_uniform in [0, 1], got {self.t_std}, {self.t_uniform}")


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds: the tests' recipe.
    "smoke": {"model": {"resolution": 16, "channels": (8, 16), "emb_dim": 16, "attention": True},
              "batch": 4, "steps": 4, "warmup": 2, "log_every": 1, "sample_every": 2, "sample_cols": 2,
              "snapshot_every": 2, "ema_half_life_images": 100.0},
    # 64² soft maps on CPU (≈ 1 s a step at one thread): a session of training, sampling ≈ 0.1 s a map.
    "demo-cpu": {"model": {"resolution": 64, "channels": (16, 32, 64, 128), "blocks": 1, "emb_dim": 128},
                 "batch": 32, "steps": 20_000, "keep_every": 1000, "t_uniform": 0.5},
    # GPU scale: 128² soft maps (upsampler factor 4), a wider net.
    "paper-gpu": {"model": {"resolution": 128, "channels": (64, 128, 192, 256, 256), "blocks": 2,
                            "emb_dim": 256},
                  "batch": 128, "steps": 100_000, "amp": True, "lr": 2e-4, "sample_every": 2000,
                  "snapshot_every": 2000, "log_every": 50, "keep_every": 10_000},
}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m training.label_flow", description=__doc__.split("\n\n")[0])
    harness.add_common_arguments(parser, presets=PRESETS, default_preset="demo-cpu")
    parser.add_argument("--batch", type=int, default=None, help="maps per rank per step")
    args = parser.parse_args(argv)
    given = {k: getattr(args, k) for k in ("data", "out", "steps", "seed", "device", "export_to", "threads", "batch")}
    given["resume"] = args.resume or None
    try:
        return harness.resolve(TrainConfig, presets=PRESETS, preset=args.preset, given=given, overrides=args.overrides)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable


# --- procedure ----------------------------------------------------------------------------------


def flow_matching_loss(model: torch.nn.Module, x1: torch.Tensor, grades: torch.Tensor, *, cfg: TrainConfig,
                       generator: torch.Generator) -> torch.Tensor:
    """MSE between the predicted and the straight-path velocity (x1 − x0) at a logit-normal time."""
    b, dev = x1.shape[0], x1.device
    x0 = torch.randn(x1.shape, generator=generator, device=dev)
    t = torch.sigmoid(cfg.t_mean + cfg.t_std * torch.randn(b, generator=generator, device=dev))
    uniform = torch.rand(b, generator=generator, device=dev)
    t = torch.where(torch.rand(b, generator=generator, device=dev) < cfg.t_uniform, uniform, t)
    drop = torch.rand(b, generator=generator, device=dev) < cfg.uncond_prob
    g = torch.where(drop, torch.full_like(grades, NUM_GRADES), grades)
    tt = t.view(b, 1, 1, 1)
    xt = ((1 - tt) * x0 + tt * x1).contiguous(memory_format=torch.channels_last)
    v = model(xt, t, g)
    return F.mse_loss(v.float(), x1 - x0)


def sample_grid(model: FlowUNet, *, seed: int, cols: int) -> tuple[np.ndarray, float]:
    """One row per grade, ``cols`` maps each (same noise per column), at twice the prior's side."""
    r = model.config.resolution
    grades = torch.tensor([g for g in range(NUM_GRADES) for _ in range(cols)])
    noise = torch.randn(cols, model.config.num_classes, r, r,
                        generator=torch.Generator().manual_seed(seed)).repeat(NUM_GRADES, 1, 1, 1)
    dev = next(model.parameters()).device
    with torch.no_grad():
        frac = integrate_flow(model, noise.to(dev), grades.to(dev), config=FlowSamplingConfig())
    maps = probabilities_to_labels(frac, size=2 * r).cpu().numpy().reshape(NUM_GRADES, cols, 2 * r, 2 * r)
    return harness.label_grid(maps), within_grade_disagreement(maps)


# --- training -----------------------------------------------------------------------------------


def lr_factor(step: int, *, cfg: TrainConfig) -> float:
    """The learning rate at ``step`` as a fraction of ``cfg.lr``: linear warm-up, then constant, then
    (when ``decay_start`` is set) a cosine to ``lr_min`` at ``steps``. A function of the step alone, so
    a resumed run — even one given a decay it did not start with — continues on the same curve."""
    factor = min(1.0, (step + 1) / max(1, cfg.warmup))
    if cfg.decay_start and step > cfg.decay_start:
        progress = min(1.0, (step - cfg.decay_start) / (cfg.steps - cfg.decay_start))
        factor *= cfg.lr_min + (1.0 - cfg.lr_min) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) the prior in ``cfg.out``; return the inference checkpoint's path (EMA weights)."""
    # Build.
    harness.set_threads(cfg.threads)
    dist = harness.init_distributed(device=cfg.device)
    run = harness.Run(cfg.out, kind="label_flow", config=cfg, architecture={"model": cfg.model}, dist=dist,
                      preset=cfg.preset)
    dev = dist.device
    torch.manual_seed(cfg.seed)
    data = harness.load_label_maps(cfg.data, resolution=cfg.model.resolution, require_grade=True,
                                   downsample="fractions")
    run.log.info("data: %d graded soft maps at %d² (grades %s)", len(data), cfg.model.resolution,
                 data.description["grade_counts"])
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = FlowUNet(cfg.model).to(dev, memory_format=fmt)
    ema = harness.make_ema(model)
    run.log.info("flow U-Net %.2f M parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, partial(lr_factor, cfg=cfg))
    gen = torch.Generator(device=dev).manual_seed(cfg.seed * 7919 + dist.rank)
    state = harness.TrainState(modules={"model": model, "ema": ema}, optimizers={"model": opt},
                               extras={"sched": sched}, generators={"train": gen})

    # Resume.
    start = run.resume(state, require=cfg.resume)
    model_ddp = dist.wrap(model)
    sampler = harness.BatchSampler(len(data), batch=cfg.batch, seed=cfg.seed, rank=dist.rank,
                                   world_size=dist.world_size,
                                   weights=harness.balanced_weights(data.grades) if cfg.balanced else None)
    decay = harness.ema_decay(half_life_images=cfg.ema_half_life_images, batch_images=cfg.batch * dist.world_size)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.amp and dev.type == "cuda"
                else contextlib.nullcontext())
    if start >= cfg.steps:
        run.log.info("already at step %d ≥ --steps %d: nothing to train", start, cfg.steps)

    # Loop.
    last: dict[str, float] = {}
    t0, t0_step = time.perf_counter(), start
    stopped = False
    try:
        for step in run.steps(state, total=cfg.steps, snapshot_every=cfg.snapshot_every, postfix_keys=("loss",)):
            idx = sampler.indices(step)
            f = data.soft(idx, device=dev)
            flip = torch.rand(len(idx), generator=gen, device=dev) < 0.5
            f = torch.where(flip.view(-1, 1, 1, 1), f.flip(-1), f)
            with autocast:
                loss = flow_matching_loss(model_ddp, 2 * f - 1, data.grades[idx].to(dev), cfg=cfg, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            harness.ema_update(ema, model, decay=decay)

            # Log, sample, keep.
            if step % cfg.log_every == 0 or step == cfg.steps:
                stats = dist.all_reduce_mean(torch.tensor([loss.item(), float(grad_norm)]))
                elapsed, n_steps = time.perf_counter() - t0, step - t0_step
                t0, t0_step = time.perf_counter(), step
                last = dict(zip(("loss", "grad_norm"), stats.tolist()))
                last.update(lr=sched.get_last_lr()[0], sec_per_step=elapsed / max(1, n_steps))
                run.log_scalars(step, last)
            if dist.is_main and (step % cfg.sample_every == 0 or step == cfg.steps):
                grid, diversity = sample_grid(ema, seed=cfg.seed, cols=cfg.sample_cols)
                run.save_grid(step, grid)
                run.log.info("step %d: within-grade disagreement of EMA samples %.3f", step, diversity)
            if cfg.keep_every and step % cfg.keep_every == 0:
                run.export(ema, name=f"label_flow-{step:06d}", step=step, metrics=last,
                           data={**data.description, "training": "label_flow", "preset": cfg.preset})
    except harness.StopRequested:
        stopped = True

    # Snapshot.
    path = run.export(ema, name="label_flow", step=state.step, metrics=last, export_to=cfg.export_to,
                      data={**data.description, "training": "label_flow", "preset": cfg.preset})
    run.close()
    harness.shutdown(dist)
    if stopped:
        raise harness.StopRequested
    return path


def main(argv: list[str] | None = None) -> int:
    return harness.run_main(train, parse_args(argv), prog="training.label_flow")


if __name__ == "__main__":
    raise SystemExit(main())
