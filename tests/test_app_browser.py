"""The studio in a real headless Chromium: load the page, paint a haemorrhage stroke, see it render; stamp a
lesion by a click and take it back."""

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
    pg.wait_for_function("() => (document.querySelector('#start-msg')?.innerText || '').includes('healthy retina')")
    before = _render_src(pg)
    start = _count(pg, "haemorrhage")  # the tiny test generator's "healthy" sample is noise: count, not zero

    # The brush is active with the haemorrhage colour by default: drag a stroke across the retina.
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    pg.mouse.move(cx - 60, cy)
    pg.mouse.down()
    for dx in range(-60, 61, 10):
        pg.mouse.move(cx + dx, cy + dx / 6)
    pg.mouse.up()

    _wait_count(pg, "haemorrhage", start, more=True)
    pg.wait_for_function("(before) => (document.querySelector('#render img')?.getAttribute('src') || '') !== before",
                         arg=before)
    assert _render_src(pg) != before
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / "browser_paint.png"), full_page=True)


def _count(pg, name: str, column: int = 0) -> int:
    """A class's pixel count (column 0) or spot count (column 2) in the statistics table."""
    cells = pg.locator("#stats tr", has_text=re.compile(rf"^\s*{name}\b")).first.locator("td").all_inner_texts()
    return int(cells[1 + column].split()[0])


def _wait_count(pg, name: str, than: int, *, more: bool) -> None:
    pg.wait_for_function(
        """([name, than, more]) => {
            for (const row of document.querySelectorAll('#stats tr')) {
                const cells = [...row.querySelectorAll('td')].map(c => c.innerText.trim());
                if (cells[0] === name) return more ? Number(cells[1]) > than : Number(cells[1]) === than;
            }
            return false;
        }""", arg=[name, than, more])


def test_a_stamp_placed_by_a_click_appears_in_map_and_render_and_undoes(page) -> None:
    pg = page
    pg.wait_for_function("() => (document.querySelector('#start-msg')?.innerText || '').includes('healthy retina')")
    pg.wait_for_function("() => !!document.querySelector('#render img')")
    before_src, before = _render_src(pg), _count(pg, "hard_exudate")
    pg.locator("#stamp-kind input").click()
    pg.get_by_role("option", name="hard_exudate").click()
    pg.wait_for_function("() => Number(document.querySelector('#stamp-size input')?.value) === 0.1")  # its size
    pg.mouse.click(5, 5)  # close the dropdown's list
    img = pg.locator("#render img")
    box = img.bounding_box()
    img.click(position={"x": box["width"] * 0.25, "y": box["height"] * 0.5})  # the centre of the map half
    pg.wait_for_function("() => (document.querySelector('#stamp-msg')?.innerText || '').includes('Stamped a hard')")
    _wait_count(pg, "hard_exudate", before, more=True)
    pg.wait_for_function("(b) => (document.querySelector('#render img')?.getAttribute('src') || '') !== b",
                         arg=before_src)
    pg.get_by_role("button", name="Undo stamp").click()
    pg.wait_for_function("() => (document.querySelector('#stamp-msg')?.innerText || '').includes('undone')")
    _wait_count(pg, "hard_exudate", before, more=False)
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / "browser_stamp.png"), full_page=True)


def _image_pixels(pg, selector: str):
    """The pixels of the image an <img> shows, fetched by the page itself (the server's PNG, not a screenshot)."""
    import io

    import numpy as np
    from PIL import Image

    src = pg.evaluate(f"() => document.querySelector('{selector}')?.getAttribute('src') || ''")
    body = pg.request.get(src).body()
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def test_in_photo_edit_mode_pixels_far_from_a_stamp_are_the_photos(page) -> None:
    import numpy as np

    pg = page
    pg.wait_for_function("() => !!document.querySelector('#render img')")
    before_src = _render_src(pg)
    pg.locator("#example-photo").click()
    pg.wait_for_function("() => (document.querySelector('#start-msg')?.innerText || '').includes('extract from photo')")
    pg.wait_for_function("(b) => (document.querySelector('#render img')?.getAttribute('src') || '') !== b",
                         arg=before_src)
    pg.wait_for_function("() => (document.querySelector('#suggest-msg')?.innerText || '').includes('phantoms only')")
    assert pg.locator("#render-mode input[type=radio]:checked").get_attribute("value").startswith("Edit the photo")
    photo = _image_pixels(pg, "#render img")
    size = photo.shape[0]
    photo = photo[:, size:]  # side by side: map | photo
    # A stamp clicked on the map half, at its centre.
    unstamped = _render_src(pg)
    pg.locator("#stamp-kind input").click()
    pg.get_by_role("option", name="blot_haemorrhage").click()
    pg.mouse.click(5, 5)
    img = pg.locator("#render img")
    box = img.bounding_box()
    img.click(position={"x": box["width"] * 0.25, "y": box["height"] * 0.5})
    pg.wait_for_function("() => (document.querySelector('#stamp-msg')?.innerText || '').includes('Stamped a blot')")
    pg.wait_for_function("(b) => (document.querySelector('#render img')?.getAttribute('src') || '') !== b",
                         arg=unstamped)
    shown = _image_pixels(pg, "#render img")
    edited, label_colours = shown[:, size:], shown[:, :size]
    from fundus_studio import labels

    stamped = labels.from_color(label_colours) == labels.HAEMORRHAGE
    assert stamped.any()
    ys, xs = np.nonzero(stamped)
    far = np.ones(stamped.shape, bool)
    far[max(ys.min() - 17, 0):ys.max() + 18, max(xs.min() - 17, 0):xs.max() + 18] = False
    assert np.array_equal(edited[far], photo[far]) and not np.array_equal(edited, photo)
    ARTIFACTS.mkdir(exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / "browser_photo_edit.png"), full_page=True)
