"""The quality report of a checkpoints folder: label maps, renders and downstream segmentation, measured.

    fundus-studio evaluate --checkpoints checkpoints --data data/phantoms-test --out reports/phantoms

``--data`` is a studio dataset of real (photo, label map, grade) triples that none of the models saw
in training. Three stages, each written to OUT and reused when the command is run again:

1. **labels** (``training.evaluate_labels``), for the default generator and every other one in the
   folder: the grade classifier's accuracy and quadratic-weighted kappa on ``per_grade`` generated
   maps per grade versus on the real maps; lesion statistics per grade; within-grade diversity;
   anatomy (disc, vessel share, tree connectivity, vessel width, lesion share); memorisation.
2. **renders**: ``render_count`` real pairs at the segmenter's side. A U-Net trained on real photos
   (``CHECKPOINTS/unet``, or ``--segmenter``) segments the real photos and the renders of their label
   maps; per-class IoU on both (SPADE's mIoU protocol, ``evaluate_renders.segmentation_fidelity``);
   L1 and SSIM of renders against the real photos (``evaluate_renders.evaluate``). The first
   ``style_count`` of those pairs, at the data's side, rendered in their own photo's style and scored
   after a 2-px blur against painting each class the photo's mean colour (``evaluate_renders.own_style``);
   and the real photos of :data:`REAL_PHOTOS` rendered in their own style and in a seeded one: colour
   distance and background texture (``evaluate_renders.real_photo``). Figures: own_style.png,
   real_photos.png (drawn with the stage, kept with its cache).
3. **downstream** (Son et al.'s experiment, ``training.mix_experiment``): ``real_train`` pairs of
   ``--data`` (stratified by grade) are the scarce real training set, the rest (at most ``test_count``)
   the test set. A fresh U-Net per (source, synthetic share, seed) segments ``classes`` (one U-Net for
   all of them), each with its thresholds chosen on its own grade-stratified validation split of the
   real pairs. Sources (:data:`DOWNSTREAM_SOURCES`): ``pool`` samples of ``generator`` + SPADE
   (``fundus-studio sample``; the folder's default generator unless ``generator`` is set), the
   copy-paste baseline built from the same real training pairs (``training.copy_paste``), and both
   together (each run's synthetic count split evenly between the two pools); and two controls drawn
   from real pairs of ``--data`` that are neither training nor test pairs: ``more-real`` (those pairs
   as they are: what a perfect generator and renderer would add) and ``real-maps`` (their label maps
   rendered by the shipped SPADE: a perfect generator with our renderer). Every run has the same
   step budget. Beside it, the paper-faithful variant: the generated source at ``paper_fractions``
   with the synthetic count of Son et al.'s rows (``training.unet.synthetic_count``, ``paper``).

OUT/REPORT.md holds the tables and the project's targets, OUT/report.json every number, and
OUT/*.png the plots. OUT/config.json pins the settings and the checkpoints' hashes: a later run with
other settings or other checkpoints is refused instead of mixing results.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fundus_studio import labels
from fundus_studio.checkpoint import config_to_dict, load_model, read_info
from fundus_studio.dataset import MANIFEST_FILE, DatasetWriter, Sample, StudioDataset
from fundus_studio.errors import CheckpointError, DatasetError
from fundus_studio.imageio import atomic_write
from fundus_studio.models.unet import UNet
from fundus_studio.pipeline import LabelSamplingConfig
from fundus_studio.studio import GENERATORS, UPSAMPLER, Studio, pair_seeds
from training import (
    copy_paste,
    evaluate_labels,
    evaluate_renders,
    harness,
    mix_experiment,
    report_plots,
    unet,
)
from training.evaluate_segmentation import finite
from training.report_text import markdown, source_labels, targets

STAGES: tuple[str, ...] = ("labels", "renders", "downstream")
# The downstream stage's kinds of synthetic data: the generator's pairs, the copy-paste baseline, both;
# then two controls that tell the generator's share of a gap from the renderer's and from what any
# extra data can give: unused real pairs as they are, and their real maps rendered by SPADE.
DOWNSTREAM_SOURCES: tuple[str, ...] = ("generated", "copy-paste", "combined", "real-maps", "more-real")
CONTROL_SOURCES: tuple[str, ...] = ("real-maps", "more-real")  # built from the unused real pairs
SETTINGS_FILE = "config.json"
REQUIRED: tuple[str, ...] = ("spade", "grade_classifier")  # a generator and a U-Net (the folder's or --segmenter) too
SAMPLES_PER_GRADE = 4  # columns of the samples figure
OWN_STYLE_SHOWN = 3  # rows of the own-style figure


def _skimage_retina() -> np.ndarray:
    from skimage import data

    return data.retina()


# Real fundus photos whose licence lets the report show them, and how to load each (offline).
REAL_PHOTOS: dict[str, Callable[[], np.ndarray]] = {"skimage.data.retina (CC0)": _skimage_retina}


@dataclass(frozen=True)
class ReportConfig:
    checkpoints: Path  # folder with acgan, spade, grade_classifier and unet checkpoints
    data: Path  # held-out real studio dataset (photos, label maps, grades) none of the models trained on
    out: Path  # report folder; re-running resumes it
    stages: tuple[str, ...] = STAGES  # which stages to run (the report shows those run so far)
    seed: int = 0  # sampling, pair choice, data split and the synthetic pools
    per_grade: int = 100  # labels: generated maps per grade
    render_count: int = 100  # renders: held-out pairs rendered and segmented
    style_count: int = 30  # renders: of those, how many are also rendered at the data's side in their photo's style
    segmenter: Path | None = None  # renders: U-Net trained on real photos (default CHECKPOINTS/unet.safetensors)
    real_train: int = 50  # downstream: scarce real pairs, stratified by grade (val_fraction of them validate)
    test_count: int = 100  # downstream: cap on the test pairs (0 = every pair not in the real training set)
    pool: int = 200  # downstream: pairs in each synthetic pool (≥ what the largest share needs)
    # downstream: side of the generated pairs; None = the renderer's training side (each run's U-Net
    # resizes them to its own side as it resizes the real photos)
    synthetic_size: int | None = None
    donors: int = 2  # downstream: same-grade pairs whose lesions each copy-paste sample gets
    generator: str | None = None  # downstream: label-map generator of the generated pool (None: the folder's default)
    sources: tuple[str, ...] = DOWNSTREAM_SOURCES  # downstream: synthetic sources compared with real-only
    classes: tuple[str, ...] = ("hard_exudate", "haemorrhage")  # downstream: classes one U-Net segments
    fractions: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)  # downstream: synthetic shares of the training set
    paper_fractions: tuple[float, ...] = (0.25,)  # downstream: the paper's rows run with its counting (() = none)
    paper_real: int = unet.PAPER_REAL  # downstream: the real set the paper's synthetic counts are read against
    val_fraction: float = 0.2  # downstream: real training pairs each run holds out to choose its thresholds
    seeds: int = 5  # downstream: U-Net seeds per (source, share)
    unet_preset: str = "small-cpu"  # downstream: training.unet preset of every run
    unet_steps: int | None = None  # downstream: steps per run (default: the preset's)
    jobs: int = 2  # downstream: U-Nets trained at once (does not change the results' meaning)
    threads: int | None = None  # torch CPU threads, shared by the jobs (does not change the results' meaning)

    def __post_init__(self) -> None:
        if not self.stages or set(self.stages) - set(STAGES):
            raise ValueError(f"stages must be some of {', '.join(STAGES)}, got {self.stages}")
        if min(self.per_grade, self.render_count, self.style_count, self.real_train, self.pool, self.donors,
               self.seeds) < 1:
            raise ValueError("per_grade, render_count, style_count, real_train, pool, donors and seeds must be "
                             "positive")
        if self.per_grade < 2:
            raise ValueError("per_grade must be at least 2 (diversity compares pairs of maps)")
        if self.test_count < 0:
            raise ValueError(f"test_count must be ≥ 0 (0 = every remaining pair), got {self.test_count}")
        if self.jobs < 1 or self.paper_real < 1:
            raise ValueError(f"jobs and paper_real must be positive, got {self.jobs}, {self.paper_real}")
        if not self.sources or set(self.sources) - set(DOWNSTREAM_SOURCES):
            raise ValueError(f"sources must be some of {', '.join(DOWNSTREAM_SOURCES)}, got {self.sources}")
        if self.generator is not None and self.generator not in GENERATORS:
            raise ValueError(f"generator must be one of {', '.join(GENERATORS)}, got {self.generator!r}")
        object.__setattr__(self, "fractions", tuple(sorted(set(self.fractions))))
        if not self.fractions or not all(0.0 <= f < 1.0 for f in self.fractions):
            raise ValueError(f"fractions must lie in [0, 1), got {self.fractions}")
        if 0.0 not in self.fractions:
            raise ValueError("fractions must include 0 (the real-only runs every share is compared with)")
        object.__setattr__(self, "paper_fractions", tuple(sorted(set(self.paper_fractions))))
        if set(self.paper_fractions) - set(unet.PAPER_SYNTHETIC):
            raise ValueError(f"paper_fractions must be some of the paper's rows {sorted(unet.PAPER_SYNTHETIC)}, "
                             f"got {self.paper_fractions}")
        if not 0.0 < self.val_fraction < 1.0 or unet.val_count(self.real_train, self.val_fraction) < 1:
            raise ValueError(f"val_fraction must hold out at least one of {self.real_train} real pairs and leave "
                             f"some, got {self.val_fraction}")
        if self.real_trained < 1:
            raise ValueError(f"val_fraction {self.val_fraction} leaves no real training pair of {self.real_train}")
        for fractions, counting in ((self.fractions, "training-set"), (self.paper_fractions, "paper")):
            if fractions and (needed := self.largest_synthetic(counting=counting)) > self.pool:
                raise ValueError(f"a {100 * fractions[-1]:g} % share ({counting} counting) of {self.real_trained} real "
                                 f"training pairs needs {needed} synthetic pairs; raise pool (now {self.pool})")
        if self.unet_preset not in unet.PRESETS:
            raise ValueError(f"unet_preset must be one of {', '.join(sorted(unet.PRESETS))}, got {self.unet_preset!r}")
        # Full taxonomy names (short ones accepted): the experiment's results are keyed by them.
        object.__setattr__(self, "classes", tuple(labels.NAMES[labels.class_index(n)] for n in self.classes))

    @property
    def real_trained(self) -> int:
        """Real pairs each downstream run trains on (``real_train`` less its validation split)."""
        return self.real_train - unet.val_count(self.real_train, self.val_fraction)

    def largest_synthetic(self, *, counting: str = "training-set") -> int:
        """Synthetic pairs the largest share of ``fractions`` (training-set counting) or of
        ``paper_fractions`` (``paper``) needs."""
        fractions = self.fractions if counting == "training-set" else self.paper_fractions
        return unet.synthetic_count(self.real_trained, max(fractions), counting=counting, paper_real=self.paper_real)


# --- settings -------------------------------------------------------------------------------------

# Not pinned: where and how fast the report runs, and which stages and downstream sources it has run
# so far (each source's runs live in a folder of their own, so adding one leaves the others valid).
UNPINNED = frozenset({"out", "stages", "threads", "jobs", "sources"})


def pin_settings(cfg: ReportConfig) -> dict[str, Any]:
    """Write OUT/config.json, or check a re-run against it; return the settings."""
    settings = {k: v for k, v in config_to_dict(cfg).items() if k not in UNPINNED}
    settings["checkpoint_hashes"] = Studio.from_checkpoints(cfg.checkpoints).checkpoint_hashes()
    # How maps are sampled and decoded (not a checkpoint, but it changes every generated map).
    sampling = LabelSamplingConfig()
    settings["flow_sampling"] = config_to_dict(sampling.flow)
    settings["vessel_tree"] = config_to_dict(sampling.vessel_tree)
    settings["lesion_spots"] = config_to_dict(sampling.lesion_spots)
    settings["lesion_tangles"] = config_to_dict(sampling.lesion_tangles)
    # The paths alone would not notice a dataset regenerated in place or a retrained segmenter.
    settings["data_manifest_sha256"] = hashlib.sha256((cfg.data / MANIFEST_FILE).read_bytes()).hexdigest()
    if cfg.segmenter is not None:
        settings["segmenter_sha256"] = read_info(cfg.segmenter).get("sha256")
    path = cfg.out / SETTINGS_FILE
    if not path.is_file() and cfg.out.is_dir() and any(cfg.out.iterdir()):
        # Its pools and runs would be reused as if they were this run's, whatever made them.
        raise DatasetError(f"{cfg.out}: holds files but no {SETTINGS_FILE}, so the settings they were made with "
                           "are unknown; delete the folder (rm -rf, not git rm: pools and runs are untracked) "
                           "or choose another --out")
    if path.is_file():
        before = json.loads(path.read_text())
        changed = sorted(k for k in settings.keys() | before.keys()
                         if k not in UNPINNED and settings.get(k) != before.get(k))
        if changed:
            raise DatasetError(f"{cfg.out}: holds a report made with other settings ({', '.join(changed)} differ); "
                               "choose another --out, or delete it to start over")
        if not UNPINNED & before.keys():
            return before
    cfg.out.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as fh:
        json.dump(settings, fh, indent=2)
    return settings


def _cached(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The stage result at ``path``, computed (and written atomically) when absent."""
    if path.is_file():
        return json.loads(path.read_text())
    return _write(path, finite(compute()))


def _write(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    with atomic_write(path, "w") as fh:
        json.dump(result, fh, indent=2)
    return result


# --- stage 1: label maps --------------------------------------------------------------------------


def label_stage(cfg: ReportConfig, studio: Studio) -> dict[str, Any]:
    """The default generator's evaluation, with every other generator of the folder under ``others``."""
    def evaluate(name: str) -> dict[str, Any]:
        upsampler = studio.path(UPSAMPLER) if UPSAMPLER in studio.sampling_checkpoints(name) else None
        return evaluate_labels.evaluate(evaluate_labels.EvalConfig(
            checkpoint=studio.path(GENERATORS[name]), data=cfg.data, classifier=studio.path("grade_classifier"),
            upsampler=upsampler, per_grade=cfg.per_grade, seed=cfg.seed, size=size))

    size = StudioDataset.open(cfg.data).size  # generated maps are measured at the real maps' side
    default = studio.generator_name()
    result = {**evaluate(default), "generator": default}
    others = [n for n, ckpt in GENERATORS.items() if n != default and studio.has(ckpt)]
    return {**result, "others": {n: evaluate(n) for n in others}}


# --- stage 2: renders -----------------------------------------------------------------------------


def render_stage(cfg: ReportConfig, studio: Studio, *, segmenter: Path, unet_model: UNet) -> dict[str, Any]:
    """``unet_model``: the U-Net that judges the renders, loaded from ``segmenter``."""
    trained = read_info(segmenter).get("data") or {}
    side = _side(trained) or 0
    if side < 1:
        raise CheckpointError(f"{segmenter}: no training resolution recorded; the renders need the segmenter's side")
    renderer = studio.model("spade")
    # Truth maps reach the segmenter's side the way its training maps did.
    downsample = trained.get("downsample", "area")
    pairs = harness.load_pairs(cfg.data, resolution=side, downsample=downsample)
    pick = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(cfg.seed))[: cfg.render_count]
    pairs = pairs.subset(pick)
    # The renderer draws each map the way its training maps were made (side, downsampling); the render
    # then reaches the segmenter's side by the path the photo took, so render and photo differ only
    # in what the renderer drew.
    drawn = _training_data(studio, "spade")
    render_side = _side(drawn) or side
    render_downsample = drawn.get("downsample", "area")
    source = (pairs if (render_side, render_downsample) == (side, downsample) else
              harness.load_pairs(cfg.data, resolution=render_side, downsample=render_downsample).subset(pick))
    resize = lambda images: np.stack([harness.resize_photo(im, side) for im in images])  # noqa: E731
    renders = resize(evaluate_renders.render_seeded(renderer, source, seed=cfg.seed))  # rendered once, scored twice
    styled = resize(evaluate_renders.render_styled(renderer, source, seed=cfg.seed)) if renderer.encoder else None
    fidelity = evaluate_renders.segmentation_fidelity(unet_model, pairs, renders=renders)
    photo = {**evaluate_renders.evaluate(renderer, pairs, seed=cfg.seed, seeded=renders, styled=styled),
             **evaluate_renders.class_mean_baseline(pairs)}
    return {"segmenter": str(segmenter), "segmenter_classes": [labels.NAMES[k] for k in unet_model.config.classes],
            "resolution": side, "spade_resolution": render_side, "spade_downsample": render_downsample,
            "count": len(pairs),
            "ids": list(pairs.ids), "segmentation": fidelity, "photo": photo,
            "own_style": own_style_part(cfg, studio, ids=list(pairs.ids)),
            "real_photos": real_photo_part(cfg, studio)}


def own_style_part(cfg: ReportConfig, studio: Studio, *, ids: list[str]) -> dict[str, Any]:
    """The first ``style_count`` of the render stage's pairs at the data's side, each rendered in its
    own photo's style; draws OUT/own_style.png."""
    ds = StudioDataset.open(cfg.data)
    by_id = {s.id: s for s in ds.samples}
    chosen = [by_id[i] for i in ids[: cfg.style_count]]
    photos, maps = np.stack([ds.image(s) for s in chosen]), np.stack([ds.label(s) for s in chosen])
    result, shown = evaluate_renders.own_style(studio.model("spade"), photos, maps, seed=cfg.seed,
                                               keep=OWN_STYLE_SHOWN)
    report_plots.image_rows(
        [[p, labels.to_color(m), r, q] for p, m, r, q in shown],
        titles=["held-out photo", "its label map", "render in the photo's style", "each class its mean colour"],
        row_labels=[s.id for s in chosen[: len(shown)]], path=cfg.out / "own_style.png")
    return {**result, "ids": [s.id for s in chosen]}


def real_photo_part(cfg: ReportConfig, studio: Studio) -> dict[str, Any]:
    """Every photo of :data:`REAL_PHOTOS` at the data's side, its extracted map rendered in the photo's
    own style and in the style of ``cfg.seed``; draws OUT/real_photos.png."""
    size = StudioDataset.open(cfg.data).size
    figures, rows = {}, []
    for name, load in REAL_PHOTOS.items():
        figures[name], images = evaluate_renders.real_photo(studio.model("spade"), load(), size=size, seed=cfg.seed)
        rows.append([images["photo"], labels.to_color(images["map"]), images["own"], images["seeded"]])
    report_plots.image_rows(rows, titles=["real photo (preprocessed)", "extracted label map",
                                          "render in the photo's own style", f"render, seeded style ({cfg.seed})"],
                            row_labels=list(REAL_PHOTOS), path=cfg.out / "real_photos.png")
    return figures


def synthetic_side(cfg: ReportConfig, studio: Studio) -> int:
    """Side of the downstream stage's generated pairs: ``synthetic_size``, else the renderer's training
    side (the side it draws best at), else the data's."""
    if cfg.synthetic_size:
        return cfg.synthetic_size
    return _trained_side(studio, "spade") or StudioDataset.open(cfg.data).size


def _training_data(studio: Studio, name: str) -> dict[str, Any]:
    """The ``data`` record of a checkpoint (side, downsampling, dataset); {} when it has none."""
    return read_info(studio.path(name)).get("data") or {}


def _side(training_data: dict[str, Any]) -> int | None:
    """The side a checkpoint's ``data`` block says it was trained at (None when it does not say)."""
    side = training_data.get("resolution")
    return side if isinstance(side, int) and side > 0 else None


def _trained_side(studio: Studio, name: str) -> int | None:
    return _side(_training_data(studio, name))


def sample_grid(cfg: ReportConfig, studio: Studio) -> tuple[np.ndarray, np.ndarray]:
    """(maps (G, N, S, S), renders (G, N, S, S, 3)): the first N samples of each grade of
    ``fundus-studio sample --seed SEED`` (sample i has grade i mod G), at the renderer's training side
    (the data's side when the checkpoint does not record it)."""
    side = _trained_side(studio, "spade") or StudioDataset.open(cfg.data).size
    maps, renders = [], []
    for g in range(labels.NUM_GRADES):
        seeds = [pair_seeds(cfg.seed, g + labels.NUM_GRADES * i) for i in range(SAMPLES_PER_GRADE)]
        row = [studio.sample_labels(grade=g, count=1, seed=s, size=side)[0] for s, _ in seeds]
        maps.append(np.stack(row))
        renders.append(np.stack([studio.render(m, seed=r) for m, (_, r) in zip(row, seeds)]))
    return np.stack(maps), np.stack(renders)


# --- stage 3: downstream --------------------------------------------------------------------------


def _shuffled(ds: StudioDataset, *, seed: int) -> list[Sample]:
    return [ds.samples[i] for i in np.random.default_rng(seed).permutation(len(ds.samples))]


def unused_real(ds: StudioDataset, *, taken: list[Sample], count: int, seed: int) -> list[Sample]:
    """Up to ``count`` pairs of ``ds`` that are not in ``taken`` (the real training and test pairs), in
    the seeded order :func:`split_real` draws from: the control sources' pairs."""
    ids = {s.id for s in taken}
    return [s for s in _shuffled(ds, seed=seed) if s.id not in ids][:count]


def render_real_maps(ds: StudioDataset, samples: list[Sample], *, studio: Studio, out: Path, seed: int) -> Path:
    """The studio dataset ``out`` of ``samples``' real label maps, each rendered by the studio's SPADE
    with the photo seed of pair i (resumable; refuses a folder of other pairs or another seed)."""
    meta = {"rendered_from": str(ds.root), "ids": [s.id for s in samples], "seed": seed}
    writer = DatasetWriter(out, size=ds.size, created_by="fundus-studio evaluate", meta=meta)
    if writer.info.get("meta") != meta:
        raise DatasetError(f"{out}: holds other rendered maps; delete it or choose another --out")
    done = writer.done_ids
    for i, s in enumerate(samples):
        if s.id not in done:
            label_map, photo_seed = ds.label(s), pair_seeds(seed, i)[1]
            writer.add(sample_id=s.id, image=studio.render(label_map, seed=photo_seed), label=label_map,
                       grade=s.grade, source="real map + SPADE", seed=photo_seed)
    return writer.root


def control_pools(cfg: ReportConfig, ds: StudioDataset, *, taken: list[Sample], studio: Studio,
                  needs: set[str], data: Path) -> dict[str, Path]:
    """The control sources' pools (``CONTROL_SOURCES`` in ``needs``) from the pairs of ``ds`` that are
    neither training nor test pairs; DatasetError when there are fewer than the largest share needs."""
    if not needs & set(CONTROL_SOURCES):
        return {}
    needed = cfg.largest_synthetic()
    extra = unused_real(ds, taken=taken, count=cfg.pool, seed=cfg.seed)
    if len(extra) < needed:
        raise DatasetError(f"{ds.root}: {len(extra)} pairs are neither training nor test pairs, but the control "
                           f"sources ({', '.join(CONTROL_SOURCES)}) need {needed}; lower --test-count or leave them "
                           "out of --sources")
    pools = {}
    if "more-real" in needs:
        pools["more-real"] = write_subset(ds, extra, out=data / "more-real")
    if "real-maps" in needs:
        pools["real-maps"] = render_real_maps(ds, extra, studio=studio, out=data / "real-maps-spade", seed=cfg.seed)
    return pools


def split_real(ds: StudioDataset, *, count: int, test_count: int, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(real training pairs, test pairs): ``count`` graded pairs taken grade by grade in turn from a
    seeded shuffle (so every grade is represented), and the rest (at most ``test_count`` if > 0)."""
    if not any(s.grade is not None for s in ds.samples):
        raise DatasetError(f"{ds.root}: no pair has a DR grade; the downstream stage draws its real training "
                           "pairs and the copy-paste donors by grade (run --stages labels,renders without it)")
    order = _shuffled(ds, seed=seed)
    queues = {g: [s for s in order if s.grade == g] for g in range(labels.NUM_GRADES)}
    train: list[Sample] = []
    while len(train) < count and any(queues.values()):
        for g in range(labels.NUM_GRADES):
            if queues[g] and len(train) < count:
                train.append(queues[g].pop(0))
    taken = {s.id for s in train}
    test = [s for s in order if s.id not in taken]
    test = test[:test_count] if test_count else test
    if len(train) < count or not test:
        raise DatasetError(f"{ds.root}: {len(ds.samples)} pairs ({len(train)} graded available for training) "
                           f"cannot give {count} real training pairs and a test set; lower --real-train")
    return train, test


def write_subset(ds: StudioDataset, samples: list[Sample], *, out: Path) -> Path:
    """Copy ``samples`` of ``ds`` into the studio dataset ``out`` (resumable; refuses another subset)."""
    meta = {"subset_of": str(ds.root), "ids": [s.id for s in samples]}
    writer = DatasetWriter(out, size=ds.size, created_by="fundus-studio evaluate",
                           extra_columns=tuple(ds.info.get("extra_columns", ())), meta=meta)
    if writer.info.get("meta") != meta:
        raise DatasetError(f"{out}: holds another subset; delete it or choose another --out")
    done = writer.done_ids
    for s in samples:
        if s.id not in done:
            writer.add_from(s, root=ds.root)
    return writer.root


def downstream_stage(cfg: ReportConfig) -> dict[str, Any]:
    from fundus_studio.generate import sample_dataset

    start = time.perf_counter()
    ds = StudioDataset.open(cfg.data)
    train, test = split_real(ds, count=cfg.real_train, test_count=cfg.test_count, seed=cfg.seed)
    data = cfg.out / "data"
    real_dir = write_subset(ds, train, out=data / "real-train")
    test_dir = write_subset(ds, test, out=data / "test")
    studio = Studio.from_checkpoints(cfg.checkpoints)
    generator = studio.generator_name(cfg.generator)
    needs = set(cfg.sources) | ({"generated"} if cfg.paper_fractions else set())
    pools: dict[str, Path] = {}
    if needs & {"generated", "combined"}:
        pools["generated"] = sample_dataset(data / f"{generator}-spade", count=cfg.pool, grade=None, seed=cfg.seed,
                                            size=synthetic_side(cfg, studio), checkpoints=cfg.checkpoints,
                                            generator=generator)
    if needs & {"copy-paste", "combined"}:
        pools["copy-paste"] = copy_paste.make_dataset(copy_paste.CopyPasteConfig(
            real=real_dir, out=data / "copy-paste", count=cfg.pool, donors=cfg.donors, seed=cfg.seed))
    pools.update(control_pools(cfg, ds, taken=train + test, studio=studio, needs=needs, data=data))
    # "combined": every run's synthetic count split evenly between the generated and copy-paste pools.
    source_pools = {"generated": (pools.get("generated"),), "copy-paste": (pools.get("copy-paste"),),
                    "combined": (pools.get("generated"), pools.get("copy-paste")),
                    **{s: (pools.get(s),) for s in CONTROL_SOURCES}}
    # Two runs at once on one thread each: the small U-Nets scale worse across threads than across processes.
    run_threads = cfg.threads if cfg.jobs == 1 else max(1, (cfg.threads or os.cpu_count() or 1) // cfg.jobs)

    def experiment(source: str, out: Path, fractions: tuple[float, ...], counting: str) -> dict[str, Any]:
        exp = mix_experiment.ExperimentConfig(
            real=(real_dir,), synthetic=tuple(p for p in source_pools[source] if p is not None), test=test_dir,
            out=out, classes=cfg.classes, fractions=fractions, seeds=cfg.seeds, preset=cfg.unet_preset,
            steps=cfg.unet_steps, share_counting=counting, paper_real=cfg.paper_real, val_fraction=cfg.val_fraction,
            jobs=cfg.jobs, threads=run_threads)
        mix_experiment.run(exp)
        return json.loads((exp.out / "results.json").read_text())

    experiments: dict[str, Any] = {}
    for source in DOWNSTREAM_SOURCES:
        if source not in cfg.sources:
            continue
        # The real-only runs (share 0) do not depend on the pool: they are trained once, with the first source.
        fractions = cfg.fractions if not experiments else tuple(f for f in cfg.fractions if f > 0)
        if fractions:
            experiments[source] = experiment(source, cfg.out / "downstream" / source, fractions, "training-set")
    # The paper-faithful rows: the generated source, counted as Son et al.'s table counts (its own table).
    paper = {"generated": experiment("generated", cfg.out / "downstream" / "paper-generated", cfg.paper_fractions,
                                     "paper")} if cfg.paper_fractions else {}
    first = next(iter(experiments.values()))
    return {"real_train": len(train), "test": len(test), "pool": cfg.pool, "test_data": str(test_dir),
            "real_data": str(real_dir), "generator": generator, "pools": {k: str(v) for k, v in pools.items()},
            "val_fraction": cfg.val_fraction, "paper_real": cfg.paper_real,
            "summary": {source: e["summary"] for source, e in experiments.items()},
            "paper_summary": {source: e["summary"] for source, e in paper.items()},
            "run_config": first["config"], "seconds_this_invocation": round(time.perf_counter() - start, 1)}


# --- the whole report -----------------------------------------------------------------------------


def run(cfg: ReportConfig, *, command: str = "") -> Path:
    """Run the stages asked for (reusing finished ones), then write OUT/REPORT.md, report.json and
    the plots; return the REPORT.md path."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    studio = Studio.from_checkpoints(cfg.checkpoints)
    for name in REQUIRED:  # every model loads (or its one-line error names it) before any hour of work
        studio.model(name)
    studio.sampler()  # the default generator (and the upsampler it uses)
    segmenter = cfg.segmenter or studio.path("unet")
    judge = load_model(segmenter, expected=UNet) if cfg.segmenter else studio.model("unet").unet
    ds = StudioDataset.open(cfg.data)
    settings = pin_settings(cfg)
    report: dict[str, Any] = {"settings": settings, "command": command,
                              "data": {"path": str(cfg.data), "created_by": ds.info.get("created_by"),
                                       "count": len(ds), "size": ds.size}}
    stage_fns: dict[str, Callable[[], dict[str, Any]]] = {
        "labels": lambda: label_stage(cfg, studio),
        "renders": lambda: render_stage(cfg, studio, segmenter=segmenter, unet_model=judge),
    }
    for stage in STAGES:
        path = cfg.out / f"{stage}.json"
        if stage == "downstream" and stage in cfg.stages:
            print("fundus-studio evaluate: downstream", file=sys.stderr)
            report[stage] = _write(path, finite(downstream_stage(cfg)))  # the experiment resumes by itself
        elif stage in cfg.stages:
            print(f"fundus-studio evaluate: {stage}", file=sys.stderr)
            report[stage] = _cached(path, stage_fns[stage])
        elif path.is_file():  # an earlier run's stage stays in the report
            report[stage] = json.loads(path.read_text())
    report["targets"] = targets(report, classes=cfg.classes)
    if "labels" in report:
        report_plots.lesions(report["labels"], cfg.out / "lesions.png")
        report_plots.samples(*sample_grid(cfg, studio), path=cfg.out / "samples.png")
    if "renders" in report:
        report_plots.render_iou(report["renders"], cfg.out / "render_iou.png")
    if "downstream" in report:
        down = report["downstream"]
        report_plots.downstream(down["summary"], fractions=cfg.fractions, classes=cfg.classes,
                                sources=source_labels(down["generator"]), path=cfg.out / "downstream.png")
    _write(cfg.out / "report.json", finite(report))
    path = cfg.out / "REPORT.md"
    with atomic_write(path, "w") as fh:
        fh.write(markdown(report, checkpoints=str(cfg.checkpoints), data=str(cfg.data), donors=cfg.donors,
                          seeds=cfg.seeds, classes=cfg.classes, fractions=cfg.fractions))
    return path
