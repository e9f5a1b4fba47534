"""ACGAN costs on this machine: label maps/s for the demo-cpu generator (sampled to 256², batch 16)
and seconds per training step (1 D + g_steps G updates) for the smoke and demo-cpu presets.

    python benchmarks/acgan.py [--repeats 5] [--threads 2]

Prints medians after a warm-up, and the conv throughput measured in the same run (PERF.md).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fundus_studio import labels
from fundus_studio.dataset import DatasetWriter
from fundus_studio.models.acgan import ACGANConfig, Generator
from fundus_studio.pipeline import LabelSampler, LabelSamplingConfig
from training import acgan, harness

CONV_SIDE, CONV_CH = 256, 64  # the PERF.md reference convolution
SAMPLE_SIZE, SAMPLE_BATCH = 256, 16
DATA_COUNT, DATA_SIZE = 32, 128


def median_time(fn, *, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def conv_gflops(*, repeats: int) -> float:
    conv = torch.nn.Conv2d(CONV_CH, CONV_CH, 3, padding=1)
    x = torch.randn(1, CONV_CH, CONV_SIDE, CONV_SIDE)
    with torch.no_grad():
        t = median_time(lambda: conv(x), repeats=repeats)
    return 2 * 9 * CONV_CH**2 * CONV_SIDE**2 / t / 1e9


def blob_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    writer = DatasetWriter(root, size=DATA_SIZE, created_by="benchmark")
    for i in range(DATA_COUNT):
        m = rng.integers(0, labels.NUM_CLASSES, (DATA_SIZE, DATA_SIZE)).astype(np.uint8)
        writer.add(sample_id=f"b{i}", image=np.zeros((DATA_SIZE, DATA_SIZE, 3), np.uint8), label=m,
                   grade=i % labels.NUM_GRADES, source="benchmark")
    return root


def step_time(preset: str, data: Path, *, repeats: int) -> float:
    """Median seconds per step: train `repeats`+1 steps per measured block and time them via the metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = acgan.parse_args(["--data", str(data), "--out", f"{tmp}/run", "--preset", preset, "--device", "cpu",
                                "--steps", str(repeats + 2), "--set", "log_every=1", "--set", "sample_every=100000",
                                "--set", "snapshot_every=100000"])
        acgan.train(cfg)
        import csv
        with open(f"{tmp}/run/metrics.csv") as fh:
            secs = [float(r["sec_per_step"]) for r in csv.DictReader(fh)][2:]  # skip warm-up steps
    return statistics.median(secs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"conv 3x3 {CONV_CH}->{CONV_CH} at {CONV_SIDE}²: {conv_gflops(repeats=args.repeats):.0f} GFLOP/s")

    demo = harness.merge({}, acgan.PRESETS["demo-cpu"]["model"])
    g = Generator(ACGANConfig(**demo))
    sampler = LabelSampler(g, config=LabelSamplingConfig(size=SAMPLE_SIZE, batch_size=SAMPLE_BATCH))
    n_g = sum(p.numel() for p in g.parameters())
    t = median_time(lambda: sampler.sample(grade=2, count=SAMPLE_BATCH, seed=0), repeats=args.repeats)
    print(f"demo-cpu generator ({n_g / 1e6:.2f} M params, {g.config.resolution}² → {SAMPLE_SIZE}²): "
          f"{SAMPLE_BATCH / t:.1f} maps/s at batch {SAMPLE_BATCH} ({t:.3f} s per batch)")

    with tempfile.TemporaryDirectory() as tmp:
        data = blob_dataset(Path(tmp) / "data")
        for preset in ("smoke", "demo-cpu"):
            print(f"{preset}: {step_time(preset, data, repeats=args.repeats):.3f} s per training step "
                  f"(batch {acgan.PRESETS[preset]['batch']}, 1 D + 2 G updates)")


if __name__ == "__main__":
    main()
