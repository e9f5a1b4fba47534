"""The copy-paste baseline for synthetic training data: lesions cut from real pairs pasted onto a real pair.

    python -m training.copy_paste --real data/real --out data/copy-paste --count 300 [--donors 2] [--seed 0]

Sample ``i`` has grade ``i % NUM_GRADES`` (as ``fundus-studio sample`` cycles them): a target pair of
that grade is drawn from ``--real``, then ``donors`` other pairs of the same grade; every lesion
pixel of each donor (label map and photo alike) is copied onto the target, inside the target's
field of view, later donors over earlier ones. This is the augmentation Son et al.'s code used as a
baseline: it adds lesions with real texture in real arrangements, but no new anatomy and no new
lesion shapes. When a grade has fewer than ``donors + 1`` pairs, every other pair of the grade
donates; a grade with no pair at all is skipped in the cycle. The result is a studio dataset (same
side as ``--real``), resumable like every writer; each row records its target and donors.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fundus_studio import labels
from fundus_studio.dataset import DatasetWriter, Sample, StudioDataset
from fundus_studio.errors import DatasetError, StudioError
from fundus_studio.phantom import sample_seed

SOURCE = "copy-paste"
EXTRA_COLUMNS: tuple[str, ...] = ("target", "donors")  # ids of the pairs each sample was made from


@dataclass(frozen=True)
class CopyPasteConfig:
    real: Path  # studio dataset of real pairs with grades
    out: Path  # studio dataset to create or resume
    count: int = 300  # samples to make
    donors: int = 2  # pairs of the target's grade whose lesions are pasted onto it
    seed: int = 0  # sample i draws its target and donors from sample_seed(seed, i)

    def __post_init__(self) -> None:
        if self.count < 1 or self.donors < 1:
            raise ValueError(f"count and donors must be positive, got {self.count}, {self.donors}")


def paste_lesions(*, photo: np.ndarray, label: np.ndarray,
                  donors: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Copy each donor's lesion pixels onto a copy of ``(photo (S, S, 3), label (S, S))``.

    Only pixels inside the target's field of view change, so the FOV stays the target's. Donors are
    ``(photo, label)`` pairs of the same side; later ones paint over earlier ones.
    """
    photo, label = photo.copy(), label.copy()
    fov = label != labels.OUTSIDE
    for donor_photo, donor_label in donors:
        if donor_label.shape != label.shape or donor_photo.shape != photo.shape:
            raise DatasetError(f"donor of shape {donor_photo.shape} does not match target {photo.shape}")
        where = np.isin(donor_label, labels.LESIONS) & fov
        label[where] = donor_label[where]
        photo[where] = donor_photo[where]
    return photo, label


def _by_grade(ds: StudioDataset) -> dict[int, list[Sample]]:
    groups: dict[int, list[Sample]] = {g: [] for g in range(labels.NUM_GRADES)}
    for s in ds.samples:
        if s.grade is not None:
            groups[s.grade].append(s)
    return groups


def _plan(groups: dict[int, list[Sample]], *, index: int, grades: list[int], donors: int, seed: int
          ) -> tuple[int, Sample, list[Sample]]:
    """(grade, target, donors) of sample ``index``: a function of (seed, index) and the real set only."""
    grade = grades[index % len(grades)]
    pool = groups[grade]
    rng = np.random.default_rng(sample_seed(seed, index))
    order = rng.permutation(len(pool))
    return grade, pool[order[0]], [pool[j] for j in order[1:1 + donors]]


def make_dataset(cfg: CopyPasteConfig, *, progress: bool = True) -> Path:
    """Write (or resume) the copy-paste dataset ``cfg.out`` and return its folder."""
    from tqdm.auto import tqdm

    real = StudioDataset.open(cfg.real)
    groups = _by_grade(real)
    grades = [g for g in range(labels.NUM_GRADES) if groups[g]]
    if not grades:
        raise DatasetError(f"{real.root}: no graded pairs to copy lesions from")
    meta = {"generator": "training.copy_paste", "real": str(cfg.real), "count": cfg.count, "donors": cfg.donors,
            "seed": cfg.seed, "source": SOURCE}
    writer = DatasetWriter(cfg.out, size=real.size, created_by="training.copy_paste", extra_columns=EXTRA_COLUMNS,
                           meta=meta)
    if writer.info.get("meta", {}) | {"count": cfg.count} != meta:
        raise DatasetError(f"{cfg.out}: made by another copy-paste run ({writer.info.get('meta')}); "
                           "choose another --out")
    done = writer.done_ids
    for i in tqdm(range(cfg.count), disable=not progress, unit="pair", desc=f"copy-paste → {cfg.out}"):
        sample_id = f"copy-paste-{i:06d}"
        if sample_id in done:
            continue
        grade, target, chosen = _plan(groups, index=i, grades=grades, donors=cfg.donors, seed=cfg.seed)
        photo, label = paste_lesions(photo=real.image(target), label=real.label(target),
                                     donors=[(real.image(d), real.label(d)) for d in chosen])
        writer.add(sample_id=sample_id, image=photo, label=label, grade=grade, source=SOURCE,
                   seed=sample_seed(cfg.seed, i),
                   extra={"target": target.id, "donors": " ".join(d.id for d in chosen)})
    return writer.root


def parse_args(argv: list[str] | None = None) -> CopyPasteConfig:
    parser = argparse.ArgumentParser(prog="python -m training.copy_paste", description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", type=Path, required=True, help="studio dataset of real pairs with grades")
    parser.add_argument("--out", type=Path, required=True, help="dataset folder to create or resume")
    parser.add_argument("--count", type=int, default=300, help="samples to make (default 300)")
    parser.add_argument("--donors", type=int, default=2, help="same-grade pairs pasted onto each target (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="run seed")
    args = parser.parse_args(argv)
    try:
        return CopyPasteConfig(real=args.real, out=args.out, count=args.count, donors=args.donors, seed=args.seed)
    except ValueError as err:
        parser.error(str(err))
        raise


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    try:
        out = make_dataset(cfg)
    except StudioError as err:
        print(f"training.copy_paste: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote copy-paste dataset {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
