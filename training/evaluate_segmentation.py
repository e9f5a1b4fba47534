"""Score a trained U-Net on a test set: precision, recall, F1, IoU and AUPRC per class, pooled and per image.

    python -m training.evaluate_segmentation --checkpoint runs/unet/unet.safetensors --data data/test \
        --out runs/unet/eval.json

The test set is streamed from disk in small batches (memory does not grow with it). Each output
channel goes through its own sigmoid and is thresholded at the class's threshold recorded in the
checkpoint (``data.thresholds``, chosen by ``training.unet`` on its validation split; 0.5 where
absent, or every class at ``--threshold``), as ``pipeline.Segmenter`` does;
predictions outside the field of view (the truth map's ``outside``) are dropped, as the Segmenter
drops them outside the detected FOV. Images are scored at the resolution the U-Net was trained at
(recorded in its checkpoint; ``--size`` overrides), photos area-resized and truth maps resized with
``harness.resize_index_map(mode="area")``. Metric conventions: ``fundus_studio/metrics.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from fundus_studio.checkpoint import load_model, paths_for, read_info
from fundus_studio.dataset import StudioDataset
from fundus_studio.errors import InputError, StudioError
from fundus_studio.labels import NAMES, OUTSIDE
from fundus_studio.metrics import DEFAULT_AP_BINS, METRICS, SegmentationMetrics
from fundus_studio.models.unet import UNet
from fundus_studio.pipeline import Segmenter, photo_to_tensor
from training.harness import resize_index_map

THRESHOLD: float = Segmenter.DEFAULT_THRESHOLD  # a class's threshold where its checkpoint records none
METRIC_LABELS: dict[str, str] = {"precision": "precision", "recall": "recall", "f1": "F1", "iou": "IoU",
                                 "auprc": "AUPRC"}


def score_batch(metrics: SegmentationMetrics, probs: torch.Tensor, maps: torch.Tensor, *,
                threshold: float | Sequence[float] = THRESHOLD) -> None:
    """Add a batch to ``metrics``: probs ``(B, K, H, W)`` sigmoid outputs for ``metrics.classes``,
    maps ``(B, H, W)`` true class indices, ``threshold`` one value or ``K`` (one per class).
    Predictions and scores outside the FOV are zeroed."""
    classes = torch.tensor(metrics.classes, device=maps.device)
    fov = (maps != OUTSIDE)[:, None]
    scores = torch.where(fov, probs.float(), torch.zeros((), device=probs.device))
    truth = maps[:, None].long() == classes.view(1, -1, 1, 1)
    cut = torch.as_tensor(threshold, dtype=scores.dtype, device=scores.device).reshape(1, -1, 1, 1)
    pred = scores >= cut
    for p, t, s in zip(pred.cpu().numpy(), truth.cpu().numpy(), scores.cpu().numpy()):
        metrics.update(p, t, s)


def resize_pair(photo: np.ndarray, label: np.ndarray, *, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A dataset's (S, S, 3) photo and (S, S) map at ``size``: photo area-resized (linear up), map by area."""
    if photo.shape[0] == size:
        return photo, label
    interp = cv2.INTER_AREA if size < photo.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(photo, (size, size), interpolation=interp), resize_index_map(label, size, mode="area")


def _batches(ds: StudioDataset, *, size: int, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(ds), batch):
        pairs = [resize_pair(ds.image(s), ds.label(s), size=size) for s in ds.samples[start:start + batch]]
        yield np.stack([p for p, _ in pairs]), np.stack([m for _, m in pairs])


@torch.inference_mode()
def evaluate(unet: UNet, data: str | os.PathLike[str], *, size: int, batch: int = 8,
             device: torch.device | str = "cpu", ap_bins: int | None = DEFAULT_AP_BINS,
             thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """Stream the studio dataset ``data`` through ``unet`` at ``size``² → ``metrics`` result dict
    (``fundus_studio.metrics``: ``result["pooled" | "per_image"][metric][class name]``), each class
    thresholded at its entry of ``thresholds`` (None: 0.5 for all)."""
    stride = unet.config.stride
    if size < stride or size % stride:
        raise InputError(f"--size {size}: the U-Net needs a multiple of {stride}")
    ds = StudioDataset.open(data)
    if not ds.samples:
        raise InputError(f"{ds.root}: empty dataset, nothing to evaluate")
    unet = unet.to(device).eval()
    metrics = SegmentationMetrics(classes=unet.config.classes, ap_bins=ap_bins)
    for photos, maps in _batches(ds, size=size, batch=batch):
        x = photo_to_tensor(photos).to(device).contiguous(memory_format=torch.channels_last)
        score_batch(metrics, torch.sigmoid(unet(x).float()), torch.from_numpy(maps).to(device),
                    threshold=THRESHOLD if thresholds is None else thresholds)
    return metrics.compute()


def number(value: float | None, digits: int = 3) -> str:
    """A figure for a markdown table, or "–" where it is undefined (NaN, or None once it went through JSON)."""
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _fmt(value: float | None, count: int | None = None) -> str:
    text = number(value)
    return text if count is None or text == "–" else f"{text} (n={count})"


def markdown_table(result: dict[str, Any]) -> str:
    """One row per (class, aggregation); per-image cells say how many images entered the mean.
    Undefined values (NaN, or None after :func:`finite`) print as "–"."""
    head = ["class", "aggregation", *(METRIC_LABELS[m] for m in METRICS)]
    rows = [head, ["---"] * len(head)]
    for name in result["classes"]:
        rows.append([name, "pooled (all pixels)", *(_fmt(result["pooled"][m][name]) for m in METRICS)])
        rows.append([name, "per image (mean)", *(_fmt(result["per_image"][m][name], result["per_image_count"][m][name])
                                                 for m in METRICS)])
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def finite(obj: Any) -> Any:
    """NaN/inf → None, recursively, so the JSON is strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def evaluate_checkpoint(checkpoint: str | os.PathLike[str], data: str | os.PathLike[str], *,
                        size: int | None = None, batch: int = 8, device: str = "cpu",
                        threshold: float | None = None) -> dict[str, Any]:
    """Load ``checkpoint``, evaluate it on ``data`` → a JSON-able report (metrics under ``"metrics"``).

    Each class is thresholded at ``threshold`` when given, else at the value its checkpoint records
    (``data.thresholds``: chosen on the run's validation split, never on ``data``), else 0.5.
    """
    info = read_info(checkpoint)
    unet = load_model(checkpoint, expected=UNet, device=device)
    if size is None:
        size = info.get("data", {}).get("resolution") or StudioDataset.open(data).size
    classes = unet.config.classes  # type: ignore[attr-defined]
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise InputError(f"--threshold must lie in (0, 1), got {threshold}")
    thresholds = ((threshold,) * len(classes) if threshold is not None
                  else Segmenter.recorded_thresholds(info, classes=classes, where=str(paths_for(checkpoint)[1])))
    source = ("given" if threshold is not None else
              "checkpoint" if (info.get("data") or {}).get("thresholds") else f"default {THRESHOLD}")
    result = evaluate(unet, data, size=int(size), batch=batch, device=device,  # type: ignore[arg-type]
                      thresholds=thresholds)
    return finite({
        "checkpoint": str(paths_for(checkpoint)[0]), "checkpoint_sha256": info.get("sha256"),
        "checkpoint_step": info.get("step"), "data": str(data), "size": int(size),
        "thresholds": {NAMES[c]: t for c, t in zip(classes, thresholds)}, "threshold_source": source,
        "classes": [NAMES[c] for c in classes], "metrics": result,
    })


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.evaluate_segmentation",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="unet.safetensors of a run")
    parser.add_argument("--data", type=Path, required=True, help="studio test dataset")
    parser.add_argument("--out", type=Path, default=None, help="JSON report to write")
    parser.add_argument("--size", type=int, default=None, help="side to score at (default: the training resolution)")
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threshold", type=float, default=None,
                        help="one threshold for every class (default: the checkpoint's recorded ones, else 0.5)")
    args = parser.parse_args(argv)
    try:
        report = evaluate_checkpoint(args.checkpoint, args.data, size=args.size, batch=args.batch, device=args.device,
                                     threshold=args.threshold)
    except StudioError as err:
        print(f"training.evaluate_segmentation: error: {err}", file=sys.stderr)
        return 2
    m = report["metrics"]
    cuts = ", ".join(f"{k} {v:g}" for k, v in report["thresholds"].items())
    print(f"{report['checkpoint']} (step {report['checkpoint_step']}) on {args.data}: {m['images']} images at "
          f"{report['size']}², thresholds {cuts} ({report['threshold_source']})\n")
    print(markdown_table(m))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
