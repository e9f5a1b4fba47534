"""Per-grade calibration of a label sampler's lesion classes (``label_calibration.json``).

The flow prior draws its 64² class fractions with the lesions of a grade spread thinly over many
cells; the label upsampler, which turns fractions into sharp classes, reads such faint mass as
noise and drops most of it: hard exudates, microaneurysms and IRMA came out at 2–10 % of their share
in the training maps (hard exudates 0.0001 of the image at grade 3 against 0.0019), while
haemorrhages, larger, came through. Calibration multiplies the sampler's class probabilities, before
the arg-max, by one weight per (grade, lesion class), fitted so that each class's mean share of the
maps of each grade matches the training maps' (``training/calibrate_labels.py``). A class the
training maps never show at a grade (any lesion at grade 0; all but microaneurysms at grade 1 on
phantoms) gets weight 0 there: it is never drawn at that grade. Anatomy classes keep weight 1.

The file names the prior and upsampler it was fitted for by their weight hashes; a sampler whose
checkpoints differ does not use it (:func:`calibration_for` says why). JSON only, no pickle.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fundus_studio import labels
from fundus_studio.errors import CheckpointError

CALIBRATION_FILE = "label_calibration.json"  # beside the prior it calibrates
CALIBRATION = "label_calibration"  # its name among the checkpoints in hashes and provenance
FORMAT = "fundus-studio label calibration"
VERSION = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelCalibration:
    """Log-weights ``(NUM_GRADES, NUM_CLASSES)`` added to the log-probabilities of each map's grade
    (``-inf``: the class is never drawn at that grade; 0: unchanged), and the hashes of the prior and
    upsampler they were fitted for."""

    log_weights: torch.Tensor
    prior_file: str  # the prior's weights file name (e.g. label_flow.safetensors): other priors ignore it
    prior_sha256: str
    upsampler_sha256: str | None
    fit: dict[str, Any]  # how it was fitted: data, maps per grade, seed, side, target and reached shares

    def __post_init__(self) -> None:
        expected = (labels.NUM_GRADES, labels.NUM_CLASSES)
        if tuple(self.log_weights.shape) != expected:
            raise ValueError(f"log_weights must be {expected}, got {tuple(self.log_weights.shape)}")

    def apply(self, probs: torch.Tensor, grades: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` class probabilities of maps of ``grades`` ``(B,)`` → reweighted probabilities
        (not renormalised: only the arg-max reads them, and the outside class keeps its weight, so the
        field-of-view estimate is unchanged)."""
        weights = self.log_weights.to(probs.device)[grades.to(probs.device)].exp()  # exp(-inf) = 0
        return probs * weights[:, :, None, None]

    def to_json(self) -> dict[str, Any]:
        grades = {}
        for g in range(labels.NUM_GRADES):
            row = {}
            for k in labels.LESIONS:
                w = float(self.log_weights[g, k])
                row[labels.NAMES[k]] = None if math.isinf(w) else round(w, 4)  # null: never drawn
            grades[str(g)] = row
        return {"format": FORMAT, "version": VERSION, "prior": {"file": self.prior_file, "sha256": self.prior_sha256},
                "upsampler": None if self.upsampler_sha256 is None else {"sha256": self.upsampler_sha256},
                "log_weights": grades, "fit": self.fit}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON atomically (temporary file, then rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        tmp.replace(path)
        return path


def _fail(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path}: {why}; refit it with `python -m training.calibrate_labels` or delete it")


def load_calibration(path: str | os.PathLike[str]) -> LabelCalibration:
    """Read ``label_calibration.json``; CheckpointError naming the file if it is unreadable or malformed."""
    from fundus_studio.checkpoint import read_format_json

    path = Path(path)
    info = read_format_json(path, format=FORMAT, version=VERSION, what=FORMAT, fail=_fail)
    prior, upsampler = info.get("prior"), info.get("upsampler")
    if not isinstance(prior, dict) or not all(isinstance(prior.get(k), str) for k in ("file", "sha256")) or not (
            upsampler is None or isinstance(upsampler, dict) and isinstance(upsampler.get("sha256"), str)):
        raise _fail(path, "prior.file, prior.sha256 (and upsampler.sha256, or upsampler null) must be strings")
    weights = torch.zeros(labels.NUM_GRADES, labels.NUM_CLASSES)
    table = info.get("log_weights")
    if not isinstance(table, dict):
        raise _fail(path, "log_weights must map grades to {class name: number or null}")
    for grade, row in table.items():
        if grade not in {str(g) for g in range(labels.NUM_GRADES)} or not isinstance(row, dict):
            raise _fail(path, f"log_weights: unknown grade {grade!r} or not a mapping")
        for name, value in row.items():
            if labels.INDEX.get(name) not in labels.LESIONS:
                raise _fail(path, f"log_weights[{grade}]: {name!r} is not a lesion class")
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value)):
                raise _fail(path, f"log_weights[{grade}][{name}] must be a number or null, got {value!r}")
            weights[int(grade), labels.INDEX[name]] = -math.inf if value is None else float(value)
    return LabelCalibration(log_weights=weights, prior_file=prior["file"], prior_sha256=prior["sha256"],
                            upsampler_sha256=None if upsampler is None else upsampler["sha256"],
                            fit=info.get("fit") if isinstance(info.get("fit"), dict) else {})


def calibration_for(prior_path: str | os.PathLike[str],
                    upsampler_path: str | os.PathLike[str] | None) -> LabelCalibration | None:
    """The calibration beside the prior at ``prior_path`` when it was fitted for this prior and this
    upsampler (``None``: no upsampler is used). None when there is none or it calibrates another prior
    file (the flow's calibration and the ACGAN share a folder); None with a logged warning when this
    prior file or its upsampler have changed since the fit (retrained: refit it)."""
    from fundus_studio.checkpoint import paths_for, read_info

    path = Path(prior_path).parent / CALIBRATION_FILE
    if not path.is_file():
        return None
    calibration = load_calibration(path)
    if calibration.prior_file != paths_for(prior_path)[0].name:
        return None
    prior_sha = str(read_info(prior_path).get("sha256", ""))
    up_sha = None if upsampler_path is None else str(read_info(upsampler_path).get("sha256", ""))
    if calibration.prior_sha256 != prior_sha or calibration.upsampler_sha256 != up_sha:
        log.warning("%s was fitted for other label checkpoints than %s%s: sampling without it; refit with "
                    "`python -m training.calibrate_labels`", path, Path(prior_path).name,
                    "" if upsampler_path is None else f" + {Path(upsampler_path).name}")
        return None
    return calibration


def calibration_hash(folder: str | os.PathLike[str]) -> str | None:
    """Short SHA-256 of the calibration file in ``folder`` (exports and reports pin it), or None."""
    import hashlib

    path = Path(folder) / CALIBRATION_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None
