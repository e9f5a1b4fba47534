"""Sampling throughput: pairs per second of ``fundus-studio sample`` (label map + render + PNG writes)
and the process's peak memory, on this machine.

    python benchmarks/sample.py                                  # checkpoints/, 16 pairs at 512²
    python benchmarks/sample.py --checkpoints runs/ckpt --count 32 --threads 2
    python benchmarks/sample.py --no-overlap                     # PNG writes not overlapped with compute
    python benchmarks/sample.py --tune-malloc                    # glibc keeps freed blocks (docs/models.md)

Runs :func:`fundus_studio.generate.sample_dataset` into a temporary folder and reports the end-to-end
rate (checkpoint loading included) and the steady rate (loading subtracted, measured separately).
Peak memory is ``getrusage(RUSAGE_SELF).ru_maxrss`` (the resident high-water mark of the whole
process, torch included), quoted with the same figure just after importing torch.

When ``checkpoints/`` lacks ``acgan``/``spade`` (the demo models are not trained yet) and no
``--checkpoints`` was given, untrained models of the demo-cpu architectures are written to a
temporary folder: the speed is that of the demo models (same layers and sizes, same FLOPs), the
pictures are noise. Machines are shared: quote the conv reference and the load average too.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import conv_reference, setup_threads, tune_malloc  # noqa: E402
from fundus_studio import generate  # noqa: E402
from fundus_studio.studio import Studio  # noqa: E402

DEFAULT_CHECKPOINTS = Path("checkpoints")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoints", type=Path, default=None,
                   help=f"folder with acgan + spade (default {DEFAULT_CHECKPOINTS}, else untrained demo-cpu models)")
    p.add_argument("--count", type=int, default=16, help="pairs to sample")
    p.add_argument("--size", type=int, default=512, help="side in pixels")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: all cores)")
    p.add_argument("--no-overlap", action="store_true", help="write each pair before generating the next")
    p.add_argument("--tune-malloc", action="store_true", help="keep freed blocks ≤ 32 MiB in the heap (glibc)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def untrained_demo_checkpoints(folder: Path) -> Path:
    """acgan + spade (+ encoder) with the demo-cpu architectures and random weights."""
    from fundus_studio.checkpoint import save_model
    from fundus_studio.models.acgan import ACGANConfig, Generator
    from fundus_studio.models.spade import SPADE_PRESETS, SpadeGenerator, StyleEncoder
    from training.acgan import PRESETS

    torch.manual_seed(0)
    spade = SPADE_PRESETS["demo-cpu"]
    models = {"acgan": Generator(ACGANConfig(**PRESETS["demo-cpu"]["model"])),
              "spade": SpadeGenerator(spade.generator), "spade_encoder": StyleEncoder(spade.encoder)}
    for name, model in models.items():
        save_model(model.eval(), folder / name, data={"description": "untrained (benchmark)"}, step=0,
                   created_by="benchmarks/sample.py")
    return folder


def max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    args = parse_args()
    malloc_tuned = tune_malloc() if args.tune_malloc else False
    threads = setup_threads() if args.threads <= 0 else args.threads
    torch.set_num_threads(threads)
    if args.no_overlap:
        generate.WRITE_AHEAD = 1  # the writer thread then never runs beside the generation
    rss_import = max_rss_mib()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = args.checkpoints or DEFAULT_CHECKPOINTS
        note = f"checkpoints {checkpoints}"
        studio = Studio.from_checkpoints(checkpoints)
        if args.checkpoints is None and not all(studio.has(n) for n in generate.SAMPLING_MODELS):
            checkpoints = untrained_demo_checkpoints(Path(tmp) / "checkpoints")
            note = ("UNTRAINED demo-cpu architectures (no acgan/spade in checkpoints/): speed as the demo "
                    "models', pictures meaningless")
        ref_before, _ = conv_reference(runs=5)
        start = time.perf_counter()
        generate._load(checkpoints, generate.SAMPLING_MODELS)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        generate.sample_dataset(Path(tmp) / "out", count=args.count, grade=None, seed=args.seed, size=args.size,
                                checkpoints=checkpoints, progress=False)
        run_s = time.perf_counter() - start
        rss_peak = max_rss_mib()
        ref_after, _ = conv_reference(runs=5)
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {threads} threads (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}), "
          f"malloc tuned: {'yes' if malloc_tuned else 'no'}; {note}")
    print(f"conv reference: {ref_before:.0f} GFLOP/s before, {ref_after:.0f} after; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"{args.count} pairs at {args.size}², writes {'sequential' if args.no_overlap else 'overlapped'}: "
          f"{run_s:.1f} s → {args.count / run_s:.2f} pairs/s end to end; checkpoint loading {load_s:.2f} s; "
          f"steady {args.count / max(run_s - load_s, 1e-9):.2f} pairs/s "
          f"({1e3 * (run_s - load_s) / args.count:.0f} ms/pair)")
    print(f"peak RSS {rss_peak:.0f} MiB (after importing torch: {rss_import:.0f} MiB)")


if __name__ == "__main__":
    main()
