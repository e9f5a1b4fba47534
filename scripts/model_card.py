"""Regenerate the Hub-style YAML front matter of checkpoints/README.md from its sources.

    python scripts/model_card.py            # rewrite the front matter (the markdown below it is kept)
    python scripts/model_card.py --check    # exit 1 when the front matter is stale

Sources: every ``checkpoints/*.json`` (what each model is, its data, step, SHA-256, training metrics)
and ``reports/phantoms/report.json`` (the measured quality). Re-run it after retraining a model or
re-running ``make report``; tests/test_model_card.py fails while the card disagrees with them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from fundus_studio.calibration import CALIBRATION, CALIBRATION_FILE
from fundus_studio.studio import CARD_FENCE, UPSAMPLER, split_front_matter

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "checkpoints" / "README.md"
CHECKPOINTS = ROOT / "checkpoints"
REPORT = ROOT / "reports" / "phantoms" / "report.json"
DIGITS = 4  # metric values are rounded to this many decimals
FENCE = CARD_FENCE
# The classes whose render IoU the report's targets name; the U-Net's F1s are taken per class it has.
RENDER_IOU_CLASSES: tuple[str, ...] = ("optic_disc", "vessel", "haemorrhage", "hard_exudate")
PHANTOM_DATA = "fundus-studio-phantoms"  # procedural, made by `fundus-studio phantom`; not a Hub dataset


def _r(value: float) -> float:
    return round(float(value), DIGITS)


def _metric(type_: str, name: str, value: float) -> dict[str, Any]:
    return {"type": type_, "name": name, "value": _r(value)}


def _load(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SystemExit(f"{path}: unreadable ({err})") from None


def _checkpoint_jsons(folder: Path) -> list[Path]:
    """The checkpoints' JSON descriptions (not the label calibration, which describes no weights)."""
    return [p for p in sorted(folder.glob("*.json")) if p.name != CALIBRATION_FILE]


def calibration_block(folder: Path) -> dict[str, Any] | None:
    """The label calibration beside the checkpoints: what it calibrates, its fit and its SHA-256."""
    path = folder / CALIBRATION_FILE
    if not path.is_file():
        return None
    info = _load(path)
    fit = info.get("fit") or {}
    calibrates = [info["prior"]["file"], *([f"{UPSAMPLER}.safetensors"] if info.get("upsampler") else [])]
    return {"file": CALIBRATION_FILE, "calibrates": calibrates,
            "fitted_on": fit.get("data"), "maps_per_grade": fit.get("maps_per_grade"),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def checkpoints_block(folder: Path) -> list[dict[str, Any]]:
    """One entry per checkpoint JSON: file, class, step, dtype, SHA-256 and the data it was trained on."""
    out = []
    for path in _checkpoint_jsons(folder):
        info = _load(path)
        data = info.get("data") or {}
        sources = data.get("real") or [data]  # the U-Net lists its real datasets; the others describe one
        out.append({
            "file": path.with_suffix(".safetensors").name,
            "class": info["class"],
            "step": info["step"],
            "dtype": info["dtype"],
            "sha256": info["sha256"],
            "trained_on": [{"dataset": s.get("dataset"), "created_by": s.get("created_by"), "count": s.get("count"),
                            "size": s.get("size")} for s in sources],
        })
    return out


def _result(task_type: str, task_name: str, dataset: str, metrics: list[dict[str, Any]]) -> dict[str, Any]:
    return {"task": {"type": task_type, "name": task_name},
            "dataset": {"type": PHANTOM_DATA, "name": dataset}, "metrics": metrics}


def _downstream_result(down: dict[str, Any]) -> dict[str, Any]:
    """The downstream U-Nets' pooled F1 per source and share (older reports key the generated pairs
    "acgan-spade", newer ones "generated" with the generator named beside)."""
    summary = down["summary"]
    generated = f"{down.get('generator', 'acgan')} + SPADE"
    names = {"acgan-spade": "ACGAN + SPADE", "generated": generated, "copy-paste": "copy-paste",
             "combined": f"{generated} + copy-paste", "real-maps": "real maps + SPADE (control)",
             "more-real": "more real pairs (control)"}
    metrics = []
    for source, by_class in summary.items():
        for cls, by_fraction in by_class.items():
            for fraction, stats in by_fraction.items():
                if float(fraction) == 0 and source not in ("acgan-spade", "generated"):
                    continue  # real only: listed once
                what = "real only" if float(fraction) == 0 else f"real + {float(fraction):.0%} {names.get(source, source)}"
                metrics.append(_metric("f1", f"{cls} F1 (pooled, mean of seeds), {what}", stats["pooled"]["f1"]["mean"]))
    return _result("image-segmentation", "downstream U-Net trained on real + synthetic pairs",
                   f"{down['test']} held-out phantoms", metrics)


def model_index(folder: Path, report: dict[str, Any]) -> list[dict[str, Any]]:
    """Hub ``model-index``: the report's figures, and the checkpoints' own validation figures."""
    held_out = f"{report['data']['count']} held-out phantoms ({report['data']['path']})"
    fidelity = report["labels"]["grade_fidelity"]
    generator = report["labels"].get("generator", "acgan")
    results = [_result("image-generation", f"grade-conditioned label maps ({generator})", held_out, [
        _metric("accuracy", "grade-classifier accuracy on generated maps", fidelity["generated"]["accuracy"]),
        _metric("accuracy", "grade-classifier accuracy on held-out real maps", fidelity["heldout_real"]["accuracy"]),
        _metric("cohen_kappa", "quadratic-weighted kappa on generated maps", fidelity["generated"]["kappa"]),
    ])]
    renders = report["renders"]
    photo, iou = renders["photo"]["seeded"], renders["segmentation"]
    render_metrics = [_metric("l1", "L1 to the real photo (0-255), seeded style", photo["l1"]),
                      _metric("ssim", "SSIM to the real photo, seeded style", photo["ssim"])]
    for name in RENDER_IOU_CLASSES:
        render_metrics.append(_metric("iou", f"U-Net IoU on renders, {name}", iou["render"]["pooled"]["iou"][name]))
        render_metrics.append(_metric("iou", f"U-Net IoU on real photos, {name}", iou["real"]["pooled"]["iou"][name]))
    results.append(_result("image-to-image", "label map to photo (SPADE)",
                           f"{renders['count']} held-out pairs at {renders['resolution']} px", render_metrics))
    if "downstream" in report:  # a report made without that stage says nothing about it
        results.append(_downstream_result(report["downstream"]))
    for path in _checkpoint_jsons(folder):
        info = _load(path)
        metrics = info.get("metrics") or {}
        if path.stem == "unet":
            f1s = [_metric("f1", f"validation F1 (pooled), {k.removeprefix('val_f1_pooled_')}", v)
                   for k, v in metrics.items() if k.startswith("val_f1_pooled_")]
            results.append(_result("image-segmentation", "lesion, disc and vessel segmentation (U-Net)",
                                   f"validation split of the training phantoms ({info['data']['n_val']})", f1s))
        elif path.stem == "grade_classifier" and "heldout_accuracy" in metrics:
            results.append(_result("image-classification", "DR grade from a label map (grade classifier)",
                                   "held-out share of the training phantoms",
                                   [_metric("accuracy", "held-out accuracy", metrics["heldout_accuracy"])]))
    return [{"name": "fundus-studio-demo", "results": results}]


def front_matter(folder: Path = CHECKPOINTS, report_path: Path = REPORT) -> str:
    """The card's YAML front matter, fences included."""
    report = _load(report_path)
    meta = {
        "license": "mit",
        "library_name": "fundus-studio",
        "pipeline_tag": "image-to-image",
        "tags": ["medical-imaging", "retinal-fundus", "diabetic-retinopathy", "synthetic-data", "gan", "acgan",
                 "spade", "semantic-image-synthesis", "image-segmentation", "unet", "phantoms"],
        "datasets": [PHANTOM_DATA],
        "training_data": ("procedural phantoms from `fundus-studio phantom` (not photographs of eyes); see "
                          "'Data' below and each checkpoint's trained_on"),
        "evaluation": {"report": "reports/phantoms/report.json", "command": report.get("command")},
        "checkpoints": checkpoints_block(folder),
        **({CALIBRATION: calibrated} if (calibrated := calibration_block(folder)) else {}),
        "model-index": model_index(folder, report),
    }
    body = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=120)
    return FENCE + body + FENCE


split_card = split_front_matter  # (front matter with fences or None, the markdown after it)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the front matter is stale; write nothing")
    args = parser.parse_args(argv)
    current, body = split_card(CARD.read_text())
    wanted = front_matter()
    if args.check:
        if current != wanted:
            print(f"{CARD}: front matter is stale; run python scripts/model_card.py", file=sys.stderr)
            return 1
        return 0
    CARD.write_text(wanted + body.lstrip("\n") if current is None else wanted + body)
    print(f"wrote the front matter of {CARD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
