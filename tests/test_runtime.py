"""Allocator settings and the memory governor (issue 14: the studio's RSS must level off)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fundus_studio import runtime

ROOT = Path(__file__).resolve().parents[1]

# A heap with ~200 MiB free between live blocks: 1 MiB blocks (under the raised mmap threshold, so
# inside the heap), all freed except the last, which pins the heap's top so that the trim threshold
# alone cannot give anything back; the fragmentation a server sees after a mix of requests.
FRAGMENTED = textwrap.dedent("""
    import ctypes, json, sys, threading, time
    sys.path.insert(0, {root!r})
    from fundus_studio import runtime
    assert runtime.tune_malloc()
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(1 << 20) for _ in range(200)]
    for b in blocks:
        ctypes.memset(b, 1, 1 << 20)
    for b in blocks[:-1]:
        libc.free(b)
    before = runtime.resident_mib()
    mode = sys.argv[1]
    if mode == "trim":
        ran = runtime.trim_above(budget_mib=before + 500)  # under budget: nothing to do
        assert not ran and runtime.resident_mib() > before - 20
        ran = runtime.trim_above(budget_mib=50)
    else:
        stop = threading.Event()
        thread = runtime.start_memory_governor(budget_mib=50, every_s=0.05, stop=stop)
        deadline = time.monotonic() + 10
        while runtime.resident_mib() > before - 150 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set(); thread.join(); ran = True
    print(json.dumps({{"before": before, "after": runtime.resident_mib(), "ran": ran}}))
""").format(root=str(ROOT))


def _run(mode: str) -> dict:
    import json

    out = subprocess.run([sys.executable, "-c", FRAGMENTED, mode], capture_output=True, text=True, timeout=60,
                         env={"FUNDUS_STUDIO_MALLOC": "", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_trim_above_budget_returns_free_memory_between_live_blocks() -> None:
    r = _run("trim")
    assert r["ran"] and r["before"] > 190 and r["after"] < r["before"] - 150


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_the_governor_trims_a_process_above_its_budget() -> None:
    r = _run("governor")
    assert r["after"] < r["before"] - 150


def test_malloc_settings_parse_and_refuse(monkeypatch) -> None:
    monkeypatch.setenv(runtime.ENV, "trim=64,budget=0")
    assert runtime.malloc_settings() == {"trim": 64, "arenas": runtime.ARENAS, "budget": 0}
    assert runtime.start_memory_governor() is None  # budget=0: no governor
    monkeypatch.setenv(runtime.ENV, "off")
    assert runtime.malloc_settings() is None and runtime.start_memory_governor() is None
    monkeypatch.setenv(runtime.ENV, "budget=lots")
    with pytest.raises(ValueError, match="budget=MIB"):
        runtime.malloc_settings()
