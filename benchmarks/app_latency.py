"""Paint → render round trip through gradio_client, as a remote user sees it.

Starts ``app.py`` in its own process for each canvas size, then times ``/render`` (label map file in,
photo file out: upload, render, download) from one client and from several concurrent clients.

    python benchmarks/app_latency.py [--checkpoints checkpoints] [--calls 20] [--clients 4]

Targets on our 2-core machines (issue 7): median ≤ 0.4 s at 256 and ≤ 1.0 s at 512; with 4 concurrent
clients no errors and p95 ≤ 3 s.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fundus_studio.imageio import save_label_png  # noqa: E402
from fundus_studio.phantom import generate_label_map  # noqa: E402

STARTUP_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str, proc: subprocess.Popen) -> None:
    import urllib.request

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"app exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"app did not answer at {url} within {STARTUP_TIMEOUT_S:.0f} s")


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def _client_calls(url: str, label_path: Path, *, calls: int, seed0: int) -> tuple[list[float], int]:
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    times, errors = [], 0
    for i in range(calls):
        start = time.perf_counter()
        try:
            client.predict(handle_file(str(label_path)), seed0 + i, api_name="/render")
            times.append(time.perf_counter() - start)
        except Exception as err:  # noqa: BLE001 - a benchmark counts failures, whatever they are
            errors += 1
            print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
    return times, errors


def bench_size(*, size: int, checkpoints: Path, calls: int, clients: int, warmup: int) -> dict[str, float]:
    import numpy as np

    folder = Path(tempfile.mkdtemp(prefix="fundus-bench-"))
    label_path = save_label_png(folder / "map.png", generate_label_map(grade=3, rng=np.random.default_rng(0), size=size))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--size", str(size),
                             "--checkpoints", str(checkpoints)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_up(url, proc)
        _client_calls(url, label_path, calls=warmup, seed0=10_000)  # loads the models
        single, err1 = _client_calls(url, label_path, calls=calls, seed0=0)
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda k: _client_calls(url, label_path, calls=calls // 2 or 1, seed0=100 * k),
                                    range(clients)))
        concurrent = [t for times, _ in results for t in times]
        err_c = sum(e for _, e in results)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "size": size, "median": statistics.median(single), "p95": _percentile(single, 0.95), "errors": err1,
        "conc_median": statistics.median(concurrent), "conc_p95": _percentile(concurrent, 0.95),
        "conc_errors": err_c, "conc_calls": len(concurrent) + err_c,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--calls", type=int, default=20, help="timed calls of the single client (≥ 20)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients in the second phase")
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    print(f"checkpoints: {args.checkpoints}  (app in its own process; {os.cpu_count()} cores)")
    print("| size | median s | p95 s | errors | clients | median s (concurrent) | p95 s (concurrent) | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        r = bench_size(size=size, checkpoints=args.checkpoints, calls=args.calls, clients=args.clients,
                       warmup=args.warmup)
        print(f"| {size} | {r['median']:.3f} | {r['p95']:.3f} | {r['errors']} | {args.clients} | "
              f"{r['conc_median']:.3f} | {r['conc_p95']:.3f} | {r['conc_errors']}/{r['conc_calls']} |")


if __name__ == "__main__":
    main()
