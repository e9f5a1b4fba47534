"""The ``fundus-studio`` command line.

Each sub-command parses its arguments here and calls one function of the package; heavy modules
(torch, the models) are imported only by the sub-commands that need them, so ``--help`` is quick.
Every :class:`~fundus_studio.errors.StudioError` ends the program with a one-line message and exit
code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from fundus_studio.errors import StudioError
from fundus_studio.studio import DEFAULT_GENERATOR, GENERATORS

Handler = Callable[[argparse.Namespace], int]


def _grade_arg(value: str) -> int | None:
    """``0``–``4`` or ``all`` (→ None: every grade in turn)."""
    from fundus_studio.labels import NUM_GRADES

    if value == "all":
        return None
    try:
        grade = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"grade must be 0..{NUM_GRADES - 1} or 'all', got {value!r}") from None
    if not 0 <= grade < NUM_GRADES:
        raise argparse.ArgumentTypeError(f"grade must be 0..{NUM_GRADES - 1} or 'all', got {value!r}")
    return grade


def _size_arg(value: str) -> int:
    try:
        size = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be an integer, got {value!r}") from None
    if size < 64 or size % 16:
        raise argparse.ArgumentTypeError(f"size must be a multiple of 16 and at least 64, got {size}")
    return size


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


# --- sub-commands -------------------------------------------------------------------------------


def _cmd_phantom(args: argparse.Namespace) -> int:
    from fundus_studio.phantom import write_phantoms

    out = write_phantoms(args.out, count=args.count, grade=args.grade, size=args.size, seed=args.seed)
    print(f"wrote phantom dataset {out}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from fundus_studio.prepare import prepare_dataset

    out = prepare_dataset(args.kind, args.src, args.out, size=args.size, split=args.split)
    print(f"wrote prepared dataset {out}")
    return 0


DEFAULT_UNET = Path("checkpoints/unet.safetensors")


def _label_map_with_lesions(photo_path: Path, out: Path, *, size: int, checkpoint: Path) -> Path:
    """Photo → label map with lesions from the U-Net at ``checkpoint``; written as a palette PNG."""
    from fundus_studio.errors import InputError
    from fundus_studio.imageio import read_image, save_label_png
    from fundus_studio.pipeline import Segmenter, extract_with_lesions

    segmenter = Segmenter.from_checkpoint(checkpoint)
    photo = read_image(photo_path)
    try:
        label_map = extract_with_lesions(photo, size=size, segmenter=segmenter)
    except InputError as err:
        raise InputError(f"{photo_path}: {err}") from None
    return save_label_png(out, label_map)


def _cmd_segment(args: argparse.Namespace) -> int:
    out = _label_map_with_lesions(args.photo, args.out, size=args.size, checkpoint=args.checkpoint)
    print(f"wrote label map {out}")
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from fundus_studio.checkpoint import paths_for
    from fundus_studio.extract import extract_file

    checkpoint = args.checkpoints / DEFAULT_UNET.name
    if not args.no_lesions and any(p.exists() for p in paths_for(checkpoint)):
        out = _label_map_with_lesions(args.photo, args.out, size=args.size, checkpoint=checkpoint)
        print(f"wrote label map {out} (lesions from {checkpoint})")
        return 0
    out = extract_file(args.photo, args.out, size=args.size)
    note = "" if args.no_lesions else f" (no lesions: no U-Net checkpoint at {checkpoint})"
    print(f"wrote label map {out}{note}")
    return 0


def _shard_arg(value: str) -> tuple[int, int]:
    from fundus_studio.generate import parse_shard

    try:
        return parse_shard(value)
    except StudioError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _cmd_sample(args: argparse.Namespace) -> int:
    from fundus_studio.generate import sample_dataset
    from fundus_studio.runtime import tune_malloc

    tune_malloc()  # about 15 % more pairs per second at 512 (benchmarks/sample.py)
    out = sample_dataset(args.out, count=args.count, grade=args.grade, seed=args.seed, size=args.size,
                         shard=args.shard, checkpoints=args.checkpoints, generator=args.generator)
    print(f"wrote sampled dataset {out}")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from fundus_studio.generate import merge_datasets

    out = merge_datasets(args.sources, out=args.out)
    print(f"wrote merged dataset {out}")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from fundus_studio.generate import render_file

    out = render_file(args.label, args.out, seed=args.seed, style=args.style, checkpoints=args.checkpoints,
                      nearest=args.nearest)
    print(f"wrote render {out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from fundus_studio.formats import export_dataset

    out = export_dataset(args.dataset, args.out, format=args.format, classes=args.classes, dataset_id=args.dataset_id,
                         name=args.name, test_fraction=args.test_fraction)
    print(f"wrote {args.format} export {out}")
    return 0


def _fraction_arg(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value!r}") from None
    if not 0.0 <= f < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {value!r}")
    return f


def _add_export(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("export", help="write a studio dataset as an nnU-Net v2 raw dataset or in IDRiD's layout")
    p.add_argument("dataset", type=Path, help="studio dataset folder (sampled, prepared, merged or from the app)")
    p.add_argument("--format", choices=["nnunet", "idrid"], required=True, help="layout to write")
    p.add_argument("--out", type=Path, required=True,
                   help="nnunet: folder that receives DatasetNNN_Name/ (e.g. nnUNet_raw); idrid: the IDRiD root")
    p.add_argument("--classes", nargs="+", default=None, metavar="CLASS",
                   help="nnunet: classes labelled 1, 2, … in this order; the rest become background "
                        "(default: every class but outside and retina)")
    p.add_argument("--dataset-id", type=int, default=500, help="nnunet: the NNN of DatasetNNN_Name (default 500)")
    p.add_argument("--name", default="FundusStudio", help="nnunet: the Name of DatasetNNN_Name (default FundusStudio)")
    p.add_argument("--test-fraction", type=_fraction_arg, default=0.0,
                   help="share held out by id hash: nnunet imagesTs/labelsTs, idrid Testing Set (default 0)")
    p.set_defaults(func=_cmd_export)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from training.report import ReportConfig, run

    try:
        cfg = ReportConfig(
            checkpoints=args.checkpoints, data=args.data, out=args.out, stages=tuple(args.stages.split(",")),
            seed=args.seed, per_grade=args.per_grade, render_count=args.render_count, segmenter=args.segmenter,
            real_train=args.real_train, test_count=args.test_count, pool=args.pool, synthetic_size=args.synthetic_size,
            donors=args.donors, classes=tuple(args.classes), fractions=args.fractions, seeds=args.seeds,
            unet_preset=args.unet_preset, unet_steps=args.unet_steps, threads=args.threads, generator=args.generator,
            sources=tuple(args.sources.split(",")), paper_fractions=args.paper_fractions,
            paper_real=args.paper_real, val_fraction=args.val_fraction, jobs=args.jobs)
    except ValueError as err:
        args.parser.error(str(err))
    path = run(cfg, command=shlex.join(["fundus-studio", *args.argv]))
    print(path.read_text())
    print(f"wrote report {path}")
    return 0


def _fractions_arg(value: str) -> tuple[float, ...]:
    try:
        return tuple(sorted({float(f) for f in value.split(",") if f.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


def _add_evaluate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("evaluate", help="quality report: label maps, renders, downstream segmentation (REPORT.md)")
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="folder of model checkpoints")
    p.add_argument("--data", type=Path, required=True, help="held-out real studio dataset (no model trained on it)")
    p.add_argument("--out", type=Path, required=True, help="report folder (re-running resumes it)")
    p.add_argument("--stages", default="labels,renders,downstream",
                   help="comma-separated stages to run (default labels,renders,downstream)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling, pair choice, split and pools")
    p.add_argument("--per-grade", type=_positive, default=100, help="labels: generated maps per grade (default 100)")
    p.add_argument("--render-count", type=_positive, default=100, help="renders: held-out pairs (default 100)")
    p.add_argument("--segmenter", type=Path, default=None,
                   help="renders: U-Net trained on real photos (default CHECKPOINTS/unet.safetensors)")
    p.add_argument("--real-train", type=_positive, default=50, help="downstream: real training pairs (default 50)")
    p.add_argument("--test-count", type=int, default=100,
                   help="downstream: cap on test pairs (default 100; 0: the rest)")
    p.add_argument("--pool", type=_positive, default=200, help="downstream: pairs per synthetic pool (default 200)")
    p.add_argument("--generator", default=None,
                   help="downstream: label-map generator of the generated pool (default: the folder's default)")
    p.add_argument("--sources", default="generated,copy-paste,combined,real-maps,more-real",
                   help="downstream: synthetic sources (default generated,copy-paste,combined,real-maps,more-real; "
                        "the last two are controls made of --data pairs that are neither training nor test pairs)")
    p.add_argument("--paper-fractions", type=_fractions_arg, default=(0.25,),
                   help="downstream: the paper's rows also run with its synthetic counts (default 0.25; '' for none)")
    p.add_argument("--paper-real", type=_positive, default=54,
                   help="downstream: real set the paper's counts are read against (default 54, IDRiD's)")
    p.add_argument("--val-fraction", type=float, default=0.2,
                   help="downstream: real pairs each run holds out to choose its thresholds (default 0.2)")
    p.add_argument("--jobs", type=_positive, default=2, help="downstream: U-Nets trained at once (default 2)")
    p.add_argument("--synthetic-size", type=_size_arg, default=None,
                   help="downstream: side of sampled pairs (default: the renderer's training side)")
    p.add_argument("--donors", type=_positive, default=2, help="downstream: copy-paste donors per sample (default 2)")
    p.add_argument("--classes", nargs="+", default=["hard_exudate", "haemorrhage"],
                   help="downstream: classes one U-Net segments (default hard_exudate haemorrhage)")
    p.add_argument("--fractions", type=_fractions_arg, default=(0.0, 0.25, 0.5, 0.75),
                   help="downstream: synthetic shares (default 0,0.25,0.5,0.75)")
    p.add_argument("--seeds", type=_positive, default=5, help="downstream: seeds per share (default 5)")
    p.add_argument("--unet-preset", default="small-cpu", help="downstream: training.unet preset (default small-cpu)")
    p.add_argument("--unet-steps", type=_positive, default=None, help="downstream: steps per run (default: preset's)")
    p.add_argument("--threads", type=_positive, default=None, help="torch CPU threads")
    p.set_defaults(func=_cmd_evaluate, parser=p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fundus-studio",
        description="Synthesise retinal fundus photographs with their label maps, conditioned on DR grade.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("phantom", help="generate procedural phantom pairs (label map + photo + grade)")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to create or resume")
    p.add_argument("--count", type=_positive, required=True, help="number of samples in the dataset")
    p.add_argument("--grade", type=_grade_arg, default=None, help="DR grade 0-4, or 'all' (cycled; default)")
    p.add_argument("--size", type=_size_arg, default=512, help="side in pixels (default 512)")
    p.add_argument("--seed", type=int, default=0, help="run seed; sample i's seed derives from (seed, i)")
    p.set_defaults(func=_cmd_phantom)

    p = sub.add_parser("prepare", help="convert IDRiD or FGADR as shipped into a studio dataset")
    p.add_argument("kind", choices=["idrid", "fgadr"], help="which dataset SRC holds")
    p.add_argument("src", type=Path, help="the dataset's folder as downloaded")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to create or resume")
    p.add_argument("--size", type=_size_arg, default=512, help="side in pixels (default 512)")
    p.add_argument("--split", choices=["train", "test", "all"], default="all", help="which split (default all)")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("extract", help="photo → label map (field of view, optic disc, vessels; lesions with a U-Net)")
    p.add_argument("photo", type=Path, help="fundus photograph")
    p.add_argument("--out", type=Path, required=True, help="label map to write (palette PNG)")
    p.add_argument("--size", type=_size_arg, default=512, help="side in pixels (default 512)")
    p.add_argument("--checkpoints", type=Path, default=DEFAULT_UNET.parent,
                   help=f"folder whose {DEFAULT_UNET.name}, when present, adds lesions (default {DEFAULT_UNET.parent})")
    p.add_argument("--no-lesions", action="store_true", help="classical classes only, even with a U-Net checkpoint")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("segment", help="photo → label map with lesions from the U-Net (plus FOV, disc, vessels)")
    p.add_argument("photo", type=Path, help="fundus photograph")
    p.add_argument("--out", type=Path, required=True, help="label map to write (palette PNG)")
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_UNET, help=f"U-Net checkpoint (default {DEFAULT_UNET})")
    p.add_argument("--size", type=_size_arg, default=512, help="side in pixels (default 512)")
    p.set_defaults(func=_cmd_segment)
    p = sub.add_parser("sample", help="generate label maps (flow prior or ACGAN) and their renders (SPADE) as a "
                                      "studio dataset")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to create or resume")
    p.add_argument("--count", type=_positive, required=True, help="samples in the whole run (all shards)")
    p.add_argument("--grade", type=_grade_arg, default=None, help="DR grade 0-4, or 'all' (cycled; default)")
    p.add_argument("--seed", type=int, default=0, help="run seed; sample i's seed derives from (seed, i)")
    p.add_argument("--size", type=_size_arg, default=512, help="side in pixels (default 512)")
    p.add_argument("--shard", type=_shard_arg, default=(0, 1), metavar="I/N",
                   help="make only the samples i ≡ I (mod N) of this run (default 0/1: all)")
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="folder of model checkpoints")
    p.add_argument("--generator", choices=sorted(GENERATORS), default=None,
                   help=f"label-map generator (default {DEFAULT_GENERATOR} when its checkpoint is present, else acgan)")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser("merge", help="join studio datasets (e.g. the shards of one sampling run)")
    p.add_argument("sources", type=Path, nargs="+", help="dataset folders to join")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to create or resume")
    p.set_defaults(func=_cmd_merge)

    p = sub.add_parser("render", help="render one label map (palette PNG or taxonomy-colour image) as a photo")
    p.add_argument("label", type=Path, help="label map file")
    p.add_argument("--out", type=Path, required=True, help="photo to write (.png, .jpg)")
    p.add_argument("--seed", type=int, default=0, help="render seed (default 0)")
    p.add_argument("--style", type=Path, default=None, help="reference photo whose style to render in")
    p.add_argument("--nearest", action="store_true", help="snap colours outside the palette to the nearest class")
    p.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="folder of model checkpoints")
    p.set_defaults(func=_cmd_render)

    _add_export(sub)
    _add_evaluate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else sys.argv[1:]  # recorded by commands that write reports
    handler: Handler = args.func
    try:
        return handler(args)
    except StudioError as err:
        print(f"fundus-studio {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fundus-studio {args.command}: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

