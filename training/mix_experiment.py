"""Son et al.'s experiment: a lesion U-Net trained on real data plus 0 / 25 / 50 / 75 % synthetic data.

    python -m training.mix_experiment --real data/real --synthetic data/synthetic --test data/test \
        --classes hard_exudate --fractions 0,0.25,0.5,0.75 --seeds 3 --out runs/mix --preset small-cpu

One U-Net per (fraction, seed) in OUT/runs/f{F}-s{S}, all with the same budget (steps and batch of
the preset, or ``--steps``); the fraction is the synthetic share of the training set. Re-running
resumes unfinished runs and skips finished evaluations. Each run is scored on the test set
(``training.evaluate_segmentation``); OUT/results.md gives mean ± sd over seeds of precision, recall
and F1 per fraction, pooled and per image, as the paper's table; OUT/results.json holds every
number and OUT/results.png plots them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
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
    synthetic: Path  # the synthetic pool
    test: Path  # the test dataset
    out: Path  # OUT/runs/f{F}-s{S}, OUT/results.{md,json,png}
    classes: tuple[str, ...] = ("hard_exudate",)  # taxonomy classes segmented
    fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)  # synthetic shares of the training set
    seeds: int = 3  # seeds 0 … seeds−1 per fraction
    preset: str = "small-cpu"  # training.unet preset (the same budget for every run)
    steps: int | None = None  # override the preset's steps
    threads: int | None = None  # torch CPU threads
    device: str | None = None  # auto | cpu | cuda
    overrides: tuple[str, ...] = ()  # --set FIELD=VALUE passed to every run


def run_name(fraction: float, seed: int) -> str:
    return f"f{fraction:g}-s{seed}"


def trainer_args(cfg: ExperimentConfig, fraction: float, seed: int) -> list[str]:
    """The ``python -m training.unet`` arguments of one run."""
    argv = [a for d in cfg.real for a in ("--data", str(d))]
    argv += ["--out", str(cfg.out / "runs" / run_name(fraction, seed)), "--preset", cfg.preset, "--seed", str(seed),
             "--synthetic", str(cfg.synthetic), "--synthetic-fraction", str(fraction), "--classes", *cfg.classes]
    for flag, value in (("--steps", cfg.steps), ("--threads", cfg.threads), ("--device", cfg.device)):
        if value is not None:
            argv += [flag, str(value)]
    return argv + [a for o in cfg.overrides for a in ("--set", o)]


def parse_args(argv: list[str] | None = None) -> ExperimentConfig:
    parser = argparse.ArgumentParser(prog="python -m training.mix_experiment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, action="append", required=True, help="real training dataset (repeatable)")
    parser.add_argument("--synthetic", type=Path, required=True, help="synthetic pool (a studio dataset)")
    parser.add_argument("--test", type=Path, required=True, help="test dataset")
    parser.add_argument("--out", type=Path, required=True, help="experiment folder (re-running resumes it)")
    parser.add_argument("--classes", nargs="+", default=["hard_exudate"],
                        help="classes to segment (default hard_exudate)")
    parser.add_argument("--fractions", default="0,0.25,0.5,0.75", help="comma-separated synthetic shares in [0, 1)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per fraction (0 … N−1)")
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
    if args.seeds < 1:
        parser.error(f"--seeds must be positive, got {args.seeds}")
    cfg = ExperimentConfig(real=tuple(args.real), synthetic=args.synthetic, test=args.test, out=args.out,
                           classes=tuple(args.classes), fractions=fractions, seeds=args.seeds, preset=args.preset,
                           steps=args.steps, threads=args.threads, device=args.device, overrides=tuple(args.overrides))
    return cfg


# --- one run --------------------------------------------------------------------------------------


def train_and_evaluate(cfg: ExperimentConfig, fraction: float, seed: int) -> dict[str, Any]:
    """Train (or resume) one run and score it on the test set; the score is cached in the run folder
    next to the checkpoint hash it belongs to."""
    checkpoint = unet.train(unet.parse_args(trainer_args(cfg, fraction, seed)))
    info = read_info(checkpoint)
    cached = checkpoint.parent / EVAL_FILE
    if cached.is_file():
        report = json.loads(cached.read_text())
        if report.get("checkpoint_sha256") == info["sha256"] and report.get("data") == str(cfg.test):
            return {**report, "train_data": info["data"]}
    report = evaluate_checkpoint(checkpoint, cfg.test)
    cached.write_text(json.dumps(report, indent=2))
    return {**report, "train_data": info["data"]}


# --- summary --------------------------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]], *, classes: list[str], fractions: tuple[float, ...]) -> dict[str, Any]:
    """class → fraction → aggregation → metric → {mean, sd (sample, ddof 1), n, values}."""
    out: dict[str, Any] = {}
    for name in classes:
        out[name] = {}
        for f in fractions:
            mine = [r for r in runs if r["fraction"] == f]
            out[name][f"{f:g}"] = {
                agg: {m: _stats([r["metrics"][agg][m][name] for r in mine]) for m in (*TABLE_METRICS, "iou", "auprc")}
                for agg in AGGREGATIONS}
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
             f"{cfg.seeds} seeds; threshold {runs[0]['threshold']} on each class's sigmoid. Pooled: TP/FP/FN summed "
             "over all test pixels; per image: the mean of per-image ratios over the images where each is defined "
             "(fundus_studio/metrics.py).", ""]
    head = ["synthetic share", "real + synthetic", *(f"{m.replace('f1', 'F1')} ({AGGREGATIONS[a]})"
                                                       for a in AGGREGATIONS for m in TABLE_METRICS)]
    for name, by_fraction in summary.items():
        lines += [f"## {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for f, stats in by_fraction.items():
            mine = [r for r in runs if f"{r['fraction']:g}" == f]
            sizes = sorted({(r["train_data"]["n_real"], r["train_data"]["n_synthetic"]) for r in mine})
            lines.append("| " + " | ".join([f"{100 * float(f):g} %", ", ".join(f"{a} + {b}" for a, b in sizes),
                                            *(_cell(stats[a][m]) for a in AGGREGATIONS for m in TABLE_METRICS)]) + " |")
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


def run(cfg: ExperimentConfig) -> Path:
    """Train and score every (fraction, seed), then write OUT/results.{md,json,png}; return results.md."""
    unet.parse_args(trainer_args(cfg, max(cfg.fractions), 0))  # the trainer's own checks, before hours of training
    cfg.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for fraction in cfg.fractions:
        for seed in range(cfg.seeds):
            print(f"mix_experiment: run {run_name(fraction, seed)}", file=sys.stderr)
            runs.append({"fraction": fraction, "seed": seed, **train_and_evaluate(cfg, fraction, seed)})
    classes = runs[0]["classes"]
    summary = summarise(runs, classes=classes, fractions=cfg.fractions)
    (cfg.out / "results.json").write_text(json.dumps(finite({
        "config": config_to_dict(cfg),
        "summary": summary,
        "runs": [{k: r[k] for k in ("fraction", "seed", "checkpoint", "checkpoint_step", "train_data", "metrics")}
                 for r in runs]}), indent=2))
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
