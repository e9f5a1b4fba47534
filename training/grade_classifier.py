"""Train the grade classifier that judges generated label maps (``training/evaluate_labels.py``).

    python -m training.grade_classifier --data data/phantoms --out runs/grade_classifier

It trains on real maps, leaving out a deterministic held-out share (by a hash of each sample id) that
the evaluation scores real maps on. Maps are read at ``map_resolution`` and area-averaged to the
network's input side, so small lesions survive as fractions. Built on the shared harness.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fundus_studio.models.grade_classifier import GradeClassifier, GradeClassifierConfig, prepare_maps
from training import harness
from training.ada import ADAConfig, augment

# Label-safe augmentation for the classifier: flips and 90° rotations only.
CLASSIFIER_AUGMENT = ADAConfig(enabled=False, translate=0.0)


@dataclass(frozen=True)
class TrainConfig:
    data: Path = Path("data/phantoms")  # studio dataset; samples without grade are left out
    out: Path = Path("runs/grade_classifier")  # run folder; re-running resumes it
    preset: str = "demo-cpu"  # the preset these values came from (recorded)
    seed: int = 0  # seeds the model, batches and the held-out split
    steps: int = 1500  # TOTAL optimisation steps
    resume: bool = False  # fail unless RUN/state exists
    device: str = "auto"  # auto | cpu | cuda
    export_to: Path | None = None  # also copy grade_classifier.safetensors/.json here
    model: GradeClassifierConfig = field(default_factory=GradeClassifierConfig)  # the architecture
    map_resolution: int = 256  # side maps are read (and generated maps sampled) at before area-averaging
    downsample: str = "area"  # how dataset maps reach map_resolution (match the generator's, to compare alike)
    holdout: float = 0.2  # share of samples held out for evaluation
    batch: int = 32  # maps per rank per step
    lr: float = 1e-3  # AdamW learning rate
    weight_decay: float = 1e-4  # AdamW weight decay
    augment_p: float = 0.5  # probability of each flip / rotation
    balanced: bool = True  # grade-balanced batches
    log_every: int = 20  # steps between metrics rows
    snapshot_every: int = 250  # steps between saved states
    threads: int = 0  # torch CPU threads per process; 0 = torch's default (use 1 on a shared, busy machine)

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "log_every", "snapshot_every", "map_resolution"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.downsample not in harness.DOWNSAMPLE_MODES:
            raise ValueError(f"downsample must be one of {harness.DOWNSAMPLE_MODES}, got {self.downsample!r}")
        if not 0.0 <= self.holdout < 1.0 or not 0.0 <= self.augment_p <= 1.0:
            raise ValueError("holdout must lie in [0, 1) and augment_p in [0, 1]")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be positive and weight_decay non-negative")


PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {"model": {"resolution": 16, "channels": 8, "max_channels": 16, "min_resolution": 4},
              "map_resolution": 32, "steps": 3, "batch": 4, "log_every": 1, "snapshot_every": 2},
    "demo-cpu": {"model": {"resolution": 64, "channels": 16, "max_channels": 64}, "steps": 1500},
    "paper-256": {"model": {"resolution": 128, "channels": 32, "max_channels": 256}, "steps": 10_000,
                  "batch": 64},
}


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m training.grade_classifier", description=__doc__.split("\n\n")[0])
    harness.add_common_arguments(parser, presets=PRESETS, default_preset="demo-cpu")
    args = parser.parse_args(argv)
    given = {k: getattr(args, k) for k in ("data", "out", "steps", "seed", "device", "export_to", "threads")}
    given["resume"] = args.resume or None
    try:
        return harness.resolve(TrainConfig, presets=PRESETS, preset=args.preset, given=given, overrides=args.overrides)
    except ValueError as err:
        parser.error(str(err))
        raise


@torch.no_grad()
def predict(model: GradeClassifier, maps: torch.Tensor, *, batch: int = 64) -> np.ndarray:
    """(N, S, S) uint8 index maps → (N,) predicted grades."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    for chunk in maps.split(batch):
        x = F.one_hot(chunk.to(dev).long(), model.config.num_classes).permute(0, 3, 1, 2).float()
        out.append(model(prepare_maps(x, resolution=model.config.resolution)).argmax(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.int64)


def train(cfg: TrainConfig) -> Path:
    """Train (or resume) the classifier in ``cfg.out``; return its checkpoint path."""
    # Build.
    harness.set_threads(cfg.threads)
    dist = harness.init_distributed(device=cfg.device)
    run = harness.Run(cfg.out, kind="grade_classifier", config=cfg, architecture={"model": cfg.model}, dist=dist,
                      preset=cfg.preset)
    torch.manual_seed(cfg.seed)
    data = harness.load_label_maps(cfg.data, resolution=cfg.map_resolution, require_grade=True,
                                   downsample=cfg.downsample)
    train_idx, held_idx = harness.holdout_split(data.ids, fraction=cfg.holdout, seed=cfg.seed)
    train_set, held_set = data.subset(train_idx), data.subset(held_idx)
    run.log.info("%d training maps, %d held out", len(train_set), len(held_set))
    model = GradeClassifier(cfg.model).to(dist.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=dist.device).manual_seed(cfg.seed * 7919 + dist.rank)
    state = harness.TrainState(modules={"model": model}, optimizers={"model": opt}, generators={"train": gen})

    # Resume.
    run.resume(state, require=cfg.resume)
    ddp = dist.wrap(model)
    sampler = harness.BatchSampler(len(train_set), batch=cfg.batch, seed=cfg.seed, rank=dist.rank,
                                   world_size=dist.world_size,
                                   weights=harness.balanced_weights(train_set.grades) if cfg.balanced else None)

    # Loop.
    for step in run.steps(state, total=cfg.steps, snapshot_every=cfg.snapshot_every, postfix_keys=("loss", "acc")):
        model.train()
        idx = sampler.indices(step)
        x = augment(train_set.one_hot(idx, device=dist.device), p=cfg.augment_p, config=CLASSIFIER_AUGMENT,
                    generator=gen)
        y = train_set.grades[idx].to(dist.device)
        logits = ddp(prepare_maps(x, resolution=cfg.model.resolution))
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            stats = dist.all_reduce_mean(torch.tensor([loss.item(), (logits.argmax(1) == y).float().mean().item()]))
            run.log_scalars(step, {"loss": stats[0].item(), "acc": stats[1].item()})

    # Snapshot, with the held-out accuracy.
    metrics: dict[str, float] = {}
    if len(held_set):
        metrics["heldout_accuracy"] = float((predict(model, held_set.maps) == held_set.grades.numpy()).mean())
        run.log.info("held-out accuracy %.3f on %d maps", metrics["heldout_accuracy"], len(held_set))
    description = {**data.description, "training": "grade_classifier", "holdout": cfg.holdout,
                   "holdout_seed": cfg.seed, "map_resolution": cfg.map_resolution,
                   "heldout_ids": list(held_set.ids)}
    path = run.export(model, name="grade_classifier", data=description, step=state.step, metrics=metrics,
                      export_to=cfg.export_to)
    run.close()
    harness.shutdown(dist)
    return path


def main(argv: list[str] | None = None) -> int:
    return harness.run_main(train, parse_args(argv), prog="training.grade_classifier")


if __name__ == "__main__":
    raise SystemExit(main())
