"""The studio in a real headless Chromium: load the page, paint a haemorrhage stroke, see it render."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
TIMEOUT_MS = 60_000  # first renders include model loading on a busy 2-core machine


def _chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path:
        return path
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but no Chromium: .ci/run must install Debian's chromium")
    pytest.skip("no Chromium found (apt-get install chromium, or set CHROMIUM=/path/to/chromium)")


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(server)
        yield pg
        browser.close()


def _render_src(pg) -> str:
    return pg.evaluate("() => document.querySelector('#render img')?.getAttribute('src') || ''")


def test_paint_a_haemorrhage_and_watch_it_render(page) -> None:
    pg = page
    canvas = pg.locator("#canvas canvas").first
    canvas.wait_for(state="visible")
    # The initial render arrives on page load; remember it.
    pg.wait_for_function("() => !!document.querySelector('#render img')")
    pg.wait_for_function("() => document.querySelector('#stats')?.innerText.includes('haemorrhage')")
    before = _render_src(pg)
    assert re.search(r"haemorrhage\s+0\s", pg.locator("#stats").inner_text())  # a blank retina to start

    # The brush is active with the haemorrhage colour by default: drag a stroke across the retina.
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    pg.mouse.move(cx - 60, cy)
    pg.mouse.down()
    for dx in range(-60, 61, 10):
        pg.mouse.move(cx + dx, cy + dx / 6)
    pg.mouse.up()

    pg.wait_for_function(
        """() => {
            const t = document.querySelector('#stats')?.innerText || '';
            const m = t.match(/haemorrhage\\s+(\\d+)/);
            return m && Number(m[1]) > 0;
        }""")
    pg.wait_for_function("(before) => (document.querySelector('#render img')?.getAttribute('src') || '') !== before",
                         arg=before)
    assert _render_src(pg) != before
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / "browser_paint.png"), full_page=True)
