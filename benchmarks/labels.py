"""Label-map sampling speed of a checkpoints folder's generators at the studio's size.

    python benchmarks/labels.py [--checkpoints checkpoints] [--size 512] [--batch 16] [--runs 5]
    python benchmarks/labels.py --compare-workers [--runs 10]

For each generator present (the flow prior with its upsampler, the ACGAN): maps per second when
sampled in batches (``fundus-studio sample``, the Gallery, exports) and the latency of one map (the
Paint canvas's "start from a sample"). Targets (issue 11): ≥ 5 maps/s in batches, ≤ 0.5 s for one.
Prints medians and the reference convolution's throughput measured in the same run (PERF.md).

``--compare-workers`` times the flow sampler's batches with ``LabelSamplingConfig.workers`` at its
default (a worker per torch thread) and at 1 (batches one after another on every thread), alternating
batch by batch so that both see the same machine (its speed drifts by a third between minutes here),
and prints both medians and the median of the paired ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import conv_reference, setup_threads, time_call  # noqa: E402

from fundus_studio import labels  # noqa: E402
from fundus_studio.pipeline import LabelSampler  # noqa: E402
from fundus_studio.studio import GENERATORS, Studio  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="checkpoints folder")
    parser.add_argument("--size", type=int, default=512, help="side of the sampled maps (default 512)")
    parser.add_argument("--batch", type=int, default=16, help="maps per batch (default 16)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs after warm-up (default 5)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: every core)")
    parser.add_argument("--compare-workers", action="store_true",
                        help="A/B the default generator's batches with parallel workers and one after another")
    return parser.parse_args()


def compare_workers(sampler: LabelSampler, *, grades: list[int], size: int, runs: int) -> None:
    """Alternate parallel and serial batches ``runs`` times each (after one warm-up of each)."""
    configs = {"parallel": sampler.config, "serial": dataclasses.replace(sampler.config, workers=1)}
    times: dict[str, list[float]] = {name: [] for name in configs}
    for i in range(runs + 1):
        for name in (("parallel", "serial") if i % 2 else ("serial", "parallel")):  # neither always goes first
            sampler.config = configs[name]
            start = time.perf_counter()
            sampler.sample_grades(grades, seed=0, size=size)
            if i:  # the first round warms up
                times[name].append(time.perf_counter() - start)
    ratios = [s / p for p, s in zip(times["parallel"], times["serial"])]
    sampler.config = configs["parallel"]
    parallel = sampler.workers(batches=math.ceil(len(grades) / sampler.config.batch_size))
    for name in configs:
        workers = parallel if name == "parallel" else 1
        print(f"{name} ({workers} worker{'s' * (workers > 1)}): {len(grades) / statistics.median(times[name]):.2f} "
              f"maps/s (median {statistics.median(times[name]):.2f} s a batch of {len(grades)}, {runs} runs)")
    print(f"serial / parallel time, median of {runs} paired runs: {statistics.median(ratios):.3f} "
          f"(range {min(ratios):.3f}–{max(ratios):.3f})")


def main() -> int:
    args = parse_args()
    threads = args.threads or setup_threads()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    studio = Studio.from_checkpoints(args.checkpoints)
    print(f"{threads} threads; reference conv {conv_reference(runs=3)[0]:.0f} GFLOP/s")
    grades = [g % labels.NUM_GRADES for g in range(args.batch)]
    if args.compare_workers:
        compare_workers(studio.sampler(), grades=grades, size=args.size, runs=args.runs)
        return 0
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
