"""Generation at scale: sampled datasets (grade → label map → photo), merging shards, rendering a file.

``fundus-studio sample`` writes a studio dataset of ``count`` pairs. Sample ``i`` is ``sample-{i:06d}``
with grade ``grade`` (or ``i % NUM_GRADES``) and seed ``s = sample_seed(seed, i)``; its label map is
``Studio.sample_labels(grade=g, count=1, seed=s)`` and its photo ``Studio.render(map, seed=render_seed(s))``.
A sample therefore depends only on (seed, i), the size and the checkpoints: not on which shard or
run made it, nor on what was made before. Both networks run at batch 1: on CPU a batch of renders is
slower per pair than single ones and not bit-identical to them (instance statistics take another
kernel), and a batch of ACGAN samples gains nothing at the demo sizes (docs/generate.md).

PNG encoding and the manifest append of one sample overlap the generation of the next (a single
writer thread; PIL releases the GIL while it compresses).
"""

from __future__ import annotations

import filecmp
import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from fundus_studio import dataset, labels
from fundus_studio.errors import DatasetError, InputError
from fundus_studio.export import PROVENANCE_COLUMNS, hashes_text
from fundus_studio.imageio import MIN_SIDE, atomic_write, read_image, read_label_map, save_png
from fundus_studio.phantom import sample_seed
from fundus_studio.studio import RENDER_STREAM, Studio, pair_seeds

GENERATOR = "fundus_studio.generate"
PROVENANCE = "sampled"  # manifest `provenance` (export.PROVENANCES)
ID_PREFIX = "sample"
ID_DIGITS = 6  # sample-000123; ids sort in sample order up to 10⁶ samples per run
# What _load loads for sampling: the chosen generator's sampler ("acgan" stands for it) and the renderer.
SAMPLING_MODELS: tuple[str, ...] = ("acgan", "spade")
# A render of one sample on another thread count or CPU may differ by a grey level in a few pixels
# (float reductions in another order); merge treats such twins as the same sample.
RENDER_ROUNDING = 1
WRITE_AHEAD = 2  # samples generated but not yet written (bounds memory; one is enough to overlap)
RENDER_SUFFIXES: dict[str, str] = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
JPEG_QUALITY = 95


# --- seeds, ids, shards ---------------------------------------------------------------------------


def sample_id(index: int) -> str:
    return f"{ID_PREFIX}-{index:0{ID_DIGITS}d}"


def render_seed(seed: int) -> int:
    """The render latent's seed of the sample with (label) seed ``seed``; see ``studio.pair_seeds``."""
    return sample_seed(seed, RENDER_STREAM)


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)`` with ``0 ≤ I < N``; raises InputError otherwise."""
    head, sep, tail = text.partition("/")
    try:
        shard = (int(head), int(tail)) if sep else None
    except ValueError:
        shard = None
    if shard is None:
        raise InputError(f"shard must be I/N (e.g. 0/4), got {text!r}")
    return _check_shard(shard)


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    index, total = shard
    if total < 1 or not 0 <= index < total:
        raise InputError(f"shard {index}/{total}: need 0 ≤ I < N")
    return int(index), int(total)


def _check_positive(value: int, *, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{what} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


# --- checkpoints ----------------------------------------------------------------------------------


def source_name(generator: str) -> str:
    """Manifest ``source`` of a pair sampled with ``generator``: e.g. ``acgan+spade``, ``flow+spade``."""
    return f"{generator}+spade"


def _load(checkpoints: Path, names: tuple[str, ...], *, generator: str | None = None) -> tuple[Any, ...]:
    """The pipeline objects for ``names`` (``acgan`` standing for the chosen generator's sampler), or
    CheckpointError naming the first missing or corrupt file. Called before any output is touched."""
    studio = Studio.from_checkpoints(checkpoints, generator=generator)
    return tuple(studio.sampler() if name == "acgan" else studio.model(name) for name in names)


def _hashes(checkpoints: Path, *, generator: str | None = None) -> dict[str, str]:
    """Short SHA-256 of the checkpoints a sampled pair depends on (verified when they loaded)."""
    studio = Studio.from_checkpoints(checkpoints, generator=generator)
    hashes = studio.checkpoint_hashes()
    return {name: hashes[name] for name in (*studio.sampling_checkpoints(), "spade")}


# --- sampling -------------------------------------------------------------------------------------


def _refuse_other_run(out: Path, meta: dict[str, Any], *, size: int) -> None:
    """Refuse, before anything is written, a folder that holds another run's samples."""
    if not (out / dataset.INFO_FILE).exists():
        return
    info = dataset.read_info(out)
    old = info.get("meta", {})
    if old.get("generator") != GENERATOR:
        raise DatasetError(f"{out}: holds a dataset made by {info.get('created_by')!r}, not sampled pairs; "
                           "choose a new folder")
    if info["size"] != size:
        raise DatasetError(f"{out}: holds {info['size']}-px samples, this run writes {size}-px ones; "
                           "use a new folder to change it")
    for key in ("seed", "grade", "checkpoints", "shard"):
        if old.get(key) != meta[key]:
            raise DatasetError(f"{out}: holds samples made with a different {key} ({old.get(key)!r} there, "
                               f"{meta[key]!r} now); use a new folder to change it")


def _record_count(writer: dataset.DatasetWriter, count: int) -> None:
    """Raise the run's recorded ``count`` when a re-run asks for more samples."""
    meta = writer.info.setdefault("meta", {})
    if meta.get("count", 0) >= count:
        return
    meta["count"] = count
    with atomic_write(writer.root / dataset.INFO_FILE, "w") as fh:
        json.dump(writer.info, fh, indent=2)


def sample_dataset(
    out: str | os.PathLike[str],
    *,
    count: int,
    grade: int | None,
    seed: int,
    size: int = 512,
    shard: tuple[int, int] = (0, 1),
    checkpoints: str | os.PathLike[str],
    generator: str | None = None,
    progress: bool = True,
) -> Path:
    """Write (or resume) a studio dataset of sampled pairs and return its folder.

    Args:
        out: dataset folder to create or resume.
        count: samples in the whole run (all shards together); ids ``sample-000000`` … .
        grade: DR grade 0..4 of every sample, or None for ``i % NUM_GRADES``.
        seed: run seed; sample ``i``'s seed is ``sample_seed(seed, i)``.
        size: side of the label maps and photos in pixels.
        shard: ``(I, N)``: write only the samples with ``i % N == I``.
        checkpoints: folder holding a label-map generator and ``spade`` checkpoints.
        generator: ``flow`` or ``acgan`` (studio.GENERATORS); None: the folder's default.

    Samples already in ``out`` are skipped; a folder written with another seed, grade, size, shard
    or checkpoints is refused. Manifest extra columns: ``export.PROVENANCE_COLUMNS``.
    """
    from tqdm.auto import tqdm

    count = _check_positive(count, what="count")
    size = _check_positive(size, what="size", minimum=MIN_SIDE)
    if grade is not None and (isinstance(grade, bool) or grade not in range(labels.NUM_GRADES)):
        raise InputError(f"grade must be 0..{labels.NUM_GRADES - 1} or None (all), got {grade!r}")
    shard = _check_shard(shard)
    sample_seed(seed, 0)  # validates the seed (a non-negative integer)
    out, checkpoints = Path(out), Path(checkpoints)
    # Checkpoints first: a missing or corrupt one must fail before any folder exists.
    sampler, renderer = _load(checkpoints, SAMPLING_MODELS, generator=generator)
    hashes = _hashes(checkpoints, generator=generator)
    source = source_name(Studio.from_checkpoints(checkpoints, generator=generator).generator_name())
    meta = {"generator": GENERATOR, "seed": int(seed), "count": count, "grade": grade, "size": size,
            "shard": list(shard), "checkpoints": hashes, "source": source}
    _refuse_other_run(out, meta, size=size)
    writer = dataset.DatasetWriter(out, size=size, created_by="fundus-studio sample",
                                   extra_columns=PROVENANCE_COLUMNS, meta=meta)
    _record_count(writer, count)
    extra = {"provenance": PROVENANCE, "checkpoints": hashes_text(hashes)}

    index, total = shard
    mine = range(index, count, total)
    done = writer.done_ids
    todo = [i for i in mine if sample_id(i) not in done]
    pending: deque[Future[Any]] = deque()
    with ThreadPoolExecutor(max_workers=1) as pool, \
            tqdm(total=len(mine), initial=len(mine) - len(todo), disable=not progress, unit="pair",
                 desc=f"sample → {out}") as bar:
        for i in todo:
            g = grade if grade is not None else i % labels.NUM_GRADES
            s, photo_seed = pair_seeds(seed, i)
            label_map = sampler.sample_grades([g], seed=s, size=size)[0]
            photo = renderer.render(label_map, seed=photo_seed)
            pending.append(pool.submit(writer.add, sample_id=sample_id(i), image=photo, label=label_map,
                                       grade=g, source=source, seed=s, extra=extra))
            while len(pending) >= WRITE_AHEAD or (pending and pending[0].done()):
                pending.popleft().result()  # re-raises a failed write here
                bar.update(1)
        while pending:
            pending.popleft().result()
            bar.update(1)
    return writer.root


# --- merging --------------------------------------------------------------------------------------


def _same_sample(a_root: Path, a: dataset.Sample, b_root: Path, b: dataset.Sample) -> bool:
    """Whether two manifest rows describe the same sample: same fields, same label map, and photos
    equal up to ``RENDER_ROUNDING`` grey levels."""
    if (a.grade, a.source, a.seed, a.extra) != (b.grade, b.source, b.seed, b.extra):
        return False
    # Equal bytes settle it; otherwise compare pixels (another zlib may encode the same image differently).
    if not filecmp.cmp(a_root / a.label, b_root / b.label, shallow=False) and \
            not np.array_equal(read_label_map(a_root / a.label), read_label_map(b_root / b.label)):
        return False
    if filecmp.cmp(a_root / a.image, b_root / b.image, shallow=False):
        return True
    image_a, image_b = (read_image(root / s.image, max_side=None) for root, s in ((a_root, a), (b_root, b)))
    return image_a.shape == image_b.shape and \
        int(np.abs(image_a.astype(np.int16) - image_b.astype(np.int16)).max()) <= RENDER_ROUNDING


def merge_datasets(sources: list[Path], *, out: str | os.PathLike[str], progress: bool = True) -> Path:
    """Join studio datasets (e.g. the shards of one sampling run) into ``out`` and return it.

    All sources must have the same size and manifest columns. Files are copied byte for byte and rows
    are written in id order, so merging the shards of a run gives the run's own manifest. A sample id
    met twice is copied once if both are the same sample (overlapping shards, or a re-run of the
    merge) and refused otherwise. ``out`` is resumed like every dataset; its meta lists the sources.
    """
    from tqdm.auto import tqdm

    if not sources:
        raise InputError("merge needs at least one source dataset")
    out = Path(out)
    opened = [dataset.StudioDataset.open(src) for src in sources]
    first = opened[0]
    for ds in opened:
        if ds.root.resolve() == out.resolve():
            raise InputError(f"{out}: is one of the sources; merge into a new folder")
        if ds.size != first.size:
            raise DatasetError(f"{ds.root}: holds {ds.size}-px samples, {first.root} {first.size}-px ones; "
                               "only datasets of one size can be merged")
        if ds.extra_columns != first.extra_columns:
            raise DatasetError(f"{ds.root}: manifest columns {list(ds.extra_columns)} differ from {first.root}'s "
                               f"{list(first.extra_columns)}")
    listed = [{"path": str(ds.root), "meta": ds.info.get("meta", {})} for ds in opened]

    # Check every row and duplicate before writing anything, so a refusal leaves `out` as it was.
    seen: dict[str, tuple[Path, dataset.Sample]] = {}
    if (out / dataset.INFO_FILE).exists():
        existing = dataset.StudioDataset.open(out)
        if (existing.size, existing.extra_columns) != (first.size, first.extra_columns):
            raise DatasetError(f"{out}: holds {existing.size}-px samples with columns {list(existing.extra_columns)}, "
                               f"the sources {first.size}-px with {list(first.extra_columns)}; merge into a new folder")
        seen = {s.id: (out, s) for s in existing if (out / s.image).is_file() and (out / s.label).is_file()}
    todo: list[tuple[dataset.StudioDataset, dataset.Sample]] = []
    # Stable sort: rows in id order, the sources' order among equal ids.
    for ds, s in sorted(((ds, s) for ds in opened for s in ds), key=lambda row: row[1].id):
        for rel in (s.image, s.label):
            if not (ds.root / rel).is_file():
                raise DatasetError(f"{ds.root / rel}: listed in {ds.root / dataset.MANIFEST_FILE} but missing")
        if s.id in seen:
            root, kept = seen[s.id]
            if not _same_sample(root, kept, ds.root, s):
                raise DatasetError(f"{ds.root}: sample {s.id} differs from the one in {root}; "
                                   "refusing to merge two different samples under one id")
            continue
        try:
            dataset.check_id(s.id)  # ids become file names in `out`
        except InputError as err:
            raise DatasetError(f"{ds.root / dataset.MANIFEST_FILE}: {err}") from None
        seen[s.id] = (ds.root, s)
        todo.append((ds, s))

    writer = dataset.DatasetWriter(out, size=first.size, created_by="fundus-studio merge",
                                   extra_columns=first.extra_columns, meta={"sources": listed})
    old_sources = writer.info.setdefault("meta", {}).setdefault("sources", [])
    new_sources = [s for s in listed if s not in old_sources]
    if new_sources:  # a merge into an existing merge adds its sources to the list
        old_sources.extend(new_sources)
        with atomic_write(writer.root / dataset.INFO_FILE, "w") as fh:
            json.dump(writer.info, fh, indent=2)

    for ds, s in tqdm(todo, disable=not progress, unit="sample", desc=f"merge → {out}"):
        writer.add_from(s, root=ds.root)
    return writer.root


# --- one render -----------------------------------------------------------------------------------


def render_file(
    label_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    seed: int = 0,
    style: str | os.PathLike[str] | None = None,
    checkpoints: str | os.PathLike[str],
    nearest: bool = False,
) -> Path:
    """Render a label map file (palette PNG, or a colour image in the taxonomy colours) to a photo.

    The photo has the map's size and is written atomically as PNG or JPEG (by ``out_path``'s
    suffix). ``style`` is a reference photo whose style replaces the seed's latent; ``nearest`` snaps
    colours outside the palette to the nearest class instead of refusing them.
    """
    label_path, out_path = Path(label_path), Path(out_path)
    fmt = RENDER_SUFFIXES.get(out_path.suffix.lower())
    if fmt is None:
        raise InputError(f"{out_path}: renders are written as {', '.join(RENDER_SUFFIXES)}; name the file so")
    if out_path.exists() and label_path.exists() and out_path.resolve() == label_path.resolve():
        raise InputError(f"{out_path}: is the label map itself; choose another output file")
    sample_seed(seed, 0)  # validates the seed
    (renderer,) = _load(Path(checkpoints), ("spade",))
    try:
        label_map = read_label_map(label_path, nearest=nearest)
    except InputError as err:
        if nearest:
            raise
        try:  # colours off the palette are the one failure that --nearest fixes
            read_label_map(label_path, nearest=True)
        except InputError:
            raise err from None
        raise InputError(f"{err} (pass --nearest)") from None
    photo = renderer.render(label_map, seed=seed, style=None if style is None else read_image(style))
    if fmt == "PNG":
        return save_png(out_path, photo)
    from PIL import Image

    with atomic_write(out_path) as fh:
        Image.fromarray(photo).save(fh, format=fmt, quality=JPEG_QUALITY)
    return out_path
