"""The allocator trade-off of the studio: resident memory against the CPU cost of a render.

For each glibc setting (``FUNDUS_STUDIO_MALLOC``, see ``fundus_studio/runtime.py``) a fresh process
renders ``--rounds`` rounds of ``--renders`` label maps, two at a time on a pool of ``--threads``
worker threads as Gradio runs its handlers, and reports its RSS after each round and the CPU seconds
(user + system: page faults included, and far less disturbed than wall time by other jobs on a
shared machine) per render.

    python benchmarks/malloc.py [--size 512] [--rounds 4] [--renders 12] [--threads 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = ["off", "trim=1024,arenas=0", "trim=1024,arenas=2", "trim=256,arenas=2", "trim=64,arenas=2"]
CONCURRENT = 2  # renders at once, as the app's queue allows


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def child(args: argparse.Namespace) -> None:
    """One setting, in this process: RSS per round and CPU seconds per render, as JSON on stdout."""
    from fundus_studio.runtime import tune_malloc

    tuned = tune_malloc()  # before any thread starts, as app.main does
    import numpy as np
    import torch

    from fundus_studio.phantom import generate_label_map
    from fundus_studio.studio import Studio

    torch.set_num_threads(1)
    studio = Studio.from_checkpoints(args.checkpoints)
    maps = [generate_label_map(grade=g % 5, rng=np.random.default_rng(g), size=args.size) for g in range(args.renders)]
    studio.render(maps[0], seed=0)  # loads the model
    gate = threading.Semaphore(CONCURRENT)

    def render(i: int) -> None:
        with gate:
            studio.render(maps[i], seed=i)

    rss, start = [], _cpu_s()
    with ThreadPoolExecutor(args.threads) as pool:
        for _ in range(args.rounds):
            list(pool.map(render, range(args.renders)))
            rss.append(round(_rss_mib(), 1))
    cpu = (_cpu_s() - start) / (args.rounds * args.renders)
    print(json.dumps({"setting": os.environ.get("FUNDUS_STUDIO_MALLOC", ""), "tuned": tuned, "rss_mib": rss,
                      "cpu_s_per_render": round(cpu, 3)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--renders", type=int, default=12, help="renders per round")
    p.add_argument("--threads", type=int, default=8, help="worker threads the renders rotate over")
    p.add_argument("--settings", nargs="+", default=SETTINGS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    print(f"| FUNDUS_STUDIO_MALLOC | RSS after each round of {args.renders} renders (MiB) | CPU s per render |")
    print("|---|---|---|")
    for setting in args.settings:
        cmd = [sys.executable, __file__, "--child", "--checkpoints", str(args.checkpoints), "--size", str(args.size),
               "--rounds", str(args.rounds), "--renders", str(args.renders), "--threads", str(args.threads)]
        out = subprocess.run(cmd, env={**os.environ, "FUNDUS_STUDIO_MALLOC": setting}, check=True,
                             capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(f"| `{setting}` | {' → '.join(f'{x:.0f}' for x in r['rss_mib'])} | {r['cpu_s_per_render']:.2f} |",
              flush=True)


if __name__ == "__main__":
    main()
