"""Train the label upsampler: coarse class fractions → sharp classes at full size, on real maps only.

    python -m training.label_upsampler --data data/phantoms --out runs/label_upsampler --preset demo-cpu

Inputs are the area fractions of real maps at the coarse side (what the flow prior and the soft
ACGAN generate), lightly perturbed so that the upsampler tolerates generated fractions; targets are the
full-size maps. Loss: cross-entropy plus a soft Dice over the thin classes (disc, vessels, lesions),
which keeps a 2-px vessel 2 px wide where plain CE would let it thicken or vanish. Trained on aligned
random crops (the network is fully convolutional). Re-running resumes; ``--steps`` is the total.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fundus_studio.labels import NUM_CLASSES, OUTSIDE, RETINA
from fundus_studio.models.label_flow import LabelUpsampler, UpsamplerConfig
from training import harness

DICE_EPS: float = 1.0  # smoothing of the soft Dice (in pixels)


@dataclass(frozen=True)
class TrainConfig:
    data: Path = Path("data/phantoms")  # studio dataset at the upsampler's output size
    out: Path = Path("runs/label_upsampler")  # run folder; re-running resumes it
    preset: str = "demo-cpu"  # the preset these values came from (recorded)
    seed: int = 0  # seeds the model, crops and perturbations
    steps: int = 2000  # TOTAL optimisation steps
    resume: bool = False  # fail unless RUN/state exists
    device: str = "auto"  # auto | cpu | cuda
    export_to: Path | None = None  # also copy label_upsampler.safetensors/.json here
    model: UpsamplerConfig = field(default_factory=UpsamplerConfig)  # the architecture
    batch: int = 8  # crops per rank per step
    crop: int = 256  # side of a training crop at full size (a multiple of model.factor)
    lr: float = 1e-3  # Adam learning rate
    dice_weight: float = 1.0  # weight of the soft Dice over the thin classes
    noise: float = 0.03  # largest sd of the Gaussian perturbation of the input fractions
    log_every: int = 10  # steps between metrics rows
    sample_every: int = 250  # steps between sample grids
    snapshot_every: int = 250  # steps between saved states
    channels_last: bool = True  # NHWC memory format (faster convolutions on CPU)
    threads: int = 0  # torch CPU threads; 0 = torch's default

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "crop", "log_every", "sample_every", "snapshot_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.crop % self.model.factor or self.crop > self.model.resolution:
            raise ValueError(f"crop {self.crop} must be a multiple of model.factor={self.model.factor} and at most "
                             f"the output side {self.model.resolution}")
        if self.lr <= 0 or self.dice_weight < 0 or self.noise < 0:
            raise ValueError("lr must be positive; dice_weight and noise non-negative")


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds: the tests' recipe (32² → 64²).
    "smoke": {"model": {"coarse_resolution": 8, "factor": 4, "channels": (8, 8, 8), "coarse_blocks": 1},
              "batch": 2, "crop": 16, "steps": 4, "log_every": 1, "sample_every": 2, "snapshot_every": 2},
    # 64² → 512², about 30 minutes on one CPU core.
    "demo-cpu": {"model": {"coarse_resolution": 64, "factor": 8, "channels": (64, 32, 16, 8)},
                 "batch": 8, "crop": 256, "steps": 2000},
    # 128² → 512², for the flow prior's paper-gpu preset (a finer coarse grid keeps thin vessels).
    "gpu-128": {"model": {"coarse_resolution": 128, "factor": 4, "channels": (96, 64, 32), "coarse_blocks": 3},
                "batch": 32, "crop": 256, "steps": 20_000, "log_every": 50, "sample_every": 1000,
                "snapshot_every": 1000},
}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m training.label_upsampler", description=__doc__.split("\n\n")[0])
    harness.add_common_arguments(parser, presets=PRESETS, default_preset="demo-cpu")
    parser.add_argument("--batch", type=int, default=None, help="crops per rank per step")
    args = parser.parse_args(argv)
    given = {k: getattr(args, k) for k in ("data", "out", "steps", "seed", "device", "export_to", "threads", "batch")}
    given["resume"] = args.resume or None
    try:
        return harness.resolve(TrainConfig, presets=PRESETS, preset=args.preset, given=given, overrides=args.overrides)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable


# --- procedure ----------------------------------------------------------------------------------


def coarse_fractions(one_hot: torch.Tensor, *, factor: int) -> torch.Tensor:
    """(B, C, H, W) one-hot → (B, C, H/f, W/f) area fractions (what the priors generate)."""
    return F.avg_pool2d(one_hot, factor)


def perturb(fractions: torch.Tensor, *, max_sd: float, generator: torch.Generator) -> torch.Tensor:
    """Add Gaussian noise of a random sd in [0, max_sd] per sample, clip and renormalise: generated
    fractions are never exactly the area fractions of a real map."""
    b = fractions.shape[0]
    sd = torch.rand(b, 1, 1, 1, generator=generator, device=fractions.device) * max_sd
    noisy = (fractions + sd * torch.randn(fractions.shape, generator=generator, device=fractions.device)).clamp(min=0)
    return noisy / noisy.sum(dim=1, keepdim=True).clamp(min=1e-6)


def thin_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − soft Dice, averaged over the classes other than outside and retina, over the classes present
    in the batch (absent classes are handled by the CE alone). logits (B, C, H, W), target (B, H, W)."""
    probs = logits.float().softmax(dim=1)
    one_hot = F.one_hot(target, probs.shape[1]).permute(0, 3, 1, 2).float()
    thin = [k for k in range(probs.shape[1]) if k not in (OUTSIDE, RETINA)]
    p, t = probs[:, thin], one_hot[:, thin]
    inter, total = (p * t).sum(dim=(0, 2, 3)), (p + t).sum(dim=(0, 2, 3))
    present = t.sum(dim=(0, 2, 3)) > 0
    if not present.any():
        return logits.new_zeros(())
    dice = (2 * inter + DICE_EPS) / (total + DICE_EPS)
    return 1 - dice[present].mean()


def random_crops(maps: torch.Tensor, index: torch.Tensor, *, crop: int, align: int,
                 generator: torch.Generator) -> torch.Tensor:
    """(N, S, S) maps → (B, crop, crop) crops of maps[index] at ``align``-aligned offsets, each flipped
    left-right with probability ½ (left and right eyes)."""
    side = maps.shape[-1]
    cells = (side - crop) // align + 1
    offs = torch.randint(cells, (len(index), 2), generator=generator) * align
    flips = torch.rand(len(index), generator=generator) < 0.5
    out = torch.stack([maps[i, y: y + crop, x: x + crop] for i, (y, x) in zip(index.tolist(), offs.tolist())])
    out[flips] = out[flips].flip(-1)
    return out


def sample_grid(model: LabelUpsampler, maps: torch.Tensor, *, count: int) -> np.ndarray:
    """Rows: real map, its coarse fractions upsampled bilinearly, and by the model (arg-maxed)."""
    f = model.config.factor
    with torch.no_grad():
        one_hot = F.one_hot(maps[:count].long(), NUM_CLASSES).permute(0, 3, 1, 2).float()
        coarse = coarse_fractions(one_hot, factor=f)
        bilinear = F.interpolate(coarse, scale_factor=float(f), mode="bilinear", align_corners=False).argmax(1)
        learned = model(coarse.contiguous(memory_format=torch.channels_last)).argmax(1)
    rows = np.stack([maps[:count].numpy(), bilinear.numpy().astype(np.uint8), learned.numpy().astype(np.uint8)])
    return harness.label_grid(rows)


# --- training -----------------------------------------------------------------------------------


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) the upsampler in ``cfg.out``; return the inference checkpoint's path."""
    # Build.
    harness.set_threads(cfg.threads)
    dist = harness.init_distributed(device=cfg.device)
    run = harness.Run(cfg.out, kind="label_upsampler", config=cfg, architecture={"model": cfg.model}, dist=dist,
                      preset=cfg.preset)
    dev = dist.device
    torch.manual_seed(cfg.seed)
    side = cfg.model.resolution
    data = harness.load_label_maps(cfg.data, resolution=side, require_grade=False, downsample="nearest")
    run.log.info("data: %d maps at %d² (coarse %d²)", len(data), side, cfg.model.coarse_resolution)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = LabelUpsampler(cfg.model).to(dev, memory_format=fmt)
    run.log.info("upsampler %.3f M parameters", sum(p.numel() for p in model.parameters()) / 1e6)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr * 0.05)
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + dist.rank)
    state = harness.TrainState(modules={"model": model}, optimizers={"model": opt}, extras={"sched": sched},
                               generators={"train": gen})

    # Resume.
    start = run.resume(state, require=cfg.resume)
    model_ddp = dist.wrap(model)
    sampler = harness.BatchSampler(len(data), batch=cfg.batch, seed=cfg.seed, rank=dist.rank,
                                   world_size=dist.world_size)
    if start >= cfg.steps:
        run.log.info("already at step %d ≥ --steps %d: nothing to train", start, cfg.steps)

    # Loop.
    last: dict[str, float] = {}
    t0, t0_step = time.perf_counter(), start
    stopped = False
    try:
        for step in run.steps(state, total=cfg.steps, snapshot_every=cfg.snapshot_every,
                              postfix_keys=("loss", "ce", "dice")):
            target = random_crops(data.maps, sampler.indices(step), crop=cfg.crop, align=cfg.model.factor,
                                  generator=gen).long()
            one_hot = F.one_hot(target, NUM_CLASSES).permute(0, 3, 1, 2).float()
            inp = perturb(coarse_fractions(one_hot, factor=cfg.model.factor), max_sd=cfg.noise, generator=gen)
            logits = model_ddp(inp.to(dev).contiguous(memory_format=fmt))
            target = target.to(dev)
            ce = F.cross_entropy(logits.float(), target)
            dice = thin_dice_loss(logits, target)
            loss = ce + cfg.dice_weight * dice
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()

            # Log and sample.
            if step % cfg.log_every == 0 or step == cfg.steps:
                stats = dist.all_reduce_mean(torch.tensor([loss.item(), ce.item(), dice.item()]))
                elapsed, n_steps = time.perf_counter() - t0, step - t0_step
                t0, t0_step = time.perf_counter(), step
                last = dict(zip(("loss", "ce", "dice"), stats.tolist()))
                last.update(lr=sched.get_last_lr()[0], sec_per_step=elapsed / max(1, n_steps))
                run.log_scalars(step, last)
            if dist.is_main and (step % cfg.sample_every == 0 or step == cfg.steps):
                run.save_grid(step, sample_grid(model, data.maps, count=4))
    except harness.StopRequested:
        stopped = True

    # Snapshot.
    path = run.export(model, name="label_upsampler", step=state.step, metrics=last, export_to=cfg.export_to,
                      data={**data.description, "training": "label_upsampler", "preset": cfg.preset})
    run.close()
    harness.shutdown(dist)
    if stopped:
        raise harness.StopRequested
    return path


def main(argv: list[str] | None = None) -> int:
    return harness.run_main(train, parse_args(argv), prog="training.label_upsampler")


if __name__ == "__main__":
    raise SystemExit(main())
