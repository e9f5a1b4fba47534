"""Render and segmentation speed on this machine: SPADE generator and U-Net, batch 1.

    python benchmarks/render.py                       # demo-cpu generator at 256² and 512², demo-cpu U-Net at 512²
    python benchmarks/render.py --preset paper-512 --runs 3 --sizes 256

Reports parameters, GFLOP per call (conv/linear MACs counted with forward hooks, GFLOP = 2 × MACs),
median and p90 latency under ``torch.inference_mode`` with channels-last tensors and spectral norm
folded, and the fraction of this machine's conv throughput the model reaches (its GFLOP/s divided
by that of a plain 3×3 conv 64→64 at 256², channels-last, measured in the same run). Machines are
shared: quote the reference throughput and the load average with the times.

OpenMP threads that spin while waiting make a 2-thread run up to 10× slower when another process
holds one of the two cores; this script therefore sets ``OMP_WAIT_POLICY=PASSIVE`` unless the
environment already sets a policy (it must be set before torch loads; override it from the shell).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import (  # noqa: E402
    Timing,
    conv_reference,
    count_macs,
    markdown_table,
    num_params,
    setup_threads,
    time_call,
    tune_malloc,
)
from fundus_studio.labels import NUM_CLASSES  # noqa: E402
from fundus_studio.models.spade import SPADE_PRESETS, SpadeGenerator, fold_spectral_norm  # noqa: E402
from fundus_studio.models.unet import UNET_PRESETS, UNet  # noqa: E402

CHANNELS_LAST = torch.channels_last


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo-cpu", choices=sorted(SPADE_PRESETS), help="SPADE preset")
    p.add_argument("--unet-preset", default="demo-cpu", choices=sorted(UNET_PRESETS), help="U-Net preset")
    p.add_argument("--sizes", default="256,512", help="render sizes, comma-separated")
    p.add_argument("--unet-size", type=int, default=512, help="U-Net input size")
    p.add_argument("--runs", type=int, default=10, help="timed runs per measurement (after warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    p.add_argument("--no-unet", action="store_true", help="skip the U-Net section")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: all cores, os.cpu_count())")
    p.add_argument("--tune-malloc", action="store_true", help="keep freed blocks ≤ 32 MiB in the heap (glibc)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def random_label(size: int, *, seed: int) -> torch.Tensor:
    """A one-hot ``(1, NUM_CLASSES, size, size)`` map of random 8×8 blobs, channels-last."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, NUM_CLASSES, (1, size // 8, size // 8), generator=g)
    idx = idx.repeat_interleave(8, 1).repeat_interleave(8, 2)
    return F.one_hot(idx, NUM_CLASSES).permute(0, 3, 1, 2).float().contiguous(memory_format=CHANNELS_LAST)


@dataclass(frozen=True)
class Result:
    """One measured model at one size."""

    name: str
    size: int
    params: int
    gflop: float
    timing: Timing

    def row(self, ref_gflops: float) -> list[str]:
        achieved = self.gflop / self.timing.median
        t = self.timing
        return [
            self.name, f"{self.size}²", f"{self.params / 1e6:.2f} M", f"{self.gflop:.1f}", f"{t.median * 1e3:.0f}",
            f"{t.p90 * 1e3:.0f}", f"{t.best * 1e3:.0f}", f"{achieved:.0f}", f"{100 * achieved / ref_gflops:.0f} %",
        ]


def main() -> None:
    args = parse_args()
    malloc_tuned = tune_malloc() if args.tune_malloc else False
    threads = setup_threads() if args.threads <= 0 else args.threads
    torch.set_num_threads(threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    ref_before, _ = conv_reference(runs=args.runs)
    header = ["model", "size", "params", "GFLOP", "median ms", "p90 ms", "best ms", "GFLOP/s", "of conv ref"]
    results: list[Result] = []

    torch.manual_seed(args.seed)
    cfg = SPADE_PRESETS[args.preset].generator
    gen = fold_spectral_norm(SpadeGenerator(cfg).eval()).to(memory_format=CHANNELS_LAST)
    params = num_params(gen)
    for size in sizes:
        label = random_label(size, seed=args.seed)
        z = torch.randn(1, cfg.z_dim, generator=torch.Generator().manual_seed(args.seed)) if cfg.z_dim else None
        gflop = 2 * count_macs(gen, label, z) / 1e9
        with torch.inference_mode():
            timing = time_call(lambda: gen(label, z), runs=args.runs, warmup=args.warmup)
        results.append(Result(f"SPADE G {args.preset}", size, params, gflop, timing))

    if not args.no_unet:
        unet = UNet(UNET_PRESETS[args.unet_preset]).eval().to(memory_format=CHANNELS_LAST)
        x = torch.randn(1, 3, args.unet_size, args.unet_size).contiguous(memory_format=CHANNELS_LAST)
        gflop = 2 * count_macs(unet, x) / 1e9
        with torch.inference_mode():
            timing = time_call(lambda: unet(x), runs=args.runs, warmup=args.warmup)
        results.append(Result(f"U-Net {args.unet_preset}", args.unet_size, num_params(unet), gflop, timing))

    # The reference is measured before and after the models; the fractions use the mean of the two.
    ref_after, _ = conv_reference(runs=args.runs)
    ref_gflops = (ref_before + ref_after) / 2
    load = os.getloadavg()
    print(f"torch {torch.__version__}, {threads} threads (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}), "
          f"batch 1, inference_mode + channels-last, spectral norm folded, {args.runs} timed runs after "
          f"{args.warmup} warm-up, malloc tuned: {'yes' if malloc_tuned else 'no'}")
    print(f"conv reference (3×3 64→64 at 256², channels-last): {ref_before:.0f} GFLOP/s before, "
          f"{ref_after:.0f} after; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print()
    print(markdown_table(header, [r.row(ref_gflops) for r in results]))


if __name__ == "__main__":
    main()
