"""Fit the per-grade lesion calibration of a label sampler (``label_calibration.json``).

    python -m training.calibrate_labels --checkpoints checkpoints --data data/phantoms-train

For each grade it samples ``--maps-per-grade`` maps (seeded) without calibration, keeps their class
probabilities, and finds for each lesion class the weight on that class's probability (before the
arg-max) at which the class's mean share of the maps equals its mean share in the training maps of
that grade (bisection on the log-weight; a few sweeps over the classes, since one class's pixels can
be another's). A class the training maps never show at a grade gets weight 0 there (never drawn).
Shares are measured at ``--side`` on both sides. The fit (targets, shares before and after) goes into
the JSON with the hashes of the prior and upsampler it is valid for; the Studio, ``fundus-studio
sample`` and the evaluation use it whenever it sits beside the prior it was fitted for
(:mod:`fundus_studio.calibration`). At the defaults it took 9.7 minutes on two CPU cores shared with
another job (reading 3000 training maps, sampling 160 maps, and the bisection's decodes).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fundus_studio import labels
from fundus_studio.calibration import CALIBRATION_FILE, LabelCalibration
from fundus_studio.checkpoint import config_to_dict, paths_for, read_info
from fundus_studio.dataset import MANIFEST_FILE
from fundus_studio.errors import StudioError
from fundus_studio.pipeline import FlowSamplingConfig, LabelSampler, probabilities_to_labels
from fundus_studio.studio import GENERATORS, UPSAMPLER, Studio
from training.evaluate_labels import add_flow_arguments, flow_from_args
from training.harness import load_label_maps


@dataclass(frozen=True)
class CalibrateConfig:
    checkpoints: Path  # the folder holding the prior (and the label upsampler it uses)
    data: Path  # the prior's training maps (a studio dataset with grades): the shares to reach
    out: Path | None = None  # default: label_calibration.json beside the prior
    generator: str = "flow"  # which prior of the folder (see fundus_studio.studio.GENERATORS)
    maps_per_grade: int = 32  # generated maps per grade the weights are fitted on
    # side at which shares are measured, generated and training maps alike: the studio's, since a
    # class's share after the arg-max depends on the side (256² fits gave 0.7–0.8 × at 512², session 9)
    side: int = 512
    seed: int = 0  # sampling seed of the fitted maps
    sweeps: int = 3  # passes over the classes (one class's pixels can be another's)
    iterations: int = 14  # bisection steps per class and pass
    bounds: tuple[float, float] = (-12.0, 14.0)  # log-weight search interval
    threads: int | None = None  # torch CPU threads (None: torch's default)
    flow: FlowSamplingConfig = FlowSamplingConfig()  # how a flow prior is sampled: fit for the setting in use

    def __post_init__(self) -> None:
        if self.maps_per_grade < 1 or self.side < 16 or self.sweeps < 1 or self.iterations < 1:
            raise ValueError("maps_per_grade ≥ 1, side ≥ 16, sweeps ≥ 1 and iterations ≥ 1 are needed")
        if not self.bounds[0] < 0.0 < self.bounds[1]:
            raise ValueError(f"bounds must bracket 0, got {self.bounds}")
        if self.generator not in GENERATORS:
            raise ValueError(f"unknown generator {self.generator!r}; choose one of {', '.join(GENERATORS)}")


def training_shares(data: Path, *, side: int) -> np.ndarray:
    """``(NUM_GRADES, NUM_CLASSES)`` mean share of each class in the training maps of each grade, at
    ``side`` (nearest-neighbour resize: unbiased for shares); NaN for a grade without maps."""
    real = load_label_maps(data, resolution=side, require_grade=True, downsample="nearest")
    maps, grades = real.maps.numpy(), real.grades.numpy()
    out = np.full((labels.NUM_GRADES, labels.NUM_CLASSES), np.nan)
    for g in range(labels.NUM_GRADES):
        if (grades == g).any():
            counts = np.bincount(maps[grades == g].ravel(), minlength=labels.NUM_CLASSES)
            out[g] = counts / counts.sum()
    return out


def shares_of(maps: torch.Tensor) -> np.ndarray:
    """``(N, S, S)`` index maps → ``(NUM_CLASSES,)`` share of each class over all their pixels."""
    counts = torch.bincount(maps.reshape(-1).long(), minlength=labels.NUM_CLASSES).double()
    return (counts / counts.sum()).numpy()


def fit_grade(probs: torch.Tensor, target: np.ndarray, *, cfg: CalibrateConfig,
              fov_radius: float | None) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """The log-weights ``(NUM_CLASSES,)`` of one grade from its maps' probabilities ``(N, C, R, R)``
    and the training shares ``target`` → (log-weights, shares before, shares after)."""
    log_w = torch.zeros(labels.NUM_CLASSES)

    def decode(lw: torch.Tensor) -> torch.Tensor:
        return probabilities_to_labels(probs * lw.exp()[None, :, None, None], size=cfg.side, fov_radius=fov_radius)

    before = shares_of(decode(log_w))
    for k in labels.LESIONS:
        if target[k] == 0.0:
            log_w[k] = -math.inf  # the training maps never show it at this grade
    for _ in range(cfg.sweeps):
        for k in labels.LESIONS:
            if math.isinf(log_w[k]):
                continue
            lo, hi = cfg.bounds
            for _ in range(cfg.iterations):
                log_w[k] = (lo + hi) / 2
                if shares_of(decode(log_w))[k] < target[k]:
                    lo = float(log_w[k])
                else:
                    hi = float(log_w[k])
            log_w[k] = (lo + hi) / 2
    return log_w, before, shares_of(decode(log_w))


def calibrate(cfg: CalibrateConfig) -> LabelCalibration:
    """Fit and return the calibration (written by :func:`main`)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    studio = Studio.from_checkpoints(cfg.checkpoints, generator=cfg.generator)
    prior_path = studio.path(GENERATORS[cfg.generator])
    # The Studio's networks (prior, and the upsampler it uses), sampled the way the fit is for and without
    # any calibration: the fit starts from the plain probabilities.
    loaded = studio.sampler(cfg.generator)
    sampler = LabelSampler(loaded.prior, upsampler=loaded.upsampler, device=loaded.device,
                           config=dataclasses.replace(loaded.config, flow=cfg.flow))
    upsampler_path = studio.path(UPSAMPLER) if sampler.upsampler is not None else None
    target = training_shares(cfg.data, side=cfg.side)
    log_weights = torch.zeros(labels.NUM_GRADES, labels.NUM_CLASSES)
    report: dict[str, Any] = {}
    for g in range(labels.NUM_GRADES):
        if np.isnan(target[g]).any():
            print(f"grade {g}: no training maps; left uncalibrated", file=sys.stderr)
            continue
        z = sampler.latents(count=cfg.maps_per_grade, seed=cfg.seed + g)
        grades = torch.full((cfg.maps_per_grade,), g, dtype=torch.long)
        with torch.no_grad():
            coarse = sampler.probabilities(z, grades)
            probs = torch.cat([sampler.refine(p) for p in coarse.split(sampler.config.upsample_batch)])
        log_weights[g], before, after = fit_grade(probs, target[g], cfg=cfg, fov_radius=sampler.config.fov_radius)
        report[str(g)] = {labels.NAMES[k]: {"training": round(float(target[g, k]), 6),
                                            "uncalibrated": round(float(before[k]), 6),
                                            "calibrated": round(float(after[k]), 6)} for k in labels.LESIONS}
        print(f"grade {g}: " + ", ".join(f"{labels.NAMES[k]} {before[k]:.4f} → {after[k]:.4f} "
                                         f"(training {target[g, k]:.4f})" for k in labels.LESIONS), file=sys.stderr)
    fit = {"data": str(cfg.data), "data_manifest_sha256": hashlib.sha256((cfg.data / MANIFEST_FILE).read_bytes()).hexdigest(),
           "generator": cfg.generator, "flow_sampling": config_to_dict(sampler.config.flow) if sampler.is_flow else None,
           "maps_per_grade": cfg.maps_per_grade, "seed": cfg.seed, "side": cfg.side,
           "sweeps": cfg.sweeps, "iterations": cfg.iterations, "shares": report,
           "command": "python -m training.calibrate_labels " + " ".join(sys.argv[1:])}
    return LabelCalibration(log_weights=log_weights, prior_file=paths_for(prior_path)[0].name,
                            prior_sha256=str(read_info(prior_path)["sha256"]),
                            upsampler_sha256=None if upsampler_path is None else str(read_info(upsampler_path)["sha256"]),
                            fit=fit)


def parse_args(argv: list[str] | None = None) -> CalibrateConfig:
    p = argparse.ArgumentParser(prog="python -m training.calibrate_labels", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=Path, required=True, help="folder with the prior and its label upsampler")
    p.add_argument("--data", type=Path, required=True, help="the prior's training maps (studio dataset with grades)")
    p.add_argument("--out", type=Path, default=None, help=f"default: {CALIBRATION_FILE} in --checkpoints")
    p.add_argument("--generator", default=CalibrateConfig.generator, choices=sorted(GENERATORS))
    p.add_argument("--maps-per-grade", type=int, default=CalibrateConfig.maps_per_grade)
    p.add_argument("--side", type=int, default=CalibrateConfig.side)
    p.add_argument("--seed", type=int, default=CalibrateConfig.seed)
    p.add_argument("--threads", type=int, default=None)
    add_flow_arguments(p)
    args = p.parse_args(argv)
    try:
        return CalibrateConfig(checkpoints=args.checkpoints, data=args.data, out=args.out, generator=args.generator,
                               maps_per_grade=args.maps_per_grade, side=args.side, seed=args.seed, threads=args.threads,
                               flow=flow_from_args(args))
    except ValueError as err:
        p.error(str(err))
        raise


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        calibration = calibrate(cfg)
    except StudioError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = cfg.out or cfg.checkpoints / CALIBRATION_FILE
    calibration.save(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
