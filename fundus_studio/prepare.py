"""Convert IDRiD and FGADR, as downloaded, into studio datasets (``fundus-studio prepare``).

Every photo goes through the one preprocessing path (:func:`fundus_studio.preprocess.preprocess`);
lesion masks follow it; vessels (neither dataset has them) and FGADR's optic disc (not annotated)
come from :mod:`fundus_studio.extract`. Layouts and quirks are those of ``DATA.md``; see
``docs/datasets.md`` for what is done with each.

A wrong layout aborts before anything is written. A photo or mask that cannot be read is reported
(one warning naming the file), skipped, and counted at the end: one corrupt file in 1842 should not
cost the other 1841. Re-running the same command resumes: finished ids are skipped.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fundus_studio import labels
from fundus_studio.dataset import DatasetWriter
from fundus_studio.errors import DatasetError, InputError
from fundus_studio.extract import detect_optic_disc, disc_mask, label_map_from_preprocessed
from fundus_studio.imageio import MIN_SIDE, read_image, read_mask
from fundus_studio.preprocess import preprocess

log = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("idrid", "fgadr")
SPLITS: tuple[str, ...] = ("train", "test", "all")
EXTRA_COLUMNS: tuple[str, ...] = ("split", "original", "optic_disc")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
# How deep below SRC the dataset's root is looked for (copies nest it once or twice).
SEARCH_DEPTH: int = 4
# FGADR ships no split: a name goes to "train" when the first 32 bits of its SHA-256, as a fraction
# of 2**32, fall below this. Deterministic and independent of which files are present.
FGADR_TRAIN_FRACTION: float = 0.8

# IDRiD segmentation ground-truth folders (normalised names) → (class, file-name suffix).
IDRID_MASKS: dict[str, tuple[int, str]] = {
    "microaneurysms": (labels.MICROANEURYSM, "MA"),
    "haemorrhages": (labels.HAEMORRHAGE, "HE"),
    "hemorrhages": (labels.HAEMORRHAGE, "HE"),
    "hardexudates": (labels.HARD_EXUDATE, "EX"),
    "softexudates": (labels.SOFT_EXUDATE, "SE"),
    "opticdisc": (labels.OPTIC_DISC, "OD"),
}
IDRID_SPLITS: dict[str, str] = {"trainingset": "train", "testingset": "test"}
# FGADR Seg-set mask folders (normalised names) → class. "Hemohedge" is the real folder's spelling.
FGADR_MASKS: dict[str, int] = {
    "microaneurysmsmasks": labels.MICROANEURYSM,
    "hemohedgemasks": labels.HAEMORRHAGE,
    "hemorrhagemasks": labels.HAEMORRHAGE,
    "haemorrhagemasks": labels.HAEMORRHAGE,
    "hardexudatemasks": labels.HARD_EXUDATE,
    "softexudatemasks": labels.SOFT_EXUDATE,
    "irmamasks": labels.IRMA,
    "neovascularizationmasks": labels.NEOVASCULARISATION,
}
# Mask thresholds: IDRiD masks are 0/1, 0/255 or RGB (any value > 0 is positive); FGADR's are
# anti-aliased greyscale, positive from half intensity.
MASK_THRESHOLD: dict[str, int] = {"idrid": 1, "fgadr": 128}


@dataclass(frozen=True)
class Item:
    """One photo of the source dataset and everything that becomes its sample."""

    sample_id: str
    split: str  # "train" or "test"
    name: str  # file stem, e.g. "IDRiD_01", "0040_2"
    photo: Path
    masks: dict[int, Path | None] = field(default_factory=dict)  # class → mask file (None: empty)
    grade: int | None = None


@dataclass(frozen=True)
class Layout:
    """A located dataset: its root folder and the items found in it."""

    kind: str
    root: Path
    items: tuple[Item, ...]
    meta: dict[str, str]


# --- names and folders --------------------------------------------------------------------------


def _norm(name: str) -> str:
    """``"1. Original Images"`` → ``"originalimages"``: no enumerator, letters and digits only."""
    name = re.sub(r"^\s*[a-z0-9]{1,2}\.\s+", "", name.strip().lower())
    return re.sub(r"[^a-z0-9]", "", name)


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")  # .DS_Store, AppleDouble "._IDRiD_01.jpg"


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))
    except OSError:
        return []


def _child(folder: Path, *names: str) -> Path | None:
    """The sub-folder whose normalised name is one of ``names``."""
    for p in _subdirs(folder):
        if _norm(p.name) in names:
            return p
    return None


def _images(folder: Path) -> dict[str, Path]:
    """Image files of a folder keyed by lower-case stem."""
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and _visible(p) and p.suffix.lower() in IMAGE_SUFFIXES:
            out.setdefault(p.stem.lower(), p)
    return out


def _find_root(src: Path, accept: Callable[[Path], bool]) -> Path | None:
    """The shallowest folder at or below ``src`` (up to ``SEARCH_DEPTH``) that ``accept`` takes."""
    level = [src]
    for _ in range(SEARCH_DEPTH + 1):
        for folder in level:
            if accept(folder):
                return folder
        level = [sub for folder in level for sub in _subdirs(folder)]
    return None


def _check_src(src: Path) -> None:
    if not src.exists():
        raise InputError(f"{src}: no such folder")
    if not src.is_dir():
        raise InputError(f"{src}: is a file; give the dataset's folder")


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _parse_grade(value: str, *, where: str) -> int:
    try:
        grade = int(value.strip())
    except ValueError:
        raise InputError(f"{where}: grade {value.strip()!r} is not an integer") from None
    if not 0 <= grade < labels.NUM_GRADES:
        raise InputError(f"{where}: grade {grade} is outside 0..{labels.NUM_GRADES - 1}")
    return grade


def _csv_rows(path: Path) -> Iterable[tuple[int, list[str]]]:
    """Non-blank rows of a CSV file with their line numbers, fields stripped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: unreadable ({err})") from None
    for lineno, row in enumerate(csv.reader(text.splitlines()), start=1):
        row = [f.strip() for f in row]
        if any(row):
            yield lineno, row


# --- IDRiD --------------------------------------------------------------------------------------

IDRID_EXPECTED = (
    "an IDRiD segmentation folder: 'A. Segmentation/1. Original Images/{a. Training Set, b. Testing Set}/"
    "IDRiD_NN.jpg' beside '2. All Segmentation Groundtruths/{a. Training Set, b. Testing Set}/"
    "{1. Microaneurysms, …, 5. Optic Disc}/IDRiD_NN_MA.tif'"
)


def _is_idrid_root(folder: Path) -> bool:
    images = _child(folder, "originalimages")
    return (
        images is not None
        and _child(folder, "allsegmentationgroundtruths", "segmentationgroundtruths") is not None
        and any(_child(images, key) is not None for key in IDRID_SPLITS)
    )


def _idrid_grades(src: Path) -> tuple[dict[tuple[str, str], int], list[Path]]:
    """Grades from the grading part's CSVs anywhere under ``src``, keyed by (split, name)."""
    grades: dict[tuple[str, str], int] = {}
    files: list[Path] = []
    for path in sorted(src.rglob("*.csv")):
        key = _norm(path.stem)
        if "grading" not in key or not _visible(path):
            continue
        split = "train" if "training" in key else "test" if "testing" in key else None
        if split is None:
            continue
        files.append(path)
        name_col, grade_col = 0, 1
        for lineno, row in _csv_rows(path):
            header = [_norm(f) for f in row]
            if "retinopathygrade" in header:  # the header row; its last name ends in a space
                name_col, grade_col = header.index("imagename"), header.index("retinopathygrade")
                continue
            if len(row) <= max(name_col, grade_col) or not row[name_col]:
                continue
            name = Path(row[name_col]).stem if Path(row[name_col]).suffix.lower() in IMAGE_SUFFIXES else row[name_col]
            grades[(split, name.lower())] = _parse_grade(row[grade_col], where=f"{path}:{lineno}")
    return grades, files


def _mask_file(index: dict[str, Path], name: str, suffix: str) -> Path | None:
    exact = index.get(f"{name}_{suffix}".lower())
    if exact is not None:
        return exact
    loose = [p for stem, p in index.items() if stem.startswith(f"{name.lower()}_")]
    return loose[0] if len(loose) == 1 else None


def _idrid_layout(src: Path) -> Layout:
    root = _find_root(src, _is_idrid_root)
    if root is None:
        raise InputError(f"{src}: not {IDRID_EXPECTED} (searched {SEARCH_DEPTH} folders deep)")
    images_dir = _child(root, "originalimages")
    truth_dir = _child(root, "allsegmentationgroundtruths", "segmentationgroundtruths")
    assert images_dir is not None and truth_dir is not None  # _is_idrid_root checked both
    grades, grade_files = _idrid_grades(src)
    items: list[Item] = []
    for key, split in IDRID_SPLITS.items():
        photos_dir = _child(images_dir, key)
        if photos_dir is None:
            continue
        split_truth = _child(truth_dir, key)
        folders: dict[int, dict[str, Path]] = {}
        suffixes: dict[int, str] = {}
        for folder in _subdirs(split_truth) if split_truth else []:
            if _norm(folder.name) in IDRID_MASKS:
                cls, suffix = IDRID_MASKS[_norm(folder.name)]
                folders[cls], suffixes[cls] = _images(folder), suffix
        wanted = {cls for cls, _ in IDRID_MASKS.values()}
        for cls in sorted(wanted - set(folders)):
            log.warning("%s: no %s folder for the %s split; those masks are taken as empty",
                        split_truth or truth_dir, labels.NAMES[cls], split)
        for stem, photo in _images(photos_dir).items():
            name = photo.stem
            masks = {cls: _mask_file(index, name, suffixes[cls]) for cls, index in folders.items()}
            items.append(Item(
                sample_id=_safe_id(f"idrid-{split}-{name}"), split=split, name=name, photo=photo,
                masks=masks, grade=grades.get((split, stem)),
            ))
    if not items:
        raise InputError(f"{root}: no photos under {images_dir.name}/; expected {IDRID_EXPECTED}")
    graded = sum(it.grade is not None for it in items)
    meta = {
        "grades": (f"{graded} of {len(items)} photos matched a name in the disease-grading CSVs "
                   f"({', '.join(p.name for p in grade_files) or 'none found'}); the segmentation part "
                   "itself has no grade and the rest are left empty (unknown)"),
        "optic_disc": "annotated (5. Optic Disc masks)",
        "splits": "the dataset's own a. Training Set / b. Testing Set",
    }
    return Layout(kind="idrid", root=root, items=tuple(items), meta=meta)


# --- FGADR --------------------------------------------------------------------------------------

FGADR_EXPECTED = (
    "an FGADR Seg-set folder: 'Seg-set/Original_Images/NNNN_N.png', 'Seg-set/DR_Seg_Grading_Label.csv' "
    "and lesion folders such as 'Microaneurysms_Masks/', 'Hemohedge_Masks/'"
)


def _fgadr_csv(folder: Path) -> Path | None:
    for p in sorted(folder.iterdir()):
        if p.is_file() and _visible(p) and p.suffix.lower() == ".csv" and "grading" in _norm(p.stem):
            return p
    return None


def _is_fgadr_root(folder: Path) -> bool:
    return _child(folder, "originalimages") is not None and (
        _fgadr_csv(folder) is not None or any(_norm(p.name) in FGADR_MASKS for p in _subdirs(folder))
    )


def fgadr_split(name: str) -> str:
    """Deterministic 80/20 split of an FGADR name (file stem): the same answer on every machine."""
    h = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "big")
    return "train" if h < FGADR_TRAIN_FRACTION * 2**32 else "test"


def _fgadr_layout(src: Path) -> Layout:
    root = _find_root(src, _is_fgadr_root)
    if root is None:
        raise InputError(f"{src}: not {FGADR_EXPECTED} (searched {SEARCH_DEPTH} folders deep)")
    csv_path = _fgadr_csv(root)
    if csv_path is None:
        raise InputError(f"{root}: no grading CSV (DR_Seg_Grading_Label.csv); expected {FGADR_EXPECTED}")
    grades: dict[str, int] = {}
    for lineno, row in _csv_rows(csv_path):
        if len(row) < 2:
            raise InputError(f"{csv_path}:{lineno}: expected 'name.png,grade', got {','.join(row)!r}")
        if lineno == 1 and not row[1].lstrip("-").isdigit():
            continue  # a header, should a copy carry one
        grades[Path(row[0]).stem.lower()] = _parse_grade(row[1], where=f"{csv_path}:{lineno}")
    folders: dict[int, dict[str, Path]] = {}
    for folder in _subdirs(root):
        cls = FGADR_MASKS.get(_norm(folder.name))
        if cls is not None:
            folders.setdefault(cls, {}).update(_images(folder))
    for cls in sorted(set(FGADR_MASKS.values()) - set(folders)):
        log.warning("%s: no %s mask folder; those masks are taken as empty", root, labels.NAMES[cls])
    photos_dir = _child(root, "originalimages")
    assert photos_dir is not None  # _is_fgadr_root checked it
    items = [
        Item(
            sample_id=_safe_id(f"fgadr-{photo.stem}"), split=fgadr_split(photo.stem), name=photo.stem,
            photo=photo, masks={cls: index.get(stem) for cls, index in folders.items()}, grade=grades.get(stem),
        )
        for stem, photo in _images(photos_dir).items()
    ]
    if not items:
        raise InputError(f"{photos_dir}: no photos; expected {FGADR_EXPECTED}")
    ungraded = sum(it.grade is None for it in items)
    if ungraded:
        log.warning("%s: %d of %d photos have no row; their grade is left empty", csv_path, ungraded, len(items))
    meta = {
        "grades": f"from {csv_path.name}",
        "optic_disc": "detected (fundus_studio.extract.detect_optic_disc; FGADR has no disc annotation)",
        "splits": f"none shipped: sha256(name) < {FGADR_TRAIN_FRACTION:.0%} of its range → train, else test",
    }
    return Layout(kind="fgadr", root=root, items=tuple(items), meta=meta)


def locate(kind: str, src: str | os.PathLike[str]) -> Layout:
    """Find the dataset of ``kind`` at or below ``src`` and list its items; raise InputError otherwise."""
    if kind not in KINDS:
        raise InputError(f"unknown dataset kind {kind!r}; known: {', '.join(KINDS)}")
    src = Path(src)
    _check_src(src)
    return _idrid_layout(src) if kind == "idrid" else _fgadr_layout(src)


# --- conversion ---------------------------------------------------------------------------------


def convert(item: Item, *, kind: str, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """One item → ``(photo (S, S, 3) uint8, label map (S, S) uint8, optic-disc provenance)``.

    Raises :class:`InputError` naming the file when the photo or a mask cannot be used.
    """
    photo = read_image(item.photo)
    try:
        pre = preprocess(photo, size=size)
    except InputError as err:
        raise InputError(f"{item.photo}: {err}") from None
    lesions: dict[int, np.ndarray] = {}
    optic_disc: np.ndarray | None = None
    for cls, path in item.masks.items():
        if path is None:
            continue  # no file: the lesion is absent from this photo
        mask = pre.geometry.mask(read_mask(path, threshold=MASK_THRESHOLD[kind]), what=str(path)) & pre.fov
        if cls == labels.OPTIC_DISC:
            optic_disc = mask if mask.any() else None
        else:
            lesions[cls] = lesions[cls] | mask if cls in lesions else mask
    source = "annotated"
    if optic_disc is None:
        optic_disc = disc_mask(pre.fov.shape, detect_optic_disc(pre.photo, pre.fov)) & pre.fov
        source = "detected"
    label_map = label_map_from_preprocessed(pre.photo, pre.fov, lesions=lesions, optic_disc=optic_disc)
    return pre.photo, label_map, source


def prepare_dataset(
    kind: str,
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    size: int = 512,
    split: str = "all",
    progress: bool = True,
) -> Path:
    """Convert the IDRiD segmentation part or the FGADR Seg-set at ``src`` into a dataset at ``out``.

    ``split`` is ``"train"``, ``"test"`` or ``"all"``. Re-running resumes; unreadable photos or masks
    are skipped with a warning each and a count at the end. Returns ``out``.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if size < MIN_SIDE:
        raise InputError(f"size must be at least {MIN_SIDE} px, got {size}")
    layout = locate(kind, src)
    items = [it for it in layout.items if split in ("all", it.split)]
    if not items:
        raise InputError(f"{layout.root}: no photos in the {split!r} split")

    # Open (or resume) the output only once the source is known to be usable.
    meta = {"source": kind, "root": str(layout.root), **layout.meta}
    writer = DatasetWriter(out, size=size, created_by=f"fundus-studio prepare {kind}",
                           extra_columns=EXTRA_COLUMNS, meta=meta)
    if writer.info.get("meta", {}).get("source") != kind:
        raise DatasetError(f"{out}: holds a {writer.info.get('meta', {}).get('source')!r} dataset, not {kind!r}")
    done = writer.done_ids
    todo = [it for it in items if it.sample_id not in done]

    skipped: list[str] = []
    bar = tqdm(todo, desc=f"prepare {kind}", unit="photo", disable=not progress)
    for item in bar:
        try:
            photo, label_map, disc_source = convert(item, kind=kind, size=size)
        except InputError as err:
            bar.clear()  # the warning gets its own line, not the tail of the progress bar
            log.warning("skipped %s: %s", item.sample_id, err)
            bar.refresh()
            skipped.append(item.sample_id)
            continue
        writer.add(
            sample_id=item.sample_id, image=photo, label=label_map, grade=item.grade, source=kind,
            extra={"split": item.split, "original": item.photo.relative_to(layout.root).as_posix(),
                   "optic_disc": disc_source},
        )
    bar.close()
    if skipped:
        if len(writer) == 0:
            raise InputError(f"{layout.root}: none of the {len(todo)} photos could be converted (see the warnings)")
        log.warning("skipped %d of %d photos that could not be read: %s", len(skipped), len(todo),
                    ", ".join(skipped[:10]) + (" …" if len(skipped) > 10 else ""))
    return Path(out)
