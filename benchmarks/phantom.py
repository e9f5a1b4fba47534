"""How long one phantom pair (label map + photo) takes, in one process.

    python benchmarks/phantom.py --count 20 --size 512

Prints the median and p90 seconds per pair over ``--count`` pairs (grades cycled 0..4) after a
warm-up, the label-map and photo medians separately, and (PERF.md) the reference convolution's
throughput measured in the same run. The machines are shared: compare figures measured in one run,
never assert them in a test.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fundus_studio.labels import NUM_GRADES
from fundus_studio.phantom import PhantomConfig, generate_label_map, render_photo, sample_seed

WARMUP: int = 2  # pairs generated before timing: first calls pay for imports and allocator growth


def bench(*, count: int, size: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seconds per label map, per photo and per pair, one entry per sample."""
    cfg = PhantomConfig()
    for i in range(WARMUP):
        label = generate_label_map(grade=i % NUM_GRADES, rng=np.random.default_rng(i), size=size, config=cfg)
        render_photo(label, seed=i, config=cfg)
    t_label, t_photo = [], []
    for i in range(count):
        s = sample_seed(seed, i)
        t0 = time.perf_counter()
        label = generate_label_map(grade=i % NUM_GRADES, rng=np.random.default_rng(s), size=size, config=cfg)
        t1 = time.perf_counter()
        render_photo(label, seed=s, config=cfg)
        t2 = time.perf_counter()
        t_label.append(t1 - t0)
        t_photo.append(t2 - t1)
    label_s, photo_s = np.asarray(t_label), np.asarray(t_photo)
    return {"label": label_s, "photo": photo_s, "pair": label_s + photo_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20, help="timed pairs (default 20)")
    parser.add_argument("--size", type=int, default=512, help="side in pixels (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference conv (and torch)")
    args = parser.parse_args()
    t = bench(count=args.count, size=args.size, seed=args.seed)
    print(f"phantom pairs at {args.size}², {args.count} after {WARMUP} warm-up, grades cycled 0..{NUM_GRADES - 1}")
    print(f"  pair : median {np.median(t['pair']):.3f} s   p90 {np.percentile(t['pair'], 90):.3f} s")
    print(f"  label: median {np.median(t['label']):.3f} s")
    print(f"  photo: median {np.median(t['photo']):.3f} s")
    if not args.no_reference:
        from common import conv_reference  # benchmarks/common.py; imports torch, so only here

        gflops, _ = conv_reference()
        print(f"  reference 3×3 conv 64→64 at 256²: {gflops:.0f} GFLOP/s (machine load indicator)")


if __name__ == "__main__":
    main()
