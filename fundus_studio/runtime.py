"""Process-level settings for CPU inference: allocator behaviour shared by the CLI, the app and benchmarks."""

from __future__ import annotations

import ctypes
import logging
import os
import threading

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
# Resident memory above which a long-running process hands the free memory inside its heaps back to
# the kernel (glibc's malloc_trim, which also releases free pages in the middle of a heap). The trim
# threshold only returns memory at a heap's top: under a mix of requests of many sizes the free
# blocks sit between live ones, and the studio's RSS settled near 2 GiB of which about half was free
# (issue 14). A trim costs ~50 ms of one thread and the pages it returns fault in again on reuse, so
# it runs only above this budget. Chosen by measurement: README, "Reliability".
BUDGET_MIB = 1024
GOVERNOR_EVERY_S = 2.0  # how often the governor looks at the resident memory
# FUNDUS_STUDIO_MALLOC=off leaves glibc's defaults (and no governor), or "trim=MIB,arenas=N,budget=MIB"
# overrides the three above (for the measurements of benchmarks/soak.py; arenas=0 keeps glibc's count,
# budget=0 runs no governor).
ENV = "FUNDUS_STUDIO_MALLOC"
log = logging.getLogger(__name__)


def malloc_settings() -> dict[str, int] | None:
    """The allocator settings this process will use: None for glibc's defaults."""
    value = os.environ.get(ENV, "").strip()
    if value == "off":
        return None
    settings = {"trim": TRIM_THRESHOLD_MIB, "arenas": ARENAS, "budget": BUDGET_MIB}
    for item in filter(None, value.split(",")):
        key, _, number = item.partition("=")
        if key.strip() not in settings or not number.strip().isdigit():
            raise ValueError(f"{ENV}={value!r}: expected 'off' or 'trim=MIB,arenas=N,budget=MIB'")
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


def resident_mib() -> float:
    """This process's resident memory (MiB), from /proc (0 where there is no /proc)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB
    except (OSError, ValueError, IndexError):
        return 0.0


def release_free_memory() -> bool:
    """Hand the free memory of every heap back to the kernel (``malloc_trim(0)``); False where unavailable."""
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


def trim_above(*, budget_mib: float) -> bool:
    """Release free heap memory if the resident memory exceeds ``budget_mib``; whether a trim ran."""
    if resident_mib() <= budget_mib:
        return False
    release_free_memory()
    return True


def start_memory_governor(*, budget_mib: float | None = None, every_s: float = GOVERNOR_EVERY_S,
                          stop: threading.Event | None = None) -> threading.Thread | None:
    """A daemon thread that keeps the resident memory near ``budget_mib`` (default: the setting of
    ``FUNDUS_STUDIO_MALLOC``, else ``BUDGET_MIB``) by trimming free heap memory whenever it is above.

    Live memory is not touched: a process whose working set exceeds the budget simply trims after
    each look. None (no thread) with ``FUNDUS_STUDIO_MALLOC=off`` or ``budget=0``. ``stop`` ends it.
    """
    if budget_mib is None:
        settings = malloc_settings()
        budget_mib = settings["budget"] if settings is not None else 0
    if budget_mib <= 0:
        return None
    stop = stop or threading.Event()

    def watch() -> None:
        trims = 0
        while not stop.wait(every_s):
            if trim_above(budget_mib=budget_mib):
                trims += 1
                if trims == 1 or trims % 100 == 0:  # the first, then every hundredth: the log stays short
                    log.info("resident memory above %.0f MiB: freed heap memory returned (%d trims so far, "
                             "now %.0f MiB)", budget_mib, trims, resident_mib())

    thread = threading.Thread(target=watch, name="memory-governor", daemon=True)
    thread.start()
    return thread
