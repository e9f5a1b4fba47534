"""Exporting curated or generated label/photo pairs as a studio dataset (folder or zip).

An export is written into a fresh folder and zipped into a temporary file that is renamed at the
end: an interrupted export leaves no zip that looks complete.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fundus_studio import labels
from fundus_studio.dataset import DatasetWriter
from fundus_studio.errors import InputError
from fundus_studio.imageio import atomic_write, save_label_png, save_png

# Provenance of each exported sample: how it came to be and from which checkpoints.
PROVENANCE_COLUMNS: tuple[str, ...] = ("provenance", "checkpoints")
PROVENANCES: tuple[str, ...] = ("sampled", "painted", "edited")
EXPORT_NAME = "fundus-studio-export"


@dataclass(frozen=True, eq=False)
class GalleryItem:
    """One label map with its render, as the app's gallery and curated set hold them."""

    label: np.ndarray  # (S, S) uint8 class indices
    image: np.ndarray  # (S, S, 3) uint8 render
    grade: int | None
    seed: int | None
    provenance: str  # one of PROVENANCES
    kept: bool | None = None  # None: not decided yet

    def __post_init__(self) -> None:
        if self.provenance not in PROVENANCES:
            raise InputError(f"provenance must be one of {PROVENANCES}, got {self.provenance!r}")

    @property
    def status(self) -> str:
        return {True: "kept", False: "discarded", None: "undecided"}[self.kept]

    def with_kept(self, kept: bool | None) -> GalleryItem:
        return replace(self, kept=kept)


def hashes_text(checkpoint_hashes: dict[str, str]) -> str:
    """``{"acgan": "ab12…"}`` → ``"acgan:ab12…;spade:…"`` for one manifest cell."""
    return ";".join(f"{k}:{v}" for k, v in sorted(checkpoint_hashes.items()))


def export_items(
    items: Sequence[GalleryItem],
    *,
    out_dir: Path,
    size: int,
    checkpoint_hashes: dict[str, str],
    zip_it: bool = True,
    progress: bool = True,
) -> Path:
    """Write ``items`` as a studio dataset under ``out_dir`` and return its folder or zip."""
    if not items:
        raise InputError("nothing to export")
    root = Path(out_dir) / EXPORT_NAME
    writer = DatasetWriter(root, size=size, created_by="fundus-studio export", extra_columns=PROVENANCE_COLUMNS,
                           meta={"checkpoints": checkpoint_hashes})
    cell = hashes_text(checkpoint_hashes)
    for i, item in enumerate(tqdm(items, desc="export", unit="pair", disable=not progress)):
        sample_id = f"{item.provenance}-{i:05d}"
        if sample_id in writer:
            continue
        writer.add(sample_id=sample_id, image=item.image, label=item.label, grade=item.grade, source="fundus-studio",
                   seed=item.seed, extra={"provenance": item.provenance, "checkpoints": cell})
    return zip_folder(root) if zip_it else root


def zip_folder(root: Path) -> Path:
    """Zip ``root`` into ``root.zip`` (paths inside start with the folder's name), atomically."""
    target = root.with_suffix(".zip")
    files = sorted(p for p in root.rglob("*") if p.is_file())
    with atomic_write(target) as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED) as zf:
        # PNGs are compressed already: storing them is as small and much faster.
        for path in files:
            zf.write(path, arcname=str(Path(root.name) / path.relative_to(root)))
    return target


def write_download(path: Path, *, index_map: np.ndarray | None = None, photo: np.ndarray | None = None) -> Path:
    """A single label map (palette PNG) or photo (RGB PNG) for the user to download."""
    if (index_map is None) == (photo is None):
        raise InputError("give exactly one of index_map or photo")
    if index_map is not None:
        return save_label_png(path, labels.check_index_map(index_map))
    return save_png(path, photo)


def extract_zip(zip_path: Path, out_dir: Path) -> Path:
    """Unpack an exported zip safely (no paths outside ``out_dir``); return the dataset folder."""
    out_dir = Path(out_dir).resolve()
    with zipfile.ZipFile(zip_path) as zf:
        for name in zf.namelist():
            dest = (out_dir / name).resolve()
            if not str(dest).startswith(str(out_dir) + os.sep):
                raise InputError(f"{zip_path}: entry {name!r} would land outside {out_dir}")
        zf.extractall(out_dir)
        top = {Path(n).parts[0] for n in zf.namelist()}
    if len(top) != 1:
        raise InputError(f"{zip_path}: expected one top-level folder, found {sorted(top)}")
    return out_dir / top.pop()
