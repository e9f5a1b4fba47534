"""A studio dataset in the layouts other tools read (``fundus-studio export DATASET --format ...``).

``nnunet``: an nnU-Net v2 raw dataset (nnU-Net's documentation/dataset_format.md)::

    OUT/DatasetNNN_Name/dataset.json           channel_names, labels, numTraining, file_ending (+ description)
    OUT/DatasetNNN_Name/imagesTr/<id>_0000.png  RGB photo (nnU-Net's one exception: RGB in one file)
    OUT/DatasetNNN_Name/labelsTr/<id>.png       8-bit grey, consecutive labels 0 (background), 1, 2, ...
    OUT/DatasetNNN_Name/imagesTs/, labelsTs/    the held-out share, when one is asked for

``idrid``: IDRiD's segmentation layout and grading CSVs, as ``fundus-studio prepare idrid`` reads them::

    OUT/A. Segmentation/1. Original Images/a. Training Set/IDRiD_01.jpg
    OUT/A. Segmentation/2. All Segmentation Groundtruths/a. Training Set/1. Microaneurysms/IDRiD_01_MA.tif
        (2. Haemorrhages _HE, 3. Hard Exudates _EX, 4. Soft Exudates _SE, 5. Optic Disc _OD; no file
        where the class is absent, as in IDRiD)
    OUT/B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv
    (b. Testing Set / b. ... Testing Labels.csv for the held-out share)

IDRiD holds five classes: vessels, neovascularisation and IRMA have no place in it (``prepare``
recomputes vessel pseudo-labels from the photo; NV and IRMA are lost), and that is recorded.

Both write ``fundus_studio_export.json`` (source dataset, its checkpoints' hashes, every sample's id,
seed and grade, the settings) first, marked incomplete, and again at the end, marked complete. Every
file is written atomically. A folder that is neither empty nor an export with the same settings is
refused; re-running an interrupted export resumes it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from fundus_studio import labels
from fundus_studio.dataset import MANIFEST_FILE, Sample, StudioDataset
from fundus_studio.errors import DatasetError, InputError
from fundus_studio.imageio import atomic_write, save_png

FORMATS: tuple[str, ...] = ("nnunet", "idrid")
PROVENANCE_FILE = "fundus_studio_export.json"
PROVENANCE_FORMAT = "fundus-studio-export"
# nnU-Net's default: every class but the two that are not structures.
DEFAULT_NNUNET_CLASSES: tuple[str, ...] = tuple(n for n in labels.NAMES if n not in ("outside", "retina"))
NNUNET_CHANNELS: dict[str, str] = {"0": "R", "1": "G", "2": "B"}  # nnU-Net's names for one RGB PNG
# IDRiD's ground-truth folders, in its order: (folder, file-name suffix, class).
IDRID_FOLDERS: tuple[tuple[str, str, int], ...] = (
    ("1. Microaneurysms", "MA", labels.MICROANEURYSM),
    ("2. Haemorrhages", "HE", labels.HAEMORRHAGE),
    ("3. Hard Exudates", "EX", labels.HARD_EXUDATE),
    ("4. Soft Exudates", "SE", labels.SOFT_EXUDATE),
    ("5. Optic Disc", "OD", labels.OPTIC_DISC),
)
IDRID_SPLIT_FOLDERS: dict[str, str] = {"train": "a. Training Set", "test": "b. Testing Set"}
IDRID_GRADE_CSV: dict[str, str] = {"train": "a. IDRiD_Disease Grading_Training Labels.csv",
                                   "test": "b. IDRiD_Disease Grading_Testing Labels.csv"}
IDRID_GRADE_HEADER: tuple[str, ...] = ("Image name", "Retinopathy grade", "Risk of macular edema ")  # sic
IDRID_JPEG_QUALITY: int = 95  # IDRiD ships JPEG photos; near-lossless keeps the field of view's edge


@dataclass(frozen=True)
class ExportSettings:
    """What an export is; a resumed export must have the same."""

    format: str
    classes: tuple[str, ...] = ()  # nnunet: the classes that get labels 1, 2, … (the rest: background)
    dataset_id: int = 500  # nnunet: the NNN of DatasetNNN_Name
    name: str = "FundusStudio"  # nnunet: the Name of DatasetNNN_Name
    test_fraction: float = 0.0  # share of samples held out (imagesTs / Testing Set), chosen by id hash

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise InputError(f"unknown export format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise InputError(f"test fraction must be in [0, 1), got {self.test_fraction}")
        if self.format == "nnunet":
            if not 1 <= self.dataset_id <= 999:
                raise InputError(f"nnU-Net dataset ids are 1..999, got {self.dataset_id}")
            if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
                raise InputError(f"dataset name {self.name!r}: use letters, digits, '-' and '_' only")
            if not self.classes:
                raise InputError("choose at least one class to export")
            for name in self.classes:
                labels.class_index(name)  # raises InputError naming the unknown class
            if len(set(self.classes)) != len(self.classes):
                raise InputError(f"classes listed twice in {list(self.classes)}")
            if "outside" in self.classes:
                raise InputError("'outside' is nnU-Net's background (label 0); it cannot be a label")


def held_out(sample_id: str, fraction: float) -> bool:
    """Deterministic split: the first 32 bits of sha256(id), as a fraction of 2**32, below ``fraction``."""
    h = int.from_bytes(hashlib.sha256(sample_id.encode("utf-8")).digest()[:4], "big")
    return h < fraction * 2**32


def nnunet_label_table(classes: Sequence[str]) -> tuple[dict[str, int], np.ndarray]:
    """``(labels for dataset.json, lookup (NUM_CLASSES,) taxonomy index → nnU-Net label)``."""
    indices = [labels.class_index(c) for c in classes]
    lookup = np.zeros(labels.NUM_CLASSES, np.uint8)
    table = {"background": 0}
    for value, index in enumerate(indices, start=1):
        lookup[index] = value
        table[labels.NAMES[index]] = value
    return table, lookup


# --- the export folder ------------------------------------------------------------------------------


def _manifest_sha256(ds: StudioDataset) -> str:
    return hashlib.sha256((ds.root / MANIFEST_FILE).read_bytes()).hexdigest()


def _provenance(ds: StudioDataset, settings: ExportSettings, cases: dict[str, str], *, complete: bool,
                extra: dict[str, Any]) -> dict[str, Any]:
    meta = ds.info.get("meta", {})
    checkpoints = sorted({s.extra["checkpoints"] for s in ds.samples if s.extra.get("checkpoints")})
    return {
        "format": PROVENANCE_FORMAT,
        "version": 1,
        "complete": complete,
        "settings": asdict(settings),
        "source": {"path": str(ds.root), "created_by": ds.info.get("created_by"), "size": ds.size,
                   "count": len(ds), "manifest_sha256": _manifest_sha256(ds), "meta": meta,
                   "checkpoints": meta.get("checkpoints"), "sample_checkpoints": checkpoints},
        "samples": [{"id": s.id, "case": cases[s.id], "split": "test" if held_out(s.id, settings.test_fraction)
                     else "train", "grade": s.grade, "seed": s.seed, "source": s.source,
                     **({"checkpoints": s.extra["checkpoints"]} if s.extra.get("checkpoints") else {})}
                    for s in ds.samples],
        **extra,
    }


def _open_target(target: Path, ds: StudioDataset, settings: ExportSettings) -> bool:
    """Check ``target`` can take this export; return True when it already holds it complete."""
    path = target / PROVENANCE_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DatasetError(f"{path}: unreadable ({err}); choose a new folder") from None
        if old.get("format") != PROVENANCE_FORMAT or old.get("settings") != json.loads(json.dumps(asdict(settings))):
            raise DatasetError(f"{target}: holds an export with other settings ({old.get('settings')}); "
                               "choose a new folder")
        if old.get("source", {}).get("manifest_sha256") != _manifest_sha256(ds):
            raise DatasetError(f"{target}: holds an export of another dataset (or of {ds.root} before it "
                               "changed); choose a new folder")
        return bool(old.get("complete"))
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise DatasetError(f"{target}: exists and is not a fundus-studio export; refusing to write into it "
                           "(choose an empty or new folder)")
    return False


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_write(path, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")


def _save_image(path: Path, image: np.ndarray, *, format: str, **options: Any) -> None:
    with atomic_write(path) as fh:
        Image.fromarray(np.ascontiguousarray(image)).save(fh, format=format, **options)


# --- nnU-Net ----------------------------------------------------------------------------------------


def nnunet_dataset_json(settings: ExportSettings, *, num_training: int, source: str) -> dict[str, Any]:
    """The dataset.json of an nnU-Net v2 raw dataset: its four required fields plus what it lets one add."""
    table, _ = nnunet_label_table(settings.classes)
    left_out = [n for n in labels.NAMES if n not in settings.classes]
    return {
        "channel_names": dict(NNUNET_CHANNELS),
        "labels": table,
        "numTraining": num_training,
        "file_ending": ".png",
        "name": f"Dataset{settings.dataset_id:03d}_{settings.name}",
        "description": (f"Exported by fundus-studio from {source}. Labels are classes of the fundus-studio "
                        f"taxonomy; the classes left out ({', '.join(left_out)}) are background (0)."),
        # Not read by nnU-Net: the explicit mapping from our taxonomy, for whoever reads the labels back.
        "fundus_studio_labels": {name: {"taxonomy_index": labels.class_index(name), "label": value}
                                 for name, value in table.items() if name != "background"},
        "fundus_studio_background": left_out,
    }


def _export_nnunet(ds: StudioDataset, target: Path, settings: ExportSettings, *, progress: bool) -> None:
    _, lookup = nnunet_label_table(settings.classes)
    n_train = 0
    for s in tqdm(ds.samples, desc="export nnunet", unit="case", disable=not progress):
        split = "Ts" if held_out(s.id, settings.test_fraction) else "Tr"
        n_train += split == "Tr"
        image, label = target / f"images{split}" / f"{s.id}_0000.png", target / f"labels{split}" / f"{s.id}.png"
        if image.is_file() and label.is_file():
            continue  # written by an interrupted run: each file was complete or absent
        save_png(label, lookup[ds.label(s)])
        save_png(image, ds.image(s))
    _write_json(target / "dataset.json", nnunet_dataset_json(settings, num_training=n_train, source=str(ds.root)))


# --- IDRiD --------------------------------------------------------------------------------------------


def idrid_case_names(ds: StudioDataset) -> dict[str, str]:
    """Sample id → IDRiD-style name ``IDRiD_01``, ``IDRiD_02``, … in manifest order (two digits at least)."""
    return {s.id: f"IDRiD_{i:02d}" for i, s in enumerate(ds.samples, start=1)}


def _export_idrid(ds: StudioDataset, target: Path, settings: ExportSettings, names: dict[str, str], *,
                  progress: bool) -> None:
    seg = target / "A. Segmentation"
    grades: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    splits = {"test" if held_out(s.id, settings.test_fraction) else "train" for s in ds.samples}
    for split in splits:  # IDRiD has all five folders even where a class never occurs
        (seg / "1. Original Images" / IDRID_SPLIT_FOLDERS[split]).mkdir(parents=True, exist_ok=True)
        for sub, _, _ in IDRID_FOLDERS:
            (seg / "2. All Segmentation Groundtruths" / IDRID_SPLIT_FOLDERS[split] / sub).mkdir(parents=True,
                                                                                             exist_ok=True)
    for s in tqdm(ds.samples, desc="export idrid", unit="photo", disable=not progress):
        split = "test" if held_out(s.id, settings.test_fraction) else "train"
        name, folder = names[s.id], IDRID_SPLIT_FOLDERS[split]
        if s.grade is not None:
            grades[split].append((name, s.grade))
        photo = seg / "1. Original Images" / folder / f"{name}.jpg"
        if photo.is_file():
            continue  # the photo is written last: its masks are in place
        label = ds.label(s)
        truth = seg / "2. All Segmentation Groundtruths" / folder
        for sub, suffix, cls in IDRID_FOLDERS:
            mask = label == cls
            if mask.any():  # IDRiD has no file for a class an image lacks
                _save_image(truth / sub / f"{name}_{suffix}.tif", mask.astype(np.uint8) * 255, format="TIFF",
                            compression="tiff_lzw")
        _save_image(photo, ds.image(s), format="JPEG", quality=IDRID_JPEG_QUALITY, subsampling=0)
    for split, rows in grades.items():
        if split not in splits:
            continue
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(IDRID_GRADE_HEADER)
        writer.writerows((name, grade, "") for name, grade in rows)  # macular-oedema risk: not modelled
        with atomic_write(target / "B. Disease Grading" / "2. Groundtruths" / IDRID_GRADE_CSV[split], "w") as fh:
            fh.write(buf.getvalue())


IDRID_NOT_HELD: tuple[str, ...] = tuple(
    labels.NAMES[i] for i in (labels.VESSEL, labels.NEOVASCULARISATION, labels.IRMA))


# --- entry point ------------------------------------------------------------------------------------


def export_dataset(src: str | os.PathLike[str], out: str | os.PathLike[str], *, format: str,
                   classes: Sequence[str] | None = None, dataset_id: int = 500, name: str = "FundusStudio",
                   test_fraction: float = 0.0, progress: bool = True) -> Path:
    """Export the studio dataset ``src`` as ``format`` (``nnunet`` or ``idrid``) under ``out``.

    Args:
        src: a studio dataset folder (sampled, prepared, merged, exported from the app).
        out: nnunet: the folder that receives ``DatasetNNN_Name/`` (e.g. nnU-Net's ``nnUNet_raw``);
            idrid: the folder that becomes the IDRiD root.
        classes: nnunet only: the taxonomy classes to label, in label order (default: every class
            but ``outside`` and ``retina``); the others become background.
        dataset_id, name: nnunet only: ``DatasetNNN_Name``.
        test_fraction: share of samples held out (nnU-Net ``imagesTs``/``labelsTs``, IDRiD Testing Set).

    Returns the export's folder. Raises :class:`InputError` for bad settings, :class:`DatasetError`
    for a folder that is not empty and not this export.
    """
    if format == "nnunet":
        settings = ExportSettings(format=format, classes=tuple(classes or DEFAULT_NNUNET_CLASSES),
                                  dataset_id=dataset_id, name=name, test_fraction=test_fraction)
    else:
        if classes:
            raise InputError("the IDRiD layout has fixed classes (MA, HE, EX, SE, OD); --classes is for nnunet")
        settings = ExportSettings(format=format, test_fraction=test_fraction)
    ds = StudioDataset.open(src)
    if not len(ds):
        raise InputError(f"{ds.root}: holds no samples; nothing to export")
    out = Path(out)
    target = out / f"Dataset{settings.dataset_id:03d}_{settings.name}" if format == "nnunet" else out
    if target.resolve() == ds.root.resolve() or ds.root.resolve() in target.resolve().parents:
        raise InputError(f"{target}: inside the dataset being exported; choose a folder elsewhere")
    if _open_target(target, ds, settings):
        return target  # already complete: the same command twice does nothing the second time
    cases = {s.id: s.id for s in ds.samples} if format == "nnunet" else idrid_case_names(ds)
    extra: dict[str, Any] = {}
    if format == "idrid":
        extra["not_in_idrid"] = {
            "classes": list(IDRID_NOT_HELD),
            "note": ("IDRiD has masks for microaneurysms, haemorrhages, hard and soft exudates and the optic "
                     "disc only: vessel, neovascularisation and IRMA pixels are not exported (fundus-studio "
                     "prepare idrid recomputes vessel pseudo-labels from the photo; NV and IRMA are lost)"),
        }
    target.mkdir(parents=True, exist_ok=True)
    _write_json(target / PROVENANCE_FILE, _provenance(ds, settings, cases, complete=False, extra=extra))
    if format == "nnunet":
        _export_nnunet(ds, target, settings, progress=progress)
    else:
        _export_idrid(ds, target, settings, cases, progress=progress)
    _write_json(target / PROVENANCE_FILE, _provenance(ds, settings, cases, complete=True, extra=extra))
    return target
