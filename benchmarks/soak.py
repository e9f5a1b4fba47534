"""The studio under sustained load and hostile input: N API clients (and a painting browser) for M minutes.

Starts ``app.py`` in its own process with a temporary folder of its own, then lets ``--clients``
``gradio_client`` clients loop over a seeded mix of ``/render``, ``/sample``, ``/extract``,
``/export`` and bad inputs (a text file, a photo sent as a label map, a truncated PNG, a too-small
image) for ``--minutes``; then, optionally, a headless Chromium paints ``--strokes`` strokes, waiting
for each stroke's render (alone, so that the RSS it adds is its own). Every few seconds it records the server's RSS, open file
descriptors, threads and the size of its temporary folder.

    python benchmarks/soak.py --clients 16 --minutes 10 --strokes 500 --out reports/soak

Outcomes of a request: ``ok``; ``refused`` (bad input refused with the expected reason, naming the
file and no server path); ``busy`` (the queue was full: "try again"); ``dropped`` (the connection
broke: "peer closed connection ..."); ``error`` (anything else, including bad input accepted or
refused for the wrong reason). Writes ``soak.json`` (summary, timeline, every request) and
``soak.png`` (RSS, latency, temporary folder and descriptors over time) to ``--out``.

Targets (issue 14): 16 clients for 10 minutes give no ``error`` or ``dropped``; RSS ≤ 1.5 GiB and
not growing over the last half of the run; the temporary folder bounded; 500 strokes in Chromium
grow RSS by ≤ 150 MiB and every stroke's render arrives.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fundus_studio.editor import class_keys, css_rgb  # noqa: E402
from fundus_studio.labels import NAMES, OUTSIDE  # noqa: E402

STARTUP_TIMEOUT_S = 180.0
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
# Share of each kind of request in a client's mix.
MIX = {"render": 0.45, "sample": 0.15, "extract": 0.15, "export": 0.05, "bad": 0.20}
STALE_EXAMPLES = 10  # paths of stale temporary files kept per measurement (what leaks, if anything does)
RENDER_SEEDS = 4  # few seeds on purpose: identical renders for different users (the cut-off download)
MIB = 1024 * 1024
# True once the editor's zoom label (e.g. "452%") has not changed for 0.6 s: the canvas has stopped moving.
ZOOM_SETTLED_JS = """() => {
    const z = [...document.querySelectorAll('#canvas span')].find(e => /^\\d+%$/.test(e.innerText.trim()))?.innerText || "";
    const now = performance.now(), seen = window.__zoomSeen;
    if (!seen || seen.z !== z) { window.__zoomSeen = {z, t: now}; return false; }
    return now - seen.t > 600;
}"""
# The editor's Color button is styled with the brush's colour (Gradio 6.31's ImageEditor); until then the
# studio's canvas takes no strokes (app.brush_guard_js).
BRUSH_COLOUR_JS = ("(rgb) => (document.querySelector('#canvas button[aria-label=Color]')?.style.color || '') === rgb"
                   " && !document.querySelector('#canvas').classList.contains('brush-pending')")


# Messages the studio gives for each bad input (the start of its reason).
BAD_INPUTS = {"notes.png": ("render", "not an image file"), "photo_as_map.png": ("render", "outside the label palette"),
              "cut.png": ("extract", "unreadable or truncated"), "tiny.png": ("extract", "at least 64 px")}
DROPPED = ("RemoteProtocolError", "ReadError", "ConnectError", "RemoteDisconnected", "ConnectionResetError",
           "ConnectionError", "ReadTimeout", "WriteError")


@dataclass
class Request:
    t: float  # s since the start of the soak
    endpoint: str
    seconds: float
    outcome: str  # ok | refused | busy | dropped | error
    detail: str = ""


@dataclass
class Sample:
    t: float
    rss_mib: float
    fds: int
    threads: int
    temp_mib: float
    temp_files: int
    stale_files: int = 0  # files the app's cleanup should have deleted by now (older than its age + period)
    stale_examples: list[str] = field(default_factory=list)


# --- the server -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*, checkpoints: Path, size: int, cache_age: int, temp_dir: Path,
                 log_path: Path) -> tuple[subprocess.Popen, str]:
    """``app.py`` in its own process, its temporary files in ``temp_dir``; (process, URL) once it answers."""
    import urllib.request

    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(temp_dir), "FUNDUS_STUDIO_SIZE": str(size),
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--checkpoints",
                             str(checkpoints), "--cache-age", str(cache_age)], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"app exited with code {proc.returncode}; see {log_path}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"app did not answer at {url} within {STARTUP_TIMEOUT_S:.0f} s")


def _folder_size(folder: Path, *, stale_after_s: float | None = None) -> tuple[int, int, list[str]]:
    """(bytes, files, files older than ``stale_after_s`` by ctime, the age Gradio's cleanup goes by)."""
    total, files, stale = 0, 0, []
    now = time.time()
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # deleted by the server meanwhile
            total += st.st_size
            files += 1
            if stale_after_s is not None and now - st.st_ctime > stale_after_s:
                stale.append(os.path.relpath(path, folder))
    return total, files, stale


def measure(pid: int, temp_dir: Path, t: float, *, stale_after_s: float | None = None) -> Sample:
    """The server's resident memory, descriptors, threads and temporary folder, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss_kib = int(fields["VmRSS"].split()[0])
    size, files, stale = _folder_size(temp_dir, stale_after_s=stale_after_s)
    return Sample(t=round(t, 2), rss_mib=round(rss_kib / 1024, 1), fds=len(os.listdir(f"/proc/{pid}/fd")),
                  threads=int(fields["Threads"]), temp_mib=round(size / MIB, 2), temp_files=files,
                  stale_files=len(stale), stale_examples=sorted(stale)[:STALE_EXAMPLES])


# --- the inputs -------------------------------------------------------------------------------------


def make_inputs(folder: Path, *, size: int) -> dict[str, list[Path]]:
    """Label maps, photos and the bad files the clients send."""
    import numpy as np
    from PIL import Image

    from fundus_studio.imageio import save_label_png, save_png
    from fundus_studio.phantom import generate_label_map, render_photo

    folder.mkdir(parents=True, exist_ok=True)
    maps, photos = [], []
    for i, grade in enumerate((0, 2, 3, 4)):
        m = generate_label_map(grade=grade, rng=np.random.default_rng(i), size=size)
        maps.append(save_label_png(folder / f"map{i}.png", m))
        photos.append(save_png(folder / f"photo{i}.png", render_photo(m, seed=i)))
    (folder / "notes.png").write_text("these are not pixels\n" * 50)
    shutil.copy(photos[0], folder / "photo_as_map.png")
    data = photos[1].read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 3])
    Image.new("RGB", (40, 40), (120, 60, 30)).save(folder / "tiny.png")
    return {"maps": maps, "photos": photos, "bad": [folder / name for name in BAD_INPUTS]}


# --- the API clients -------------------------------------------------------------------------------


def _outcome(err: BaseException) -> str:
    names = {type(e).__name__ for e in (err, err.__cause__, err.__context__) if e is not None}
    if names & set(DROPPED) or "peer closed connection" in str(err):
        return "dropped"
    if type(err).__name__ == "QueueError" or "queue is full" in str(err).lower():
        return "busy"
    return "error"


def api_client(url: str, inputs: dict[str, list[Path]], *, seed: int, deadline: float, t0: float,
               out: list[Request], temp_dir: Path) -> None:
    """One client: a seeded mix of requests until ``deadline``; each appended to ``out``."""
    from gradio_client import Client, handle_file

    rng = random.Random(seed)
    client = Client(url, verbose=False)
    kinds, weights = list(MIX), list(MIX.values())
    while time.monotonic() < deadline:
        kind = rng.choices(kinds, weights)[0]
        bad = rng.choice(inputs["bad"]) if kind == "bad" else None
        endpoint = BAD_INPUTS[bad.name][0] if bad else kind
        start = time.monotonic()
        try:
            if bad is not None and endpoint == "render":
                client.predict(handle_file(str(bad)), 0, api_name="/render")
            elif bad is not None:
                client.predict(handle_file(str(bad)), api_name="/extract")
            elif kind == "render":
                client.predict(handle_file(str(rng.choice(inputs["maps"]))), rng.randrange(RENDER_SEEDS),
                               api_name="/render")
            elif kind == "sample":
                client.predict(rng.randrange(5), 2, rng.randrange(RENDER_SEEDS), api_name="/sample")
            elif kind == "extract":
                client.predict(handle_file(str(rng.choice(inputs["photos"]))), api_name="/extract")
            else:
                client.predict("Generate N per grade now", 1, rng.randrange(RENDER_SEEDS), api_name="/export")
            outcome, detail = ("error", "bad input accepted") if bad else ("ok", "")
        except Exception as err:  # noqa: BLE001 - a soak test counts every failure, whatever it is
            detail = f"{type(err).__name__}: {err}"[:300]
            outcome = _outcome(err)
            if bad is not None and outcome == "error":
                # The reason, naming the file as the user named it, and no server path.
                named = f"{bad.name}: " in str(err) and BAD_INPUTS[bad.name][1] in str(err)
                leaked = str(temp_dir) in str(err) or "/tmp/" in str(err)
                outcome = "refused" if named and not leaked else "error"
        out.append(Request(t=round(start - t0, 2), endpoint=f"bad {endpoint}" if bad else endpoint,
                           seconds=round(time.monotonic() - start, 3), outcome=outcome, detail=detail))


def warm_up(url: str, inputs: dict[str, list[Path]]) -> None:
    """One request of each kind: the models load before the clock starts."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    client.predict(handle_file(str(inputs["maps"][0])), 0, api_name="/render")
    client.predict(handle_file(str(inputs["photos"][0])), api_name="/extract")
    client.predict(0, 1, 0, api_name="/sample")


# --- the browser ------------------------------------------------------------------------------------


def browser_painter(url: str, *, strokes: int, seed: int, t0: float, out: list[Request], chromium: str,
                    timeout_s: float = 120.0) -> None:
    """Paint ``strokes`` strokes in a headless Chromium, waiting for each one's render to arrive."""
    from playwright.sync_api import sync_playwright

    rng = random.Random(seed)
    render_src = "() => document.querySelector('#render img')?.getAttribute('src') || ''"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(timeout_s * 1000)
            page.goto(url)
            canvas = page.locator("#canvas canvas").first
            canvas.wait_for(state="visible")
            page.wait_for_function("() => !!document.querySelector('#render img')")
            # The page first shows a blank field of view, then replaces it with a healthy retina: a stroke
            # painted before that replacement is wiped with the blank canvas.
            page.wait_for_function("() => (document.querySelector('#start-msg')?.innerText || '').includes('healthy retina')")
            page.wait_for_function(ZOOM_SETTLED_JS)
            box = canvas.bounding_box()
            cx, cy, r = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2, box["width"] * 0.3
            # Each stroke takes the next paintable class but the outside (number keys, editor.class_keys), so
            # that it changes the map: a stroke of one class over ground it already painted changes nothing
            # and rightly gets no new render.
            keys = [k for k, name in class_keys().items() if name != NAMES[OUTSIDE]]
            for i in range(strokes):
                before = page.evaluate(render_src)
                key = keys[i % len(keys)]
                page.mouse.click(5, 5)  # focus off any field: keys typed into a text box pick no class
                picked = time.monotonic()
                page.keyboard.press(key)
                page.wait_for_function(
                    "(n) => document.querySelector('#paint-class input[type=radio]:checked')?.value === n",
                    arg=class_keys()[key])
                # The brush follows with the server's answer, a moment after the picker shows the class: a
                # stroke started before paints the previous class (over its own ground: no change, no
                # render). The editor's Color button shows the brush's colour; its delay is recorded.
                try:
                    page.wait_for_function(BRUSH_COLOUR_JS, arg=css_rgb(class_keys()[key]))
                    outcome, detail = "ok", ""
                except Exception as err:  # noqa: BLE001 - a brush that never followed
                    outcome, detail = "error", f"brush did not follow the class: {type(err).__name__}"[:300]
                out.append(Request(t=round(picked - t0, 2), endpoint="brush (browser)",
                                   seconds=round(time.monotonic() - picked, 3), outcome=outcome, detail=detail))
                # A new brush re-lays the editor out; a press meanwhile can land off the map and draw
                # nothing. Wait until its zoom label has held for 0.6 s.
                page.wait_for_function(ZOOM_SETTLED_JS)
                x, y = cx + rng.uniform(-r, r), cy + rng.uniform(-r, r)
                start = time.monotonic()
                page.mouse.move(x, y)
                page.mouse.down()
                for _ in range(4):
                    x, y = x + rng.uniform(-12, 12), y + rng.uniform(-12, 12)
                    page.mouse.move(x, y)
                page.mouse.up()
                try:
                    page.wait_for_function(f"(b) => ({render_src})() !== b", arg=before)
                    outcome, detail = "ok", ""
                except Exception as err:  # noqa: BLE001 - a stroke whose render never came
                    outcome, detail = "error", f"render did not arrive: {type(err).__name__}"[:300]
                out.append(Request(t=round(start - t0, 2), endpoint="paint (browser)",
                                   seconds=round(time.monotonic() - start, 3), outcome=outcome, detail=detail))
        finally:
            browser.close()


# --- the soak ---------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def summarise(requests: list[Request], samples: list[Sample], *, seconds: float, idle_rss: float,
              browser_rss: tuple[float, float] | None) -> dict:
    """Counts per outcome, latencies per endpoint, memory, descriptors and the temporary folder.

    ``seconds`` is the length of the API phase (the browser paints after it).
    """
    endpoints = sorted({r.endpoint for r in requests})
    per_endpoint = {}
    for ep in endpoints:
        rs = [r for r in requests if r.endpoint == ep]
        ok = [r.seconds for r in rs if r.outcome in ("ok", "refused")]
        per_endpoint[ep] = {"requests": len(rs), **{o: sum(r.outcome == o for r in rs) for o in
                                                   ("ok", "refused", "busy", "dropped", "error")},
                            "p50_s": round(statistics.median(ok), 3) if ok else None,
                            "p95_s": round(_percentile(ok, 0.95), 3) if ok else None}
    half = [s for s in samples if seconds / 2 <= s.t <= seconds]  # the API phase's second half
    quarter3 = [s.rss_mib for s in half if s.t < 3 * seconds / 4]
    quarter4 = [s.rss_mib for s in half if s.t >= 3 * seconds / 4]
    counts = {o: sum(r.outcome == o for r in requests) for o in ("ok", "refused", "busy", "dropped", "error")}
    return {
        "requests": len(requests), **counts,
        "per_endpoint": per_endpoint,
        "rss_idle_mib": idle_rss,
        "rss_peak_mib": max(s.rss_mib for s in samples),
        "rss_final_mib": samples[-1].rss_mib,
        "rss_peak_by_minute_mib": [max((s.rss_mib for s in samples if m * 60 <= s.t < (m + 1) * 60), default=None)
                                   for m in range(int(seconds // 60) + 1)],
        # The plateau: the peak of the last quarter against that of the third.
        "rss_growth_last_half_mib": round(max(quarter4) - max(quarter3), 1) if quarter3 and quarter4 else None,
        "fds_max": max(s.fds for s in samples), "fds_final": samples[-1].fds,
        "threads_max": max(s.threads for s in samples),
        "temp_mib_max": max(s.temp_mib for s in samples), "temp_mib_final": samples[-1].temp_mib,
        "temp_files_max": max(s.temp_files for s in samples),
        "stale_files_max": max(s.stale_files for s in samples), "stale_files_final": samples[-1].stale_files,
        "stale_examples_final": samples[-1].stale_examples,
        "browser_rss_growth_mib": round(browser_rss[1] - browser_rss[0], 1) if browser_rss else None,
        "first_errors": [asdict(r) for r in requests if r.outcome in ("error", "dropped")][:20],
    }


def plot(path: Path, requests: list[Request], samples: list[Sample], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    t = [s.t / 60 for s in samples]
    axes[0].plot(t, [s.rss_mib for s in samples], color="black")
    axes[0].set_ylabel("server RSS (MiB)")
    axes[0].set_title(title)
    for ep in sorted({r.endpoint for r in requests}):
        rs = [r for r in requests if r.endpoint == ep]
        axes[1].scatter([r.t / 60 for r in rs], [r.seconds for r in rs], s=6, label=ep)
    bad = [r for r in requests if r.outcome in ("error", "dropped")]
    if bad:
        axes[1].scatter([r.t / 60 for r in bad], [r.seconds for r in bad], s=40, marker="x", color="red",
                        label="error / dropped")
    axes[1].set_ylabel("latency (s)")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=7, ncol=3)
    (folder,) = axes[2].plot(t, [s.temp_mib for s in samples], color="tab:blue", label="temporary folder (MiB)")
    ax = axes[2].twinx()
    (fds,) = ax.plot(t, [s.fds for s in samples], color="tab:orange", label="open descriptors")
    axes[2].set_ylabel("temporary folder (MiB)")
    ax.set_ylabel("open descriptors")
    axes[2].set_xlabel("minutes")
    axes[2].legend(handles=[folder, fds], loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def soak(*, clients: int, minutes: float, strokes: int, size: int, checkpoints: Path, out: Path, cache_age: int,
         sample_every: float = 5.0, seed: int = 0, chromium: str | None = None) -> dict:
    """Run the soak; its summary (also written to ``out/soak.json``, with ``out/soak.png``)."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fundus-soak-"))
    temp_dir = work / "gradio"
    inputs = make_inputs(work / "inputs", size=size)
    proc, url = start_server(checkpoints=checkpoints, size=size, cache_age=cache_age, temp_dir=temp_dir,
                             log_path=out / "server.log")
    requests: list[Request] = []
    samples: list[Sample] = []
    # Gradio looks every `frequency` ≤ `age` seconds: a file older than twice the age (and a margin for
    # a busy machine) should have been deleted.
    stale_after = 2 * cache_age + 30
    try:
        idle = measure(proc.pid, temp_dir, 0.0).rss_mib
        warm_up(url, inputs)
        t0 = time.monotonic()
        deadline = t0 + minutes * 60
        stop = threading.Event()
        browser_rss: list[float] = []

        def monitor() -> None:
            while not stop.is_set():
                samples.append(measure(proc.pid, temp_dir, time.monotonic() - t0, stale_after_s=stale_after))
                stop.wait(sample_every)

        def painter() -> None:
            browser_rss.append(measure(proc.pid, temp_dir, 0).rss_mib)
            try:
                browser_painter(url, strokes=strokes, seed=seed, t0=t0, out=requests, chromium=chromium)
            except Exception as err:  # noqa: BLE001 - a browser that could not run is a failed soak
                requests.append(Request(t=round(time.monotonic() - t0, 2), endpoint="paint (browser)", seconds=0.0,
                                        outcome="error", detail=f"browser: {type(err).__name__}: {err}"[:300]))
            browser_rss.append(measure(proc.pid, temp_dir, 0).rss_mib)

        watcher = threading.Thread(target=monitor, daemon=True)
        watcher.start()
        users = [threading.Thread(target=api_client, args=(url, inputs),
                                  kwargs=dict(seed=seed + k, deadline=deadline, t0=t0, out=requests,
                                              temp_dir=temp_dir), daemon=True) for k in range(clients)]
        for th in users:
            th.start()
        for th in users:
            th.join()
        api_seconds = time.monotonic() - t0
        if strokes:  # after the API clients, so that the strokes' effect on RSS is their own
            painter()
        seconds = time.monotonic() - t0
        stop.set()
        watcher.join()
        samples.append(measure(proc.pid, temp_dir, seconds, stale_after_s=stale_after))
        if proc.poll() is not None:
            raise SystemExit(f"the server died during the soak (code {proc.returncode}); see {out / 'server.log'}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(requests, samples, seconds=api_seconds, idle_rss=idle,
                        browser_rss=tuple(browser_rss) if len(browser_rss) == 2 else None)
    from fundus_studio.runtime import ENV

    config = {"clients": clients, "malloc": os.environ.get(ENV, "default"), "minutes": minutes, "strokes": strokes, "size": size, "cache_age_s": cache_age,
              "checkpoints": str(checkpoints), "seed": seed, "cores": os.cpu_count(), "seconds": round(seconds, 1),
              "command": " ".join(sys.argv)}
    (out / "soak.json").write_text(json.dumps({"config": config, "summary": summary,
                                               "timeline": [asdict(s) for s in samples],
                                               "requests": [asdict(r) for r in requests]}, indent=1))
    plot(out / "soak.png", requests, samples,
         f"{clients} clients, {minutes:g} min, {strokes} strokes, {size}² ({os.cpu_count()} cores)")
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--strokes", type=int, default=0, help="strokes painted in headless Chromium (0: no browser)")
    p.add_argument("--size", type=int, default=512, help="the app's canvas and render size")
    p.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "soak")
    p.add_argument("--cache-age", type=int, default=120,
                   help="the app's --cache-age in s (short, so that a soak shows the folder level off)")
    p.add_argument("--sample-every", type=float, default=5.0, help="s between measurements of the server")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chromium", default=os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium")
    args = p.parse_args()
    s = soak(clients=args.clients, minutes=args.minutes, strokes=args.strokes, size=args.size,
             checkpoints=args.checkpoints, out=args.out, cache_age=args.cache_age, sample_every=args.sample_every,
             seed=args.seed, chromium=args.chromium)
    print(f"{s['requests']} requests: {s['ok']} ok, {s['refused']} refused bad inputs, {s['busy']} busy, "
          f"{s['dropped']} dropped, {s['error']} errors")
    print("| endpoint | requests | ok | refused | busy | dropped | error | p50 s | p95 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ep, e in s["per_endpoint"].items():
        print(f"| {ep} | {e['requests']} | {e['ok']} | {e['refused']} | {e['busy']} | {e['dropped']} | {e['error']} | "
              f"{e['p50_s']} | {e['p95_s']} |")
    print(f"RSS: idle {s['rss_idle_mib']} MiB, peak {s['rss_peak_mib']} MiB, final {s['rss_final_mib']} MiB, "
          f"growth over the last half {s['rss_growth_last_half_mib']} MiB; browser strokes grew it by "
          f"{s['browser_rss_growth_mib']} MiB")
    print(f"descriptors: max {s['fds_max']}, final {s['fds_final']}; temporary folder: max {s['temp_mib_max']} MiB "
          f"({s['temp_files_max']} files), final {s['temp_mib_final']} MiB")
    for r in s["first_errors"]:
        print(f"  {r['outcome']} {r['endpoint']} at {r['t']} s: {r['detail']}")
    print(f"wrote {args.out / 'soak.json'} and {args.out / 'soak.png'}")


if __name__ == "__main__":
    main()
