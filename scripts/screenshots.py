"""Screenshots of each tab of the studio for the README (docs/screenshot-*.png).

Starts the app on the given checkpoints, drives Debian's headless Chromium with Playwright (paints a
stroke, samples a gallery, exports, opens the model cards) and saves small PNGs.

    python scripts/screenshots.py [--checkpoints checkpoints] [--out docs] [--chromium /usr/bin/chromium]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
VIEWPORT = {"width": 1400, "height": 1000}
THUMB_WIDTH = 900  # px: the README shows these at about this width
TIMEOUT_MS = 120_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"the app did not answer at {url}")


IDLE_JS = """() => [...document.querySelectorAll('[data-testid="status-tracker"]')]
    .every(el => el.classList.contains('hide') || getComputedStyle(el).display === 'none')"""


def _save(page, path: Path) -> None:
    page.wait_for_function(IDLE_JS)  # no component still shows a pending event
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(path), full_page=False)
    img = Image.open(path)
    img = img.resize((THUMB_WIDTH, round(img.height * THUMB_WIDTH / img.width)), Image.Resampling.LANCZOS)
    img.convert("RGB").save(path, optimize=True)
    print(f"wrote {path}")


def shoot(url: str, out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        # Paint: the healthy retina it opens on, two lesion stamps placed by clicks, then a haemorrhage stroke.
        page.wait_for_function("() => (document.querySelector('#start-msg')?.innerText || '').includes('Started')")
        page.wait_for_function("() => (document.querySelector('#stats')?.innerText || '').includes('Grade classifier')")
        page.wait_for_function(IDLE_JS)
        for kind, (fx, fy) in (("flame_haemorrhage", (0.2, 0.35)), ("cotton_wool_spot", (0.33, 0.62))):
            page.locator("#stamp-kind input").click()
            page.get_by_role("option", name=kind).click()
            page.mouse.click(5, 5)  # close the list
            shown = page.locator("#render img")
            ib = shown.bounding_box()
            msg = page.locator("#stamp-msg").inner_text()
            shown.click(position={"x": ib["width"] * fx, "y": ib["height"] * fy})
            page.wait_for_function("(m) => (document.querySelector('#stamp-msg')?.innerText || '') !== m", arg=msg)
            page.wait_for_function(IDLE_JS)
        before = page.locator("#stats").inner_text()
        canvas = page.locator("#canvas canvas").first
        box = canvas.bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(cx - 40, cy + 30)
        page.mouse.down()
        for dx in range(-40, 41, 8):
            page.mouse.move(cx + dx, cy + 30 + dx / 5)
        page.mouse.up()
        page.wait_for_function("(before) => document.querySelector('#stats')?.innerText !== before", arg=before)
        page.wait_for_function(IDLE_JS)  # the canvas's own change event may still be on its way
        time.sleep(1.0)
        _save(page, out / "screenshot-paint.png")
        # Gallery: two samples per grade.
        page.get_by_role("tab", name="Gallery").click()
        page.get_by_role("button", name="Sample", exact=True).click()
        page.wait_for_function("() => document.querySelectorAll('.gallery-item, [data-testid=\"gallery\"] img').length >= 4"
                               " || document.querySelectorAll('button.thumbnail-item').length >= 4")
        time.sleep(1.0)
        _save(page, out / "screenshot-gallery.png")
        # Export: generate one per grade on the spot.
        page.get_by_role("tab", name="Export").click()
        page.get_by_label("Generate N per grade now").check()
        page.get_by_role("button", name="Export zip").click()
        page.wait_for_function("() => (document.body.innerText || '').includes('Exported')")
        _save(page, out / "screenshot-export.png")
        # Models: the checkpoints and their cards.
        page.get_by_role("tab", name="Models").click()
        time.sleep(0.5)
        _save(page, out / "screenshot-models.png")
        browser.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--port", str(port), "--size", str(args.size),
                             "--checkpoints", str(args.checkpoints)], cwd=ROOT, env=env)
    try:
        _wait_up(url)
        shoot(url, args.out, args.chromium)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
