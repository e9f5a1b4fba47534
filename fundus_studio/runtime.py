"""Process-level settings for CPU inference: allocator behaviour shared by the CLI, the app and benchmarks."""

from __future__ import annotations

import ctypes
import os

# glibc mallopt parameters (malloc.h) and the largest mmap threshold glibc accepts on 64-bit.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
MIB = 1024 * 1024
# Free memory kept at the top of each heap instead of being returned to the kernel. A render at 512²
# frees and re-allocates a few hundred MiB of intermediate tensors; keeping 1 GiB made the app's RSS
# climb round after round (issue 14). The value was chosen by measurement: README, "Reliability".
TRIM_THRESHOLD_MIB = 256
# Heaps ("arenas") glibc may create. By default up to 8 per core, one per thread that contends: the
# app's many worker threads each kept their own freed memory. Two, like the renders that run at once.
ARENAS = 2
# FUNDUS_STUDIO_MALLOC=off leaves glibc's defaults, or "trim=MIB,arenas=N" overrides the two above
# (for the measurements of benchmarks/soak.py; arenas=0 keeps glibc's count).
ENV = "FUNDUS_STUDIO_MALLOC"


def malloc_settings() -> dict[str, int] | None:
    """The allocator settings this process will use: None for glibc's defaults."""
    value = os.environ.get(ENV, "").strip()
    if value == "off":
        return None
    settings = {"trim": TRIM_THRESHOLD_MIB, "arenas": ARENAS}
    for item in filter(None, value.split(",")):
        key, _, number = item.partition("=")
        if key.strip() not in settings or not number.strip().isdigit():
            raise ValueError(f"{ENV}={value!r}: expected 'off' or 'trim=MIB,arenas=N'")
        settings[key.strip()] = int(number)
    return settings


def tune_malloc() -> bool:
    """Keep freed blocks up to 32 MiB in glibc's heap, in at most ``ARENAS`` heaps, each trimmed beyond
    ``TRIM_THRESHOLD_MIB`` of free memory.

    PyTorch on CPU allocates every intermediate tensor afresh; above glibc's mmap threshold each one
    is a new mapping whose pages fault in on first touch, which at 512² costs more than the
    arithmetic of the element-wise steps. The trim threshold and the arena count bound what that
    costs in resident memory. Call it before starting threads. Returns False where glibc's
    ``mallopt`` is unavailable or ``FUNDUS_STUDIO_MALLOC=off``.
    """
    settings = malloc_settings()
    if settings is None:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return ((settings["arenas"] == 0 or bool(libc.mallopt(_M_ARENA_MAX, settings["arenas"])))
                and bool(libc.mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD))
                and bool(libc.mallopt(_M_TRIM_THRESHOLD, settings["trim"] * MIB)))
    except (OSError, AttributeError):
        return False
