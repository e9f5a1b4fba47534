"""Process-level settings for CPU inference: allocator behaviour shared by the CLI, the app and benchmarks."""

from __future__ import annotations

import ctypes

# glibc mallopt parameters (malloc.h) and the largest mmap threshold glibc accepts on 64-bit.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MAX_MMAP_THRESHOLD = 32 * 1024 * 1024


def tune_malloc() -> bool:
    """Keep freed blocks up to 32 MiB in glibc's heap instead of returning them to the kernel.

    PyTorch on CPU allocates every intermediate tensor afresh; above glibc's mmap threshold each one
    is a new mapping whose pages fault in on first touch, which at 512² costs more than the
    arithmetic of the element-wise steps. Returns False where glibc's ``mallopt`` is unavailable.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, _MAX_MMAP_THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False
