"""Procedural fundus phantoms: a label map, a photo-like image and a DR grade, from a seed.

Phantoms stand in for IDRiD/FGADR, which cannot be downloaded here. A phantom is built in two steps:

1. :func:`generate_label_map` draws the anatomy (circular field of view, optic disc, a branching
   vessel tree along the temporal arcades, an avascular fovea) and grade-dependent lesions, following
   the geometry and the lesion priors of ``DATA.md``. Every length is in disc diameters (DD), so the
   phantom scales with ``size``.
2. :func:`render_photo` paints a photo-like image from the label map alone (plus a seed for texture,
   illumination and colour), so that a renderer network can learn label → photo: everything the photo
   shows is derived from the label (e.g. a vessel's darkness from its width, measured with a distance
   transform), never from hidden state of the generator.

The package follows those steps: ``config`` (what a phantom is made of, seeds), ``anatomy`` (layout,
vessel tree), ``lesions``, ``label_map`` (the two composed), ``photo`` (the renderer); ``draw`` holds
the primitives they share. This module keeps the public API and writes phantom datasets.

Coordinates are image pixels ``(x, y)``, x to the right and y down. Randomness comes only from the
explicit ``numpy.random.Generator`` or seed passed in: same seed, same phantom.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fundus_studio import labels
from fundus_studio.errors import DatasetError, InputError
from fundus_studio.phantom.anatomy import sample_layout
from fundus_studio.phantom.config import (
    GENERATOR_VERSION,
    LABEL_STREAM,
    MIN_SIZE,
    SIZE_MULTIPLE,
    IntRange,
    Phantom,
    PhantomConfig,
    PhantomLayout,
    PhotoConfig,
    Range,
    check_grade,
    check_seed,
    check_size,
    random_stream,
    sample_seed,
)
from fundus_studio.phantom.label_map import generate_label_map
from fundus_studio.phantom.lesions import LESION_KINDS, draw_lesion, nominal_disc_diameter
from fundus_studio.phantom.photo import render_photo

__all__ = [
    "GENERATOR_VERSION", "LESION_KINDS", "MIN_SIZE", "SIZE_MULTIPLE", "IntRange", "Phantom", "PhantomConfig",
    "PhantomLayout", "PhotoConfig", "Range", "draw_lesion", "generate_label_map", "generate_phantom",
    "nominal_disc_diameter", "render_photo", "sample_layout", "sample_seed", "write_phantoms",
]


# --- phantoms and datasets -------------------------------------------------------------------------


def generate_phantom(*, grade: int, seed: int, size: int = 512, config: PhantomConfig = PhantomConfig()) -> Phantom:
    """One phantom from ``seed``: ``render_photo(label, seed=seed)`` paints the photo of its label map."""
    grade, size, seed = check_grade(grade), check_size(size), check_seed(seed)
    label = generate_label_map(grade=grade, rng=random_stream(seed, LABEL_STREAM), size=size, config=config)
    image = render_photo(label, seed=seed, config=config)
    return Phantom(label=label, image=image, grade=grade, seed=seed)


def write_phantoms(
    out: str | os.PathLike[str],
    *,
    count: int,
    grade: int | None,
    size: int = 512,
    seed: int = 0,
    progress: bool = True,
    config: PhantomConfig = PhantomConfig(),
) -> Path:
    """Write (or resume) a studio dataset of ``count`` phantoms and return its folder.

    Sample ``i`` is ``phantom-{i:06d}`` with seed :func:`sample_seed`\\ ``(seed, i)`` and grade
    ``grade``, or ``i % NUM_GRADES`` when ``grade`` is None. Samples already present are skipped, so
    re-running a command (or raising ``count``) only adds what is missing; a folder written with a
    different seed, grade or config is refused.
    """
    from tqdm.auto import tqdm

    from fundus_studio.dataset import DatasetWriter

    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
        raise InputError(f"count must be a positive integer, got {count!r}")
    if grade is not None:
        check_grade(grade)
    size, seed = check_size(size), check_seed(seed)
    meta = {
        "generator": "fundus_studio.phantom",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "grade": grade,
        "config": config.to_dict(),
    }
    writer = DatasetWriter(out, size=size, created_by="fundus-studio phantom", meta=meta)
    old = writer.info.get("meta", {})
    for key in ("generator_version", "seed", "grade", "config"):
        if key in meta and old.get(key) != meta[key]:
            raise DatasetError(
                f"{writer.root}: holds phantoms written with a different {key} "
                f"({old.get(key)!r} there, {meta[key]!r} now); use a new folder to change it"
                if key != "config" else f"{writer.root}: holds phantoms written with a different config; "
                "use a new folder to change it"
            )
    done = writer.done_ids
    todo = [i for i in range(count) if f"phantom-{i:06d}" not in done]
    with tqdm(total=count, initial=count - len(todo), disable=not progress, unit="phantom",
              desc=f"phantoms → {writer.root}") as bar:
        for i in todo:
            g = grade if grade is not None else i % labels.NUM_GRADES
            s = sample_seed(seed, i)
            ph = generate_phantom(grade=g, seed=s, size=size, config=config)
            writer.add(sample_id=f"phantom-{i:06d}", image=ph.image, label=ph.label, grade=g,
                       source="phantom", seed=s)
            bar.update(1)
    return writer.root
