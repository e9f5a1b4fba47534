"""Label-map sampling speed of a checkpoints folder's generators at the studio's size.

    python benchmarks/labels.py [--checkpoints checkpoints] [--size 512] [--batch 16] [--runs 5]

For each generator present (the flow prior with its upsampler, the ACGAN): maps per second when
sampled in batches (``fundus-studio sample``, the Gallery, exports) and the latency of one map (the
Paint canvas's "start from a sample"). Targets (issue 11): ≥ 5 maps/s in batches, ≤ 0.5 s for one.
Prints medians and the reference convolution's throughput measured in the same run (PERF.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import conv_reference, setup_threads, time_call  # noqa: E402

from fundus_studio import labels  # noqa: E402
from fundus_studio.studio import GENERATORS, Studio  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="checkpoints folder")
    parser.add_argument("--size", type=int, default=512, help="side of the sampled maps (default 512)")
    parser.add_argument("--batch", type=int, default=16, help="maps per batch (default 16)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs after warm-up (default 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: every core)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    threads = args.threads or setup_threads()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    studio = Studio.from_checkpoints(args.checkpoints)
    print(f"{threads} threads; reference conv {conv_reference(runs=3)[0]:.0f} GFLOP/s")
    grades = [g % labels.NUM_GRADES for g in range(args.batch)]
    for name, ckpt in GENERATORS.items():
        if not studio.has(ckpt):
            print(f"{name}: no {ckpt} checkpoint in {args.checkpoints}")
            continue
        sampler = studio.sampler(name)
        batch = time_call(lambda: sampler.sample_grades(grades, seed=0, size=args.size), runs=args.runs, warmup=1)
        single = time_call(lambda: sampler.sample_grades([0], seed=1, size=args.size), runs=args.runs, warmup=1)
        used = "+".join(studio.sampling_checkpoints(name))
        print(f"{name} ({used}) at {args.size}²: {args.batch / batch.median:.2f} maps/s in batches of {args.batch} "
              f"(median {batch.median:.2f} s a batch); one map {single.median:.3f} s (p90 {single.p90:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
