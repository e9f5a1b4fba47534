"""Son et al.'s experiment: a lesion U-Net trained on real data plus 0 / 25 / 50 / 75 % synthetic data.

    python -m training.mix_experiment --real data/real --synthetic data/synthetic --test data/test \
        --classes hard_exudate --fractions 0,0.25,0.5,0.75 --seeds 3 --out runs/mix --preset small-cpu

One U-Net per (fraction, seed) in OUT/runs/f{F}-s{S}, all with the same budget (steps and batch of
the preset, or ``--steps``); the fraction is the synthetic share of the training set
(``--share-counting paper``: the paper's rows, ``training.unet.synthetic_count``). Several
``--synthetic`` pools share each run's synthetic count evenly. Each run holds out ``--val-fraction``
of the real pairs (stratified by grade, seeded) and picks its per-class thresholds there
(``training.unet.operating_point``); the test set is never used to choose anything. Re-running
resumes unfinished runs and skips finished evaluations; ``--jobs 2`` trains two runs at once. Each
run is scored on the test set (``training.evaluate_segmentation``, at its recorded thresholds);
OUT/results.md gives mean ± sd over seeds of precision, recall and F1 per fraction, pooled and per
image, as the paper's table, with the thresholds chosen; OUT/results.json holds every number and
OUT/results.png plots them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fundus_studio.checkpoint import config_to_dict, read_info
from fundus_studio.errors import StudioError
from training import harness, unet
from training.evaluate_segmentation import evaluate_checkpoint, finite

AGGREGATIONS: dict[str, str] = {"pooled": "pooled", "per_image": "per image"}
TABLE_METRICS: tuple[str, ...] = ("precision", "recall", "f1")
PLOT_METRICS: dict[str, str] = {"f1": "F1", "precision": "precision", "recall": "recall"}
EVAL_FILE = "eval.json"


@dataclass(frozen=True)
class ExperimentConfig:
    real: tuple[Path, ...]  # real training datasets
    synthetic: tuple[Path, ...]  # the synthetic pools (several share each run's synthetic count evenly)
    test: Path  # the test dataset
    out: Path  # OUT/runs/f{F}-s{S}, OUT/results.{md,json,png}
    classes: tuple[str, ...] = ("hard_exudate",)  # taxonomy classes segmented (one U-Net for all of them)
    fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)  # synthetic shares of the training set
    seeds: int = 5  # seeds 0 … seeds−1 per fraction
    preset: str = "small-cpu"  # training.unet preset (the same budget for every run)
    steps: int | None = None  # override the preset's steps
    share_counting: str = "training-set"  # training-set | paper (training.unet.synthetic_count)
    paper_real: int = unet.PAPER_REAL  # the paper counting's real set size
    val_fraction: float = 0.2  # real pairs held out per run to choose its thresholds (50 real → 10)
    val_split: str = "grade"  # stratified by grade and seeded: a hash split of 50 pairs varies in size and mix
    jobs: int = 1  # runs trained at once, each in its own process (give each --threads 1 on a 2-core machine)
    threads: int | None = None  # torch CPU threads per run
    device: str | None = None  # auto | cpu | cuda
    overrides: tuple[str, ...] = ()  # --set FIELD=VALUE passed to every run

    def __post_init__(self) -> None:
        if not self.synthetic:
            raise ValueError("synthetic: give at least one pool")
        if self.seeds < 1 or self.jobs < 1:
            raise ValueError(f"seeds and jobs must be positive, got {self.seeds}, {self.jobs}")


def run_name(fraction: float, seed: int) -> str:
    return f"f{fraction:g}-s{seed}"


def trainer_args(cfg: ExperimentConfig, fraction: float, seed: int) -> list[str]:
    """The ``python -m training.unet`` arguments of one run."""
    argv = [a for d in cfg.real for a in ("--data", str(d))]
    argv += ["--out", str(cfg.out / "runs" / run_name(fraction, seed)), "--preset", cfg.preset, "--seed", str(seed),
             *(a for p in cfg.synthetic for a in ("--synthetic", str(p))), "--synthetic-fraction", str(fraction),
             "--classes", *cfg.classes, "--val-fraction", str(cfg.val_fraction)]
    for flag, value in (("--steps", cfg.steps), ("--threads", cfg.threads), ("--device", cfg.device)):
        if value is not None:
            argv += [flag, str(value)]
    # No TensorBoard: dozens of short runs, each writer costs seconds to open; metrics.csv holds the same scalars.
    fixed = [f"val_split={cfg.val_split}", f"share_counting={cfg.share_counting}", f"paper_real={cfg.paper_real}",
             "tensorboard=false"]
    return argv + [a for o in (*fixed, *cfg.overrides) for a in ("--set", o)]


def parse_args(argv: list[str] | None = None) -> ExperimentConfig:
    parser = argparse.ArgumentParser(prog="python -m training.mix_experiment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, action="append", required=True, help="real training dataset (repeatable)")
    parser.add_argument("--synthetic", type=Path, action="append", required=True,
                        help="synthetic pool (a studio dataset; repeatable: the pools share the count evenly)")
    parser.add_argument("--test", type=Path, required=True, help="test dataset")
    parser.add_argument("--out", type=Path, required=True, help="experiment folder (re-running resumes it)")
    parser.add_argument("--classes", nargs="+", default=["hard_exudate"],
                        help="classes to segment (default hard_exudate)")
    parser.add_argument("--fractions", default="0,0.25,0.5,0.75", help="comma-separated synthetic shares in [0, 1)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per fraction (0 … N−1, default 5)")
    parser.add_argument("--share-counting", choices=unet.SHARE_COUNTINGS, default="training-set",
                        help="training-set: F = synthetic / (real + synthetic); paper: Son et al.'s rows")
    parser.add_argument("--paper-real", type=int, default=unet.PAPER_REAL,
                        help=f"paper counting: the paper's real set size (default {unet.PAPER_REAL})")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="real pairs held out per run to choose its thresholds (default 0.2)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (default 1)")
    parser.add_argument("--preset", choices=sorted(unet.PRESETS), default="small-cpu", help="training.unet preset")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: the preset's)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a busy shared machine)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="training.unet config override for every run (repeatable)")
    args = parser.parse_args(argv)
    try:
        fractions = tuple(sorted({float(f) for f in args.fractions.split(",") if f.strip()}))
    except ValueError:
        parser.error(f"--fractions: expected comma-separated numbers, got {args.fractions!r}")
    if not fractions or not all(0.0 <= f < 1.0 for f in fractions):
        parser.error(f"--fractions must lie in [0, 1), got {args.fractions!r}")
    try:
        return ExperimentConfig(real=tuple(args.real), synthetic=tuple(args.synthetic), test=args.test, out=args.out,
                                classes=tuple(args.classes), fractions=fractions, seeds=args.seeds,
                                preset=args.preset, steps=args.steps, share_counting=args.share_counting,
                                paper_real=args.paper_real, val_fraction=args.val_fraction, jobs=args.jobs,
                                threads=args.threads, device=args.device, overrides=tuple(args.overrides))
    except ValueError as err:
        parser.error(str(err))
        raise


# --- one run --------------------------------------------------------------------------------------


def train_and_evaluate(cfg: ExperimentConfig, fraction: float, seed: int) -> dict[str, Any]:
    """Train (or resume) one run and score it on the test set at the run's own thresholds; the score is
    cached in the run folder next to the checkpoint hash and thresholds it belongs to."""
    checkpoint = unet.train(unet.parse_args(trainer_args(cfg, fraction, seed)))
    info = read_info(checkpoint)
    cached = checkpoint.parent / EVAL_FILE
    if cached.is_file():
        report = json.loads(cached.read_text())
        if (report.get("checkpoint_sha256") == info["sha256"] and report.get("data") == str(cfg.test)
                and report.get("thresholds") == info["data"].get("thresholds")):
            return {**report, "train_data": info["data"]}
    report = evaluate_checkpoint(checkpoint, cfg.test)
    cached.write_text(json.dumps(report, indent=2))
    return {**report, "train_data": info["data"]}


# --- summary --------------------------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]], *, classes: list[str], fractions: tuple[float, ...]) -> dict[str, Any]:
    """class → fraction → aggregation → metric → {mean, sd (sample, ddof 1), n, values}; beside the
    aggregations, ``threshold`` (the runs' chosen thresholds, same statistics) and ``sizes``
    (the distinct [n_real, n_synthetic] of the runs)."""
    out: dict[str, Any] = {}
    for name in classes:
        out[name] = {}
        for f in fractions:
            mine = [r for r in runs if r["fraction"] == f]
            out[name][f"{f:g}"] = {
                **{agg: {m: _stats([r["metrics"][agg][m][name] for r in mine])
                         for m in (*TABLE_METRICS, "iou", "auprc")} for agg in AGGREGATIONS},
                "threshold": _stats([(r.get("thresholds") or {}).get(name) for r in mine]),
                "sizes": sorted({(r["train_data"]["n_real"], r["train_data"]["n_synthetic"]) for r in mine})}
    return out


def _stats(values: list[float | None]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    return {"mean": float(v.mean()) if v.size else None, "sd": float(v.std(ddof=1)) if v.size > 1 else None,
            "n": int(v.size), "values": values}


def _cell(s: dict[str, Any]) -> str:
    if s["mean"] is None:
        return "–"
    return f"{s['mean']:.3f}" if s["sd"] is None else f"{s['mean']:.3f} ± {s['sd']:.3f}"


def markdown(summary: dict[str, Any], runs: list[dict[str, Any]], *, cfg: ExperimentConfig) -> str:
    lines = [f"# Real + synthetic U-Net training ({cfg.preset}, {len(runs)} runs)", "",
             f"Real: {', '.join(map(str, cfg.real))}; synthetic pool: {cfg.synthetic}; test: {cfg.test} "
             f"({runs[0]['metrics']['images']} images at {runs[0]['size']}²). Mean ± sd (sample sd) over "
             f"{cfg.seeds} seeds. Synthetic share counted {cfg.share_counting!r}"
             f"{f' (paper real set {cfg.paper_real})' if cfg.share_counting == 'paper' else ''}. Each run's per-class "
             f"threshold is chosen on its own validation split ({cfg.val_fraction:g} of the real pairs, by grade; "
             "never the test set). Pooled: TP/FP/FN summed over all test pixels; per image: the mean of per-image "
             "ratios over the images where each is defined (fundus_studio/metrics.py).", ""]
    head = ["synthetic share", "real + synthetic", *(f"{m.replace('f1', 'F1')} ({AGGREGATIONS[a]})"
                                                       for a in AGGREGATIONS for m in TABLE_METRICS), "threshold"]
    for name, by_fraction in summary.items():
        lines += [f"## {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for f, stats in by_fraction.items():
            lines.append("| " + " | ".join([f"{100 * float(f):g} %", ", ".join(f"{a} + {b}" for a, b in stats["sizes"]),
                                            *(_cell(stats[a][m]) for a in AGGREGATIONS for m in TABLE_METRICS),
                                            _cell(stats["threshold"])]) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(summary), len(AGGREGATIONS), figsize=(10, 4 * len(summary)), squeeze=False)
    for row, (name, by_fraction) in enumerate(summary.items()):
        x = np.array([100 * float(f) for f in by_fraction])
        for col, (agg, label) in enumerate(AGGREGATIONS.items()):
            ax = axes[row, col]
            for metric, mlabel in PLOT_METRICS.items():
                s = [by_fraction[f][agg][metric] for f in by_fraction]
                mean = np.array([np.nan if v["mean"] is None else v["mean"] for v in s])
                sd = np.array([0.0 if v["sd"] is None else v["sd"] for v in s])
                ax.errorbar(x, mean, yerr=sd, marker="o", capsize=4, label=mlabel)
            ax.set(title=f"{name} — {label}", xlabel="synthetic share of the training set (%)", ylabel="score",
                   xticks=x, ylim=(0, 1))
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _run_one(cfg: ExperimentConfig, fraction: float, seed: int) -> dict[str, Any]:
    print(f"mix_experiment: run {run_name(fraction, seed)}", file=sys.stderr)
    return train_and_evaluate(cfg, fraction, seed)


def run(cfg: ExperimentConfig) -> Path:
    """Train and score every (fraction, seed), then write OUT/results.{md,json,png}; return results.md."""
    unet.parse_args(trainer_args(cfg, max(cfg.fractions), 0))  # the trainer's own checks, before hours of training
    cfg.out.mkdir(parents=True, exist_ok=True)
    plan = [(fraction, seed) for fraction in cfg.fractions for seed in range(cfg.seeds)]
    if cfg.jobs == 1:
        done = [_run_one(cfg, f, s) for f, s in plan]
    else:  # spawned workers: a forked torch process can deadlock in its thread pools
        with ProcessPoolExecutor(max_workers=cfg.jobs, mp_context=get_context("spawn")) as pool:
            done = list(pool.map(_run_one, [cfg] * len(plan), *zip(*plan)))
    runs = [{"fraction": f, "seed": s, **r} for (f, s), r in zip(plan, done)]
    classes = runs[0]["classes"]
    summary = summarise(runs, classes=classes, fractions=cfg.fractions)
    (cfg.out / "results.json").write_text(json.dumps(finite({
        "config": config_to_dict(cfg),
        "summary": summary,
        "runs": [{k: r[k] for k in ("fraction", "seed", "checkpoint", "checkpoint_step", "thresholds", "train_data",
                                    "metrics")} for r in runs]}), indent=2))
    plot(summary, cfg.out / "results.png")
    path = cfg.out / "results.md"
    path.write_text(markdown(summary, runs, cfg=cfg))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(list(argv) if argv is not None else None)
    try:
        path = run(cfg)
    except harness.StopRequested:
        return 130
    except KeyboardInterrupt:
        print("training.mix_experiment: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    except StudioError as err:
        print(f"training.mix_experiment: error: {err}", file=sys.stderr)
        return 2
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
