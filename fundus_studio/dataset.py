"""The studio dataset format, read and written by every command.

```
DIR/dataset.json     {"format": "fundus-studio-dataset", "version": 1, "size": 512, "classes": [...],
                      "created_by": "...", "extra_columns": [...], "meta": {...}}
DIR/manifest.csv     id, grade, source, image, label, seed, frac_<class> per class, extra columns
DIR/images/<id>.png  RGB photo
DIR/labels/<id>.png  palette PNG: value = class index, palette = taxonomy colours
```

Images and labels are written atomically before their manifest row, and a row is one ``write``
of a whole line, so the manifest only ever lists complete samples; a run that is interrupted
resumes where it stopped. One writer per folder: parallel jobs write separate folders (shards)
that are merged afterwards.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fundus_studio import labels
from fundus_studio.errors import DatasetError, InputError
from fundus_studio.imageio import atomic_write, read_image, read_label_map, save_label_png, save_png

FORMAT = "fundus-studio-dataset"
VERSION = 1
INFO_FILE = "dataset.json"
MANIFEST_FILE = "manifest.csv"
BASE_COLUMNS: tuple[str, ...] = ("id", "grade", "source", "image", "label", "seed")
FRACTION_COLUMNS: tuple[str, ...] = tuple(f"frac_{name}" for name in labels.NAMES)
# Ids become file names: keep them portable.
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")


@dataclass(frozen=True)
class Sample:
    """One manifest row. ``image`` and ``label`` are paths relative to the dataset folder."""

    id: str
    grade: int | None
    source: str
    image: str
    label: str
    seed: int | None
    fractions: tuple[float, ...]
    extra: dict[str, str] = field(default_factory=dict)


def classes_json() -> list[dict[str, Any]]:
    return [{"index": c.index, "name": c.name, "color": list(c.color)} for c in labels.CLASSES]


def check_id(sample_id: str) -> str:
    """Validate a sample id (it becomes a file name); return it."""
    if not sample_id or not set(sample_id) <= _ID_CHARS or sample_id.startswith("."):
        raise InputError(f"sample id {sample_id!r}: use letters, digits, '_', '-' and '.' only")
    return sample_id


def _row(sample: Sample, extra_columns: Sequence[str]) -> list[str]:
    return [
        sample.id,
        "" if sample.grade is None else str(sample.grade),
        sample.source,
        sample.image,
        sample.label,
        "" if sample.seed is None else str(sample.seed),
        *(f"{f:.6f}" for f in sample.fractions),
        *(sample.extra.get(c, "") for c in extra_columns),
    ]


def _csv_line(values: Sequence[str]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(values)
    return buf.getvalue()


def _parse_int(value: str, *, what: str, lo: int | None = None, hi: int | None = None) -> int | None:
    if value.strip() == "":
        return None
    try:
        out = int(value)
    except ValueError:
        raise DatasetError(f"{what}: {value!r} is not an integer") from None
    if (lo is not None and out < lo) or (hi is not None and out > hi):
        raise DatasetError(f"{what}: {out} is outside {lo}..{hi}")
    return out


def read_info(root: Path) -> dict[str, Any]:
    """Read and validate ``dataset.json``; raise DatasetError naming the file otherwise."""
    path = root / INFO_FILE
    if not path.is_file():
        raise DatasetError(f"{root}: not a studio dataset (no {INFO_FILE})")
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path}: unreadable ({err})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a {FORMAT} description")
    if info.get("version") != VERSION:
        raise DatasetError(f"{path}: format version {info.get('version')!r}, this release reads {VERSION}")
    if not isinstance(info.get("size"), int) or info["size"] < 1:
        raise DatasetError(f"{path}: 'size' must be a positive integer")
    names = [c.get("name") for c in info.get("classes", []) if isinstance(c, dict)]
    if names != list(labels.NAMES):
        raise DatasetError(f"{path}: its classes {names} differ from this release's taxonomy {list(labels.NAMES)}")
    return info


def _parse_rows(root: Path, text: str, *, extra_columns: Sequence[str]) -> list[Sample]:
    path = root / MANIFEST_FILE
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    expected = [*BASE_COLUMNS, *FRACTION_COLUMNS, *extra_columns]
    if header != expected:
        raise DatasetError(f"{path}: unexpected header {header}; expected {expected}")
    samples = []
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(expected):
            raise DatasetError(f"{path}:{lineno}: {len(row)} columns, expected {len(expected)}")
        n = len(BASE_COLUMNS)
        try:
            fractions = tuple(float(v) for v in row[n : n + len(FRACTION_COLUMNS)])
        except ValueError:
            raise DatasetError(f"{path}:{lineno}: class fractions must be numbers") from None
        samples.append(
            Sample(
                id=row[0],
                grade=_parse_int(row[1], what=f"{path}:{lineno} grade", lo=0, hi=labels.NUM_GRADES - 1),
                source=row[2],
                image=row[3],
                label=row[4],
                seed=_parse_int(row[5], what=f"{path}:{lineno} seed"),
                fractions=fractions,
                extra=dict(zip(extra_columns, row[n + len(FRACTION_COLUMNS) :])),
            )
        )
    return samples


class StudioDataset:
    """A studio dataset folder, opened for reading.

    >>> ds = StudioDataset.open("data/phantoms")      # doctest: +SKIP
    >>> photo, label = ds.image(0), ds.label(0)        # (S, S, 3) uint8, (S, S) uint8
    """

    def __init__(self, root: Path, info: dict[str, Any], samples: list[Sample]) -> None:
        self.root = root
        self.info = info
        self.size: int = info["size"]
        self.extra_columns: tuple[str, ...] = tuple(info.get("extra_columns", ()))
        self.samples = samples

    @classmethod
    def open(cls, root: str | os.PathLike[str]) -> StudioDataset:
        root = Path(root)
        info = read_info(root)
        manifest = root / MANIFEST_FILE
        try:
            text = manifest.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise DatasetError(f"{manifest}: unreadable ({err})") from None
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]  # a row cut by an interruption is not a sample
        return cls(root, info, _parse_rows(root, text, extra_columns=info.get("extra_columns", ())))

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def _sample(self, key: int | str | Sample) -> Sample:
        if isinstance(key, Sample):
            return key
        if isinstance(key, str):
            for s in self.samples:
                if s.id == key:
                    return s
            raise KeyError(f"{self.root}: no sample {key!r}")
        return self.samples[key]

    def image(self, key: int | str | Sample) -> np.ndarray:
        """The sample's photo, (S, S, 3) uint8."""
        return read_image(self.root / self._sample(key).image, max_side=None)

    def label(self, key: int | str | Sample) -> np.ndarray:
        """The sample's label map, (S, S) uint8 class indices."""
        return read_label_map(self.root / self._sample(key).label)

    def grades(self) -> list[int | None]:
        return [s.grade for s in self.samples]

    def with_grade(self, grade: int) -> list[Sample]:
        return [s for s in self.samples if s.grade == grade]


class DatasetWriter:
    """Creates a studio dataset or resumes one, and adds samples to it.

    An existing folder is resumed only when it is a studio dataset of the same size and columns;
    a non-empty folder of any other kind is refused, never overwritten.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        size: int,
        created_by: str,
        extra_columns: Sequence[str] = (),
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.root = Path(root)
        self.size = size
        self.extra_columns = tuple(extra_columns)
        clash = set(self.extra_columns) & {*BASE_COLUMNS, *FRACTION_COLUMNS}
        if clash:
            raise InputError(f"extra columns {sorted(clash)} clash with the manifest's own columns")
        if (self.root / INFO_FILE).exists():
            self._resume()
        else:
            self._create(created_by=created_by, meta=meta or {})

    # --- opening ---------------------------------------------------------------------------------

    def _create(self, *, created_by: str, meta: dict[str, Any]) -> None:
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            raise DatasetError(
                f"{self.root}: exists and is not a studio dataset; refusing to write into it "
                "(choose an empty or new folder)"
            )
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        (self.root / "labels").mkdir(parents=True, exist_ok=True)
        info = {
            "format": FORMAT,
            "version": VERSION,
            "size": self.size,
            "classes": classes_json(),
            "created_by": created_by,
            "extra_columns": list(self.extra_columns),
            "meta": meta,
        }
        with atomic_write(self.root / MANIFEST_FILE, "w") as fh:
            fh.write(_csv_line([*BASE_COLUMNS, *FRACTION_COLUMNS, *self.extra_columns]))
        with atomic_write(self.root / INFO_FILE, "w") as fh:
            json.dump(info, fh, indent=2)
        self.info = info
        self.samples: list[Sample] = []

    def _resume(self) -> None:
        info = read_info(self.root)
        if info["size"] != self.size:
            raise DatasetError(f"{self.root}: holds {info['size']}-px samples, this run writes {self.size}-px ones")
        if tuple(info.get("extra_columns", ())) != self.extra_columns:
            raise DatasetError(
                f"{self.root}: manifest columns {info.get('extra_columns')} differ from this run's "
                f"{list(self.extra_columns)}"
            )
        existing = StudioDataset.open(self.root)
        # Keep only rows whose files landed; rewrite the manifest if an interruption cut a row.
        kept = [s for s in existing.samples if (self.root / s.image).is_file() and (self.root / s.label).is_file()]
        manifest = self.root / MANIFEST_FILE
        if len(kept) != len(existing.samples) or not manifest.read_text().endswith("\n"):
            with atomic_write(manifest, "w") as fh:
                fh.write(_csv_line([*BASE_COLUMNS, *FRACTION_COLUMNS, *self.extra_columns]))
                fh.writelines(_csv_line(_row(s, self.extra_columns)) for s in kept)
        self.info = info
        self.samples = kept

    # --- writing ---------------------------------------------------------------------------------

    @property
    def done_ids(self) -> set[str]:
        return {s.id for s in self.samples}

    def __contains__(self, sample_id: str) -> bool:
        return any(s.id == sample_id for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def add(
        self,
        *,
        sample_id: str,
        image: np.ndarray,
        label: np.ndarray,
        grade: int | None,
        source: str,
        seed: int | None = None,
        extra: dict[str, str] | None = None,
    ) -> Sample:
        """Write one sample's photo and label map, then append its manifest row."""
        check_id(sample_id)
        s = self.size
        if image.shape != (s, s, 3) or image.dtype != np.uint8:
            raise InputError(f"sample {sample_id}: photo must be ({s}, {s}, 3) uint8, got {image.shape} {image.dtype}")
        label = labels.check_index_map(label, what=f"sample {sample_id} label map")
        if label.shape != (s, s):
            raise InputError(f"sample {sample_id}: label map must be ({s}, {s}), got {label.shape}")
        if grade is not None and not 0 <= grade < labels.NUM_GRADES:
            raise InputError(f"sample {sample_id}: grade {grade} is outside 0..{labels.NUM_GRADES - 1}")
        unknown = set(extra or {}) - set(self.extra_columns)
        if unknown:
            raise InputError(f"sample {sample_id}: unknown extra columns {sorted(unknown)}")
        sample = Sample(
            id=sample_id,
            grade=grade,
            source=source,
            image=f"images/{sample_id}.png",
            label=f"labels/{sample_id}.png",
            seed=seed,
            fractions=tuple(float(f) for f in labels.class_fractions(label)),
            extra=dict(extra or {}),
        )
        save_png(self.root / sample.image, image)
        save_label_png(self.root / sample.label, label)
        self._append_row(sample)
        return sample

    def add_from(self, sample: Sample, *, root: Path) -> Sample:
        """Copy a sample of another dataset (folder ``root``) byte for byte, then append its row."""
        check_id(sample.id)
        unknown = set(sample.extra) - set(self.extra_columns)
        if unknown:
            raise InputError(f"sample {sample.id}: unknown extra columns {sorted(unknown)}")
        copied = replace(sample, image=f"images/{sample.id}.png", label=f"labels/{sample.id}.png")
        for src, dst in ((sample.image, copied.image), (sample.label, copied.label)):
            with open(root / src, "rb") as fin, atomic_write(self.root / dst) as fout:
                while chunk := fin.read(1 << 20):
                    fout.write(chunk)
        self._append_row(copied)
        return copied

    def _append_row(self, sample: Sample) -> None:
        """One manifest row as one write, after the sample's files are in place."""
        with open(self.root / MANIFEST_FILE, "a", encoding="utf-8") as fh:
            fh.write(_csv_line(_row(sample, self.extra_columns)))
            fh.flush()
            os.fsync(fh.fileno())
        self.samples.append(sample)
