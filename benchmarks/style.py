"""Cost of a style photo (fundus_studio.style) on this machine, at 256² and 512².

    python benchmarks/style.py [--runs 20] [--sizes 256,512]

The photo is ``skimage.data.retina()`` and the render its own extracted map drawn flat (the network
is not timed: ``benchmarks/render.py`` does that). Reports the median and p90 wall time and the best
CPU time of ``apply_style`` (what every render with a cached style photo adds) and the one-off
statistics of a new photo (preprocessing, extraction, field, grain), beside this machine's conv
throughput measured in the same run. Machines are shared: quote the load average with the times.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import conv_reference, markdown_table, time_call  # noqa: E402
from fundus_studio import labels, style  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="256,512", help="render sides, comma-separated")
    p.add_argument("--runs", type=int, default=20, help="timed runs of apply_style (after warm-up)")
    return p.parse_args()


def best_cpu(fn, *, runs: int) -> float:  # type: ignore[no-untyped-def]
    """The smallest process CPU time of ``runs`` calls (all threads; what the call costs when alone)."""
    times = []
    for _ in range(runs):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main() -> int:
    from skimage import data

    from fundus_studio.extract import label_map_from_preprocessed
    from fundus_studio.preprocess import preprocess

    args = parse_args()
    photo = data.retina()
    rows = []
    for side in (int(s) for s in args.sizes.split(",")):
        start = time.perf_counter()
        stats = style.style_statistics(photo, side=side)
        once = time.perf_counter() - start
        pre = preprocess(photo, size=side)
        label_map = label_map_from_preprocessed(pre.photo, pre.fov)
        palette = {labels.RETINA: (200, 120, 110), labels.OPTIC_DISC: (235, 215, 190), labels.VESSEL: (170, 80, 80)}
        render = np.zeros((side, side, 3), np.uint8)
        for k, c in palette.items():
            render[label_map == k] = c
        timing = time_call(lambda: style.apply_style(render, label_map, stats), runs=args.runs, warmup=2)
        cpu = best_cpu(lambda: style.apply_style(render, label_map, stats), runs=min(args.runs, 5))
        rows.append([f"{side}²", f"{1000 * timing.median:.0f}", f"{1000 * timing.p90:.0f}", f"{1000 * cpu:.0f}",
                     f"{once:.1f}"])
    gflops, _ = conv_reference()
    print(markdown_table(["side", "apply_style median ms", "p90 ms", "best CPU ms", "new photo's statistics s"], rows))
    print(f"\nreference conv: {gflops:.1f} GFLOP/s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
