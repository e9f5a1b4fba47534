"""Shared helpers for the benchmark scripts: timing, FLOP counting and a conv-throughput reference.

Our machines are shared and noisy (PERF.md: ±30 % between runs), so every script reports medians
and the throughput of a plain reference convolution measured in the same run; compare ratios.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fundus_studio.runtime import tune_malloc  # noqa: F401 - re-exported for the benchmark scripts

# The reference workload of PERF.md: a 3×3 convolution 64 → 64 channels on a 256² image, batch 1.
REFERENCE_CHANNELS = 64
REFERENCE_SIZE = 256
REFERENCE_KERNEL = 3


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated calls after warm-up."""

    median: float
    p90: float
    best: float
    runs: int


def setup_threads() -> int:
    """Use every core for intra-op parallelism (PyTorch may default to fewer); returns the count."""
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def time_call(fn: Callable[[], object], *, runs: int = 10, warmup: int = 2) -> Timing:
    """Median, 90th percentile and best of ``runs`` timed calls of ``fn`` after ``warmup`` calls."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    times.sort()
    p90 = times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))]
    return Timing(median=statistics.median(times), p90=p90, best=times[0], runs=runs)


def count_macs(model: nn.Module, *inputs: torch.Tensor, **kwargs: object) -> int:
    """Multiply-accumulates of the conv, transposed-conv and linear layers in one forward pass.

    Counted with forward hooks on the actual tensors, so it follows whatever path the forward takes.
    Normalisation, activations, resampling and element-wise modulation are not counted (they are
    memory-bound and small in MACs). One MAC is two FLOPs.
    """
    total = 0

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += args[0].numel() * (module.out_channels // module.groups) * k
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += out.numel() * (module.in_channels // module.groups) * k
        elif isinstance(module, nn.Linear):
            total += out.numel() * module.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))
    ]
    try:
        with torch.inference_mode():
            model(*inputs, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return total


def num_params(model: nn.Module) -> int:
    """Number of parameters (spectral-norm parametrizations count their original weight once)."""
    return sum(p.numel() for p in model.parameters())


def conv_reference(*, runs: int = 10, channels_last: bool = True) -> tuple[float, Timing]:
    """This machine's conv throughput now: GFLOP/s of a 3×3 conv 64→64 at 256², batch 1."""
    conv = nn.Conv2d(REFERENCE_CHANNELS, REFERENCE_CHANNELS, REFERENCE_KERNEL, padding=REFERENCE_KERNEL // 2)
    x = torch.randn(1, REFERENCE_CHANNELS, REFERENCE_SIZE, REFERENCE_SIZE)
    if channels_last:
        conv = conv.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    conv.eval()
    flop = 2 * count_macs(conv, x)
    with torch.inference_mode():
        timing = time_call(lambda: conv(x), runs=runs, warmup=3)
    return flop / timing.median / 1e9, timing


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
