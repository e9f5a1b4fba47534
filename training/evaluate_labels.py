"""Evaluate a label-map generator against real maps.

    python -m training.evaluate_labels --checkpoint RUN/acgan.safetensors --data DIR \
        [--classifier runs/grade_classifier/grade_classifier.safetensors] [--out report.json]

(a) Grade fidelity: the grade classifier's accuracy and quadratic-weighted kappa on generated maps
    (labelled with the grade they were generated for) versus on real maps the classifier never saw:
    its held-out share when ``--data`` is its training set, otherwise every map of ``--data``.
(b) Lesion statistics per grade and class: mean pixel fraction and mean number of connected
    components, generated vs real, with the Wasserstein-1 distance between the per-map fractions.
(c) Diversity: mean pairwise pixel disagreement between maps of one grade, generated vs real.
(d) Anatomy (``training.anatomy``), per grade, generated vs real at the output side (``size``):
    one optic disc of plausible size, vessel share, tree connectivity, mean vessel width, lesion
    share, lesion-free rate.
(e) Memorisation: each map's share of differing pixels to its nearest training map at
    ``anatomy.MEMORISATION_SIDE``², for generated maps and for the real maps of ``--data`` (which the
    generator never saw); a generator that copies its training maps comes out far below the real ones.

Generated maps are sampled at ``size`` with a clean FOV, then brought to the side the classifier read
real maps at (its ``map_resolution``) the way its real maps were (``downsample``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy.stats import wasserstein_distance

from fundus_studio import labels
from fundus_studio.checkpoint import load_model, read_info
from fundus_studio.errors import CheckpointError, StudioError
from fundus_studio.imageio import atomic_write
from fundus_studio.lesion_tangles import LesionTanglesConfig
from fundus_studio.models.grade_classifier import GradeClassifier
from fundus_studio.pipeline import FlowSamplingConfig, LabelSampler, LabelSamplingConfig, takes_upsampler
from fundus_studio.vessel_tree import VesselTreeConfig
from training import anatomy, harness
from training.evaluate_segmentation import number
from training.grade_classifier import predict

CLASSIFIER_NAME = "grade_classifier.safetensors"
UPSAMPLER_NAME = "label_upsampler.safetensors"


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: Path  # the generator (acgan or label_flow .safetensors)
    data: Path  # the real studio dataset (held out from the generator's training)
    classifier: Path | None = None  # grade classifier; default: beside the checkpoint
    upsampler: Path | None = None  # label upsampler; default: beside the checkpoint when present and of its side
    train_data: Path | None = None  # the generator's training maps (memorisation); default: as its JSON records
    out: Path | None = None  # JSON report
    per_grade: int = 100  # generated maps per grade
    size: int = 512  # side at which maps are generated and their anatomy measured
    flow: FlowSamplingConfig = FlowSamplingConfig()  # ODE steps and guidance of a flow-matching prior
    seed: int = 0  # sampling seed
    diversity_pairs: int = 200  # random pairs per grade for the disagreement estimate
    calibrated: bool = True  # use label_calibration.json beside the checkpoint when it fits (its lesion weights)
    vessel_tree: bool = True  # vessels drawn as a tree (fundus_studio.vessel_tree); False: arg-max vessels
    tangles: bool = True  # NV and IRMA drawn as tangles (fundus_studio.lesion_tangles); False: arg-max blobs

    def __post_init__(self) -> None:
        if self.per_grade < 2 or self.diversity_pairs < 1 or self.size < 16:
            raise ValueError("per_grade must be ≥ 2, diversity_pairs ≥ 1 and size ≥ 16")


def quadratic_weighted_kappa(y_true: np.ndarray, y_pred: np.ndarray, *, num: int = labels.NUM_GRADES) -> float:
    """Cohen's kappa with quadratic weights (1 = perfect agreement, 0 = chance)."""
    observed = np.zeros((num, num))
    np.add.at(observed, (y_true, y_pred), 1)
    w = (np.subtract.outer(np.arange(num), np.arange(num)) ** 2) / (num - 1) ** 2
    expected = np.outer(observed.sum(1), observed.sum(0)) / max(1, observed.sum())
    denom = (w * expected).sum()
    return float(1.0 - (w * observed).sum() / denom) if denom > 0 else 0.0


def lesion_stats(maps: np.ndarray) -> dict[int, dict[str, np.ndarray]]:
    """Per lesion class: per-map pixel fraction and number of connected components."""
    out = {}
    for k in labels.LESIONS:
        masks = (maps == k).astype(np.uint8)
        out[k] = {"fraction": masks.mean(axis=(1, 2)),
                  "components": np.array([cv2.connectedComponents(m, connectivity=8)[0] - 1 for m in masks])}
    return out


# Mean share of pixels on which two random different maps disagree (kept here under its old name).
disagreement = anatomy.pairwise_disagreement


def _same_dataset(data: Path, trained_on: str | None) -> bool:
    """Whether ``data`` is the dataset the classifier trained on (its held-out ids apply only there;
    sample ids such as ``phantom-000001`` repeat across datasets)."""
    return trained_on is None or Path(data).resolve() == Path(trained_on).resolve()


def _upsampler(cfg: EvalConfig) -> Path | None:
    """``cfg.upsampler``, else the one beside the checkpoint when it belongs after this prior."""
    if cfg.upsampler is not None:
        return cfg.upsampler
    path = cfg.checkpoint.parent / UPSAMPLER_NAME
    return path if path.is_file() and takes_upsampler(cfg.checkpoint, path) else None


def _training_maps(cfg: EvalConfig) -> Path | None:
    """The generator's training dataset: ``train_data``, else what its JSON records (if it exists)."""
    if cfg.train_data is not None:
        return cfg.train_data
    recorded = (read_info(cfg.checkpoint).get("data") or {}).get("dataset")
    return Path(recorded) if recorded and (Path(recorded) / "dataset.json").is_file() else None


def _downsample(maps: np.ndarray, side: int, mode: str) -> np.ndarray:
    return np.stack([harness.resize_index_map(m, side, mode=mode) for m in maps])


def anatomy_block(generated: np.ndarray, real: np.ndarray, *, generated_measures: list[anatomy.MapAnatomy],
                  real_measures: list[anatomy.MapAnatomy], pairs: int, rng: np.random.Generator) -> dict[str, Any]:
    """Shape summaries (training.anatomy) of generated and real maps of one grade, and their diversity;
    the maps' measures are taken once by the caller."""
    return {"generated": anatomy.summarise(generated_measures),
            "real": anatomy.summarise(real_measures) if len(real) else None,
            "diversity_generated": anatomy.pairwise_disagreement(generated, pairs=pairs, rng=rng),
            "diversity_real": anatomy.pairwise_disagreement(real, pairs=pairs, rng=rng)}


def memorisation(generated: np.ndarray, real: np.ndarray, train: np.ndarray) -> dict[str, Any]:
    """Nearest-training-map distances (share of differing pixels) of generated and held-out real maps,
    all at ``anatomy.MEMORISATION_SIDE`` (area-resized)."""
    side = anatomy.MEMORISATION_SIDE
    small = {k: _downsample(v, side, "area") for k, v in (("gen", generated), ("real", real))}
    train_small = train if train.shape[-1] == side else _downsample(train, side, "area")
    gen_d = anatomy.nearest_distances(small["gen"], train_small)
    real_d = anatomy.nearest_distances(small["real"], train_small)
    # The same with vessels read as retina: at 64² the distance also counts how many vessel pixels
    # survive, so maps with thinner vessels than the real ones look nearer to every training map.
    def without_vessels(maps: np.ndarray) -> np.ndarray:  # map by map: a copy of 3000 maps at 512² is 0.8 GB
        return np.stack([harness.resize_index_map(np.where(m == labels.VESSEL, labels.RETINA, m).astype(np.uint8),
                                                  side, mode="area") for m in maps])

    no_vessels = {k: without_vessels(v) for k, v in (("gen", generated), ("real", real), ("train", train))}
    gen_nv = anatomy.nearest_distances(no_vessels["gen"], no_vessels["train"])
    real_nv = anatomy.nearest_distances(no_vessels["real"], no_vessels["train"])
    return {"side": side, "train_count": len(train), "generated_median": float(np.median(gen_d)),
            "real_median": float(np.median(real_d)), "generated_min": float(gen_d.min()),
            "generated_p05": float(np.quantile(gen_d, 0.05)), "real_p05": float(np.quantile(real_d, 0.05)),
            "generated_median_without_vessels": float(np.median(gen_nv)),
            "real_median_without_vessels": float(np.median(real_nv))}


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    classifier_path = cfg.classifier or cfg.checkpoint.parent / CLASSIFIER_NAME
    if not classifier_path.is_file():
        raise CheckpointError(f"{classifier_path}: no grade classifier; train one with `python -m "
                              f"training.grade_classifier --data {cfg.data} --out RUN` and pass --classifier")
    classifier = load_model(classifier_path, expected=GradeClassifier)
    info = read_info(classifier_path)["data"]
    side = int(info.get("map_resolution", classifier.config.resolution))
    mode = info.get("downsample", "area")
    # The real maps are read once, at the output side; the classifier's copy is derived from them.
    real_full = harness.load_label_maps(cfg.data, resolution=cfg.size, require_grade=True, downsample="nearest")
    full_maps, full_grades = real_full.maps.numpy(), real_full.grades.numpy()
    real = dataclasses.replace(real_full, maps=torch.from_numpy(_downsample(full_maps, side, mode)))
    if _same_dataset(cfg.data, info.get("dataset")):
        heldout_ids = set(info.get("heldout_ids", []))  # the classifier's own held-out share
        held = real.subset([i for i, s in enumerate(real.ids) if s in heldout_ids])
        held_source = "classifier held-out share"
    else:  # another dataset (e.g. a test set): every map is unseen by the classifier
        held, held_source = real, "whole dataset (not the classifier's training data)"
    upsampler = _upsampler(cfg)
    sampling = LabelSamplingConfig(size=cfg.size, flow=cfg.flow, vessel_tree=VesselTreeConfig() if cfg.vessel_tree else None,
                                   lesion_tangles=LesionTanglesConfig() if cfg.tangles else None)
    sampler = LabelSampler.from_checkpoint(cfg.checkpoint, upsampler=upsampler, calibrated=cfg.calibrated, config=sampling)
    grades = np.repeat(np.arange(labels.NUM_GRADES), cfg.per_grade)
    full = sampler.sample_grades(grades.tolist(), seed=cfg.seed)  # (N, size, size)
    generated = _downsample(full, side, mode)  # as the classifier's real maps were brought to its side

    # (a) grade fidelity
    report: dict[str, Any] = {"checkpoint": str(cfg.checkpoint), "upsampler": None if upsampler is None else str(upsampler),
                              "classifier": str(classifier_path), "data": str(cfg.data), "resolution": side,
                              "size": cfg.size, "maps_per_grade": cfg.per_grade,
                              "calibrated": sampler.calibration is not None,
                              "vessels": "tree" if cfg.vessel_tree else "argmax",
                              "tangles": cfg.tangles}
    pred_gen = predict(classifier, torch.from_numpy(generated))
    fidelity = {"generated": {"accuracy": float((pred_gen == grades).mean()),
                              "kappa": quadratic_weighted_kappa(grades, pred_gen), "count": len(grades)}}
    if len(held):
        y_held = held.grades.numpy()
        pred_held = predict(classifier, held.maps)
        fidelity["heldout_real"] = {"accuracy": float((pred_held == y_held).mean()),
                                    "kappa": quadratic_weighted_kappa(y_held, pred_held), "count": len(held),
                                    "source": held_source}
    report["grade_fidelity"] = fidelity
    report["chance_accuracy"] = 1.0 / labels.NUM_GRADES

    # (b) lesion statistics, (c) diversity and (d) anatomy, per grade
    rng = np.random.default_rng(cfg.seed)
    real_maps, real_grades = real.maps.numpy(), real.grades.numpy()
    gen_measures = [anatomy.measure(m) for m in full]  # each map measured once: per grade and pooled
    real_measures = [anatomy.measure(m) for m in full_maps]
    per_grade: dict[str, Any] = {}
    for g in range(labels.NUM_GRADES):
        gen_g, real_g = generated[grades == g], real_maps[real_grades == g]
        sg, sr = lesion_stats(gen_g), lesion_stats(real_g) if len(real_g) else None
        classes = {}
        for k in labels.LESIONS:
            entry = {"generated_fraction": float(sg[k]["fraction"].mean()),
                     "generated_components": float(sg[k]["components"].mean())}
            if sr is not None:
                entry.update(real_fraction=float(sr[k]["fraction"].mean()),
                             real_components=float(sr[k]["components"].mean()),
                             w1_fraction=float(wasserstein_distance(sg[k]["fraction"], sr[k]["fraction"])),
                             w1_components=float(wasserstein_distance(sg[k]["components"], sr[k]["components"])))
            classes[labels.NAMES[k]] = entry
        lesion_gen = float(np.isin(gen_g, labels.LESIONS).mean())
        lesion_real = float(np.isin(real_g, labels.LESIONS).mean()) if len(real_g) else float("nan")
        per_grade[str(g)] = {
            "real_count": len(real_g), "lesion_fraction_generated": lesion_gen,
            "lesion_fraction_real": lesion_real, "classes": classes,
            "diversity_generated": disagreement(gen_g, pairs=cfg.diversity_pairs, rng=rng),
            "diversity_real": disagreement(real_g, pairs=cfg.diversity_pairs, rng=rng),
            "anatomy": anatomy_block(
                full[grades == g], full_maps[full_grades == g], pairs=cfg.diversity_pairs, rng=rng,
                generated_measures=[m for m, y in zip(gen_measures, grades) if y == g],
                real_measures=[m for m, y in zip(real_measures, full_grades) if y == g]),
        }
    report["per_grade"] = per_grade
    report["anatomy"] = {"generated": anatomy.summarise(gen_measures), "real": anatomy.summarise(real_measures)}

    # (e) memorisation
    train_path = _training_maps(cfg)
    if train_path is not None:
        train = harness.load_label_maps(train_path, resolution=anatomy.MEMORISATION_SIDE, require_grade=False,
                                        downsample="area")
        report["memorisation"] = {"train_data": str(train_path),
                                  **memorisation(full, full_maps, train.maps.numpy())}
    return report


def markdown(report: dict[str, Any]) -> str:
    f = report["grade_fidelity"]
    lines = ["| grade fidelity | accuracy | QW kappa | maps |", "|---|---|---|---|"]
    for name, v in f.items():
        lines.append(f"| {name} | {number(v['accuracy'], 3)} | {number(v['kappa'], 3)} | {v['count']} |")
    lines.append(f"\nchance accuracy {report['chance_accuracy']:.2f}\n")
    lines += ["| grade | lesion px gen | lesion px real | diversity gen | diversity real | "
              + " | ".join(f"{labels.CLASSES[k].short} frac gen/real (W1) | {labels.CLASSES[k].short} comps gen/real"
                           for k in labels.LESIONS) + " |",
              "|" + "---|" * (5 + 2 * len(labels.LESIONS))]
    for g, v in report["per_grade"].items():
        cells = [g, number(v["lesion_fraction_generated"], 4), number(v["lesion_fraction_real"], 4),
                 number(v["diversity_generated"], 3), number(v["diversity_real"], 3)]
        for k in labels.LESIONS:
            c = v["classes"][labels.NAMES[k]]
            cells.append(f"{number(c['generated_fraction'], 4)}/{number(c.get('real_fraction'), 4)} "
                         f"({number(c.get('w1_fraction'), 4)})")
            cells.append(f"{number(c['generated_components'], 1)}/{number(c.get('real_components'), 1)}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def add_flow_arguments(parser: argparse.ArgumentParser) -> None:
    """``--flow-steps``, ``--guidance`` and ``--guidance-interval``: how a flow prior is sampled."""
    parser.add_argument("--flow-steps", type=int, default=FlowSamplingConfig.steps,
                        help=f"flow prior: Euler steps (default {FlowSamplingConfig.steps})")
    parser.add_argument("--guidance", type=float, default=FlowSamplingConfig.guidance,
                        help=f"flow prior: classifier-free guidance weight (default {FlowSamplingConfig.guidance})")
    parser.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LO", "HI"),
                        default=FlowSamplingConfig.guidance_interval,
                        help="flow prior: guide the steps starting at t in [LO, HI) (default "
                             f"{' '.join(map(str, FlowSamplingConfig.guidance_interval))})")


def flow_from_args(args: argparse.Namespace) -> FlowSamplingConfig:
    """The :class:`FlowSamplingConfig` of :func:`add_flow_arguments`'s flags (ValueError if invalid)."""
    return FlowSamplingConfig(steps=args.flow_steps, guidance=args.guidance,
                              guidance_interval=tuple(args.guidance_interval))


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate_labels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="generator checkpoint (acgan.safetensors or label_flow.safetensors)")
    parser.add_argument("--upsampler", type=Path, default=None,
                        help="label upsampler (default: label_upsampler.safetensors beside the checkpoint, if any)")
    parser.add_argument("--train-data", type=Path, default=None,
                        help="the generator's training maps, for memorisation (default: as its JSON records)")
    parser.add_argument("--size", type=int, default=512, help="side of the generated maps (default 512)")
    add_flow_arguments(parser)
    parser.add_argument("--data", type=Path, required=True, help="real studio dataset")
    parser.add_argument("--classifier", type=Path, default=None, help="grade classifier checkpoint")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    parser.add_argument("--per-grade", type=int, default=100, help="generated maps per grade (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--no-calibration", action="store_true",
                        help="ignore label_calibration.json beside the checkpoint (compare with and without)")
    parser.add_argument("--no-tangles", action="store_true",
                        help="keep the arg-max's neovascularisation and IRMA blobs (fundus_studio.lesion_tangles)")
    parser.add_argument("--vessels", choices=("tree", "argmax"), default="tree",
                        help="how vessels are drawn: a tree from the vessel probability (default) or its arg-max")
    args = parser.parse_args(argv)
    try:
        return EvalConfig(checkpoint=args.checkpoint, data=args.data, classifier=args.classifier, out=args.out,
                          per_grade=args.per_grade, seed=args.seed, upsampler=args.upsampler,
                          train_data=args.train_data, size=args.size, calibrated=not args.no_calibration,
                          vessel_tree=args.vessels == "tree", tangles=not args.no_tangles,
                          flow=flow_from_args(args))
    except ValueError as err:
        parser.error(str(err))
        raise


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        report = evaluate(cfg)
    except StudioError as err:
        print(f"training.evaluate_labels: error: {err}", file=sys.stderr)
        return 2
    from training.report_text import anatomy_table, label_targets, targets_table  # (report_text imports this module)

    print(markdown(report))
    print("\n" + "\n".join(anatomy_table(report)) + "\n\n" + targets_table(label_targets(report)))
    if cfg.out is not None:
        with atomic_write(cfg.out, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
