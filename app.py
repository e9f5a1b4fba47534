"""Fundus Studio: paint lesion maps and watch them render, browse samples per grade, curate and export.

``python app.py [--host 127.0.0.1] [--port 7860] [--checkpoints DIR] [--auth USER:PASS]``

The app is thin: every handler below calls :class:`fundus_studio.studio.Studio` (models loaded
lazily, once, and shared by all users) and the framework-free helpers of
:mod:`fundus_studio.editor` and :mod:`fundus_studio.export`. Per-user data (the painting's base
map, the gallery, the curation) lives in ``gr.State``, so two browser tabs never see each other's.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Renders share 2 cores with the server: spinning OpenMP threads made a 0.1 s render take 1.5 s.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import gradio_client.utils  # noqa: E402
from gradio.utils import NamedString, get_upload_folder  # noqa: E402
from PIL import Image  # noqa: E402

from fundus_studio import editor, labels, tempfiles  # noqa: E402
from fundus_studio.errors import StudioError  # noqa: E402
from fundus_studio.export import GalleryItem, export_items, write_download, zip_folder  # noqa: E402
from fundus_studio.formats import export_dataset  # noqa: E402
from fundus_studio.imageio import read_image, read_label_map  # noqa: E402
from fundus_studio.runtime import start_memory_governor, tune_malloc  # noqa: E402
from fundus_studio.phantom import LESION_KINDS  # noqa: E402
from fundus_studio.photo_edit import PhotoEditConfig  # noqa: E402
from fundus_studio.studio import GENERATORS, Studio  # noqa: E402

CHECKPOINTS = Path(os.environ.get("FUNDUS_STUDIO_CHECKPOINTS", "checkpoints"))
# px; label maps are painted and rendered at this size (--size, or FUNDUS_STUDIO_SIZE for `gradio app.py`).
CANVAS_SIZE = int(os.environ.get("FUNDUS_STUDIO_SIZE", "512"))
CANVAS_HEIGHT = 640  # px on screen for the editor (toolbar included): the map near 1:1 at a 1400-px window
MAX_UPLOAD = "20mb"
MAX_PER_GRADE = 12  # gallery and on-the-spot export: samples per grade per request
MAX_GALLERY = 120  # items kept per user; the oldest are dropped beyond it
CONCURRENCY = 2  # renders at once: one per core on our 2-core machines
MAX_QUEUE = 64  # requests waiting beyond that are refused ("queue is full, try again") rather than piling up
# s; files the studio hands out (renders, downloads, zips) and uploads are deleted this long after they were
# made (--cache-age): the temporary folder holds at most this much of the traffic.
CACHE_AGE = int(os.environ.get("FUNDUS_STUDIO_CACHE_AGE", "3600"))
# Every image the studio shows or returns is written by us under a fresh name here. Gradio's own
# array → file step names the file after a hash of its bytes and rewrites it in place, so two users
# receiving the same picture (same map, same seed) raced: one download was cut short mid-body
# ("peer closed connection without sending complete message body").
OUTPUT_DIR = Path(get_upload_folder()) / "fundus-studio"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
START_BLANK, START_SAMPLE, START_PHANTOM = "Blank retina", "Generated sample", "Phantom anatomy"
START_UPLOAD, START_PHOTO = "Upload label map", "Extract from photo"
HEALTHY_SEED = 0  # Paint opens on the grade-0 sample of this seed from the default generator
# Export formats offered beside the zip: label → fundus_studio.formats format (None: the studio's own).
EXPORT_FORMATS: dict[str, str | None] = {"Studio dataset": None, "nnU-Net v2": "nnunet", "IDRiD layout": "idrid"}
EXPORT_ZIP_NAMES: dict[str, str] = {"nnU-Net v2": "fundus-studio-nnunet", "IDRiD layout": "fundus-studio-idrid"}
STAMP_OFF = "off (paint with the brush)"
FIRST_CLASS = "haemorrhage"  # the class the brush paints when Paint opens
MAX_STAMP_UNDO = 32  # stamps a user can take back, per tab
STYLE_HINT = ("The first render with a new style photo takes a few seconds (its statistics are measured once, "
              "then cached).")
VIEW_SIDE, VIEW_OVERLAY = "Side by side", "Overlay"
# What the render shows: a photo synthesised from the whole map, or (after "Extract from photo") the photo
# itself, with only the regions painted since synthesised and blended in (fundus_studio.photo_edit).
MODE_SYNTH, MODE_EDIT = "Synthesise the whole photo", "Edit the photo (keep it where the map is unchanged)"
EDIT_MARGIN_PX = PhotoEditConfig().margin_px
EDIT_HINT = ("**Edit the photo**: after *Extract from photo*, the render is the photo itself; what you paint or "
             "stamp (or erase back to retina) is rendered in the photo's own style and blended in, and the photo "
             f"stays exact {EDIT_MARGIN_PX} px beyond your changes. Download gives the edited photo and its label map.")
SUGGEST_THRESHOLD = 0.5  # the suggestion slider's start: the segmenter's own threshold
SUGGEST_NOTE = ("The lesion U-Net was trained on **procedural phantoms only**: on a real photo its finds are guesses. "
                "They are outlined here as suggestions, not written into the map; move the threshold, then accept "
                "them into the map or discard them.")
PHANTOM_NOTE = (
    "**The shipped demo models were trained on procedural phantoms, not on photographs of eyes.** "
    "Their renders and lesion maps illustrate the method; they are not clinical images. "
    "See the *Models* tab for how to train on IDRiD or FGADR."
)

STUDIO = Studio.from_checkpoints(CHECKPOINTS)  # cheap: models load on first use
log = logging.getLogger("fundus_studio.app")


# The editor keeps uploaded stroke blobs in a dict shared by all users and frees an entry only when
# an event consumes it; bounded, so a long-running server cannot grow without limit.
MAX_EDITOR_BLOBS = 256


class _BoundedDict(OrderedDict):
    """A dict that forgets its oldest entries beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


def _upload_path(component: gr.File, f: Any) -> Any:
    """``gr.File`` "filepath" preprocessing without its leak (see :func:`upload_file`)."""
    if component.file_types and not gradio_client.utils.is_valid_file(f.path, component.file_types):
        raise gr.Error(f"Invalid file type. Please upload a file that is one of these formats: {component.file_types}")
    return NamedString(f.path)


def upload_file(**kwargs: Any) -> gr.File:
    """A ``gr.File`` input (``type="filepath"``) whose preprocessing leaves nothing behind. Gradio 6.31's
    creates an empty temporary file in its cache for every upload it hands over and never deletes it
    (the soak counted one per request: thousands a day, outside ``--cache-age``'s reach); the path
    it returns is the upload's own, which Gradio does delete. Patched on the instance: a subclass
    would make Gradio write an ``app.pyi`` stub beside this file."""
    component = gr.File(type="filepath", **kwargs)
    component._process_single_file = functools.partial(_upload_path, component)  # type: ignore[method-assign]
    return component


# --- errors -------------------------------------------------------------------------------------
# A user's mistake (StudioError: a bad upload, nothing kept yet) is told to the user and logged as one
# line; anything else is a fault of ours: its traceback goes to the log, the user gets a short notice.

_TEMP_PATH = re.compile("(?:" + "|".join(re.escape(str(Path(d).resolve())) for d in
                                         {get_upload_folder(), tempfile.gettempdir()}) + r")/[^\s'\":]*")


def _upload_name(path: str | None) -> str:
    """How messages call an uploaded file: its original name (Gradio keeps it), never the server's path."""
    name = Path(path).name if path else ""
    return name or "the uploaded file"


def public_message(message: str) -> str:
    """``message`` with every server temporary path replaced by the file's own name."""
    return _TEMP_PATH.sub(lambda m: _upload_name(m.group(0)), message)


def _refused(err: StudioError, where: str) -> str:
    """Log a refused request in one line; the message for the user."""
    message = public_message(str(err))
    log.info("%s refused: %s", where, message)
    return message


def _guarded(fn):
    """Real faults in a handler: traceback to the log, a short error to the user (no internals)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except StudioError as err:  # handlers that cannot return a warning (API endpoints)
            raise gr.Error(_refused(err, fn.__name__), print_exception=False) from None
        except Exception:
            log.exception("%s failed", fn.__name__)
            raise gr.Error(f"internal error in {fn.__name__}; the server's log has the details",
                           print_exception=False) from None

    return wrapper


# --- helpers ------------------------------------------------------------------------------------


def _png(image: np.ndarray, stem: str) -> str:
    """Write an (H, W, 3) uint8 image as a PNG under a name no other request uses; its path.

    The file sits in Gradio's cache folder, so Gradio serves it without copying and deletes it
    after CACHE_AGE like its own files.
    """
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUTPUT_DIR / f"{stem}-{uuid.uuid4().hex}.png"
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG", compress_level=1)
    return str(path)


def _fresh_folder(prefix: str) -> Path:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=OUTPUT_DIR))


def legend_html() -> str:
    chips = "".join(
        f'<span style="display:inline-flex;align-items:center;margin:2px 10px 2px 0">'
        f'<span style="width:14px;height:14px;background:{editor.hex_color(c.index)};'
        f'border:1px solid #555;margin-right:5px;display:inline-block"></span>{c.index} {c.name} ({c.short})</span>'
        for c in labels.CLASSES
    )
    return f'<div id="legend" style="font-size:13px;line-height:1.5">{chips}</div>'


GRADE_NOTE = ("The grade classifier was trained on procedural phantoms only: on a map extracted from a real "
              "photo its reading is a guess, not a diagnosis.")


def stats_markdown(index_map: np.ndarray, *, grade_probs: np.ndarray | None) -> str:
    s = editor.map_stats(index_map)
    rows = [f"| {name} | {s.pixels[name]} | {100 * s.fov_fraction.get(name, 0.0):.2f} % | {s.spots.get(name, '')} |"
            for name in labels.NAMES if name != "outside"]
    table = "\n".join(["| class | pixels | of field of view | spots |", "|---|---|---|---|", *rows])
    if grade_probs is None:
        grade = "Grade classifier: not loaded (no `grade_classifier` checkpoint)."
    else:
        g = int(np.argmax(grade_probs))
        every = " · ".join(f"{k}: {grade_probs[k]:.2f}" for k in range(labels.NUM_GRADES))
        grade = (f"**Grade classifier:** grade {g} ({labels.GRADE_NAMES[g]}), p = {grade_probs[g]:.2f} "
                 f"(all grades: {every}). *{GRADE_NOTE}*")
    return f"{grade}\n\n{table}"


def _show(index_map: np.ndarray, photo: np.ndarray, *, view: str, opacity: float) -> str:
    """The view the user asked for, as a PNG file: the overlay, or map and render side by side."""
    if view == VIEW_OVERLAY:
        return _png(editor.overlay(photo, index_map, opacity=opacity), "overlay")
    return _png(np.concatenate([labels.to_color(index_map), photo], axis=1), "view")


def _style(style_path: str | None) -> np.ndarray | None:
    return read_image(style_path, name=_upload_name(style_path)) if style_path else None


def _as_int(value: float | int | None, default: int = 0) -> int:
    return default if value is None else int(value)


def generator_choices() -> list[str]:
    """The label-map generators whose checkpoint is present, the default first."""
    present = [name for name in GENERATORS if STUDIO.has(GENERATORS[name])]
    default = STUDIO.generator_name()
    return sorted(present, key=lambda name: name != default)


def generator_dropdown(label: str = "Generator") -> gr.Dropdown:
    choices = generator_choices()
    # Custom values pass through: a --checkpoints folder read after the page was built may hold others,
    # and Studio refuses unknown names with a message that lists the known ones.
    return gr.Dropdown(choices, value=choices[0] if choices else None, label=label, allow_custom_value=True,
                       info="label-map generators whose checkpoint is present")


def _generator(name: str | None) -> str | None:
    return name or None


@functools.lru_cache(maxsize=4)
def _healthy(checkpoints: str, generator: str, size: int) -> np.ndarray:
    return STUDIO.sample_labels(grade=0, count=1, seed=HEALTHY_SEED, size=size, generator=generator)[0]


def healthy_map() -> np.ndarray:
    """What Paint opens on: a grade-0 sample of the default generator (disc and vessel tree), sampled once
    per process and folder; the blank template when no generator checkpoint is present."""
    if not generator_choices():
        return editor.blank_template(size=CANVAS_SIZE)
    return _healthy(str(STUDIO.checkpoints), STUDIO.generator_name(), CANVAS_SIZE).copy()


def phantom_anatomy(seed: int) -> np.ndarray:
    """A healthy phantom's label map (grade 0: disc, vessel tree, fovea, no lesions) at the canvas size."""
    from fundus_studio.phantom import generate_label_map
    from fundus_studio.phantom.config import LABEL_STREAM, random_stream

    return generate_label_map(grade=0, rng=random_stream(seed, LABEL_STREAM), size=CANVAS_SIZE)


def example_photo() -> str:
    """The CC0 fundus photo shipped with scikit-image (``skimage.data.retina()``), as a PNG file to extract from."""
    from skimage import data

    path = OUTPUT_DIR / "example-retina-skimage.png"
    if not path.is_file():
        OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{uuid.uuid4().hex}.tmp")
        Image.fromarray(data.retina()).save(tmp, format="PNG")
        tmp.replace(path)
    return str(path)


# --- Paint --------------------------------------------------------------------------------------


@_guarded
def start_map(source: str, grade: int, seed: float, upload: str | None, photo: str | None, nearest: bool,
              generator: str | None = None):
    """The map a painting starts from → (editor value, base map, message, photo to edit, render mode,
    suggestions view, suggestions message). Only "Extract from photo" gives a photo to edit."""
    seed = _as_int(seed)
    edit_source = None
    try:
        if source == START_SAMPLE:
            base = STUDIO.sample_labels(grade=int(grade), count=1, seed=seed, size=CANVAS_SIZE,
                                        generator=_generator(generator))[0]
        elif source == START_PHANTOM:
            base = phantom_anatomy(seed)
        elif source == START_UPLOAD:
            if not upload:
                raise StudioError("choose a label map file to upload first")
            base = editor.uploaded_map(read_label_map(upload, nearest=nearest, name=_upload_name(upload)),
                                       size=CANVAS_SIZE, nearest=nearest)
        elif source == START_PHOTO:
            if not photo:
                raise StudioError("choose a photo to upload first")
            extracted = STUDIO.extract_photo(read_image(photo, name=_upload_name(photo)), size=CANVAS_SIZE)
            base = extracted.label_map
            edit_source = {"photo": extracted.photo, "map": base, "suggestions": extracted.suggestions}
            STUDIO.warm_style(extracted.photo)  # the first edit then renders at once
        else:
            base = editor.blank_template(size=CANVAS_SIZE)
    except StudioError as err:
        message = _refused(err, "start")
        gr.Warning(message)
        return gr.skip(), gr.skip(), f"⚠️ {message}", *(gr.skip(),) * 4
    mode = MODE_EDIT if edit_source is not None else MODE_SYNTH
    return (editor.editor_value(base), base, f"Started from: {source.lower()}.", edit_source, mode,
            *suggestion_view(edit_source, SUGGEST_THRESHOLD))


@_guarded
def open_healthy():
    """Page load: the healthy retina Paint opens on → (editor value, base map, message)."""
    try:
        base = healthy_map()
        what = (f"a healthy retina (grade-0 sample, {STUDIO.generator_name()} generator, seed {HEALTHY_SEED})"
                if generator_choices() else "a blank retina (no generator checkpoint)")
    except StudioError as err:
        log.info("healthy start refused: %s", public_message(str(err)))
        base, what = editor.blank_template(size=CANVAS_SIZE), "a blank retina"
    return editor.editor_value(base), base, f"Started from {what}."


@_guarded
def stamp(current: np.ndarray | None, base: np.ndarray | None, kind: str, size_dd: float,
          history: list[np.ndarray], seed: float, style: str | None, view: str, opacity: float, evt: gr.SelectData,
          source: dict | None = None, mode: str = MODE_SYNTH):
    """A click on the label map or the render with a lesion stamp chosen: the lesion drawn there (seeded by
    the position) → (editor value, base map, undo history, message, view, statistics, map, render).

    It stamps the map as last rendered (strokes included), so the canvas need not travel to the server."""
    if kind not in LESION_KINDS or evt is None or evt.index is None:
        return (gr.skip(),) * 8
    current = (healthy_map() if base is None else base) if current is None else current
    x, y = (int(v) for v in evt.index)
    x %= CANVAS_SIZE  # side by side: the map's and the render's halves are the same place
    try:
        stamped = editor.stamp_lesion(current, kind, at=(x + 0.5, y + 0.5), seed=y * CANVAS_SIZE + x,
                                      size_dd=float(size_dd))
    except StudioError as err:
        gr.Warning(_refused(err, "stamp"))
        return (gr.skip(),) * 8
    history = [*history, current][-MAX_STAMP_UNDO:]
    added = int((stamped != current).sum())
    return (editor.editor_value(stamped), stamped, history,
            f"Stamped a {kind.replace('_', ' ')} at ({x}, {y}): {added} px.",
            *_rendered(stamped, seed=seed, style=style, view=view, opacity=opacity, source=source, mode=mode))


@_guarded
def undo_stamp(history: list[np.ndarray], seed: float, style: str | None, view: str, opacity: float,
               source: dict | None = None, mode: str = MODE_SYNTH):
    """Take back the last stamp (and strokes made after it) → (editor value, base map, history, message,
    view, statistics, map, render)."""
    if not history:
        return (gr.skip(),) * 3 + ("No stamp to undo.",) + (gr.skip(),) * 4
    previous = history[-1]
    return (editor.editor_value(previous), previous, history[:-1], f"Stamp undone ({len(history) - 1} left).",
            *_rendered(previous, seed=seed, style=style, view=view, opacity=opacity, source=source, mode=mode))


def stamp_size(kind: str):
    """The default size of the chosen stamp, in disc diameters."""
    return editor.STAMP_SIZES_DD[kind] if kind in editor.STAMP_SIZES_DD else gr.skip()


# --- brushes: one per class -----------------------------------------------------------------------
# The class is picked beside the canvas (or by its number key), and the canvas's brush is then that class's
# colour alone at that class's size: the editor's own swatches cannot pick a class behind our back, and a
# size set for a class is remembered (per tab, in a gr.State) for when the user comes back to it.


def class_choices() -> list[tuple[str, str]]:
    """The class picker's choices, (label showing the key, class name), in taxonomy order."""
    return [(f"{key} {name}", name) for key, name in editor.class_keys().items()]


def brush_for(name: str, size_px: int) -> gr.Brush:
    """The canvas's brush for class ``name``: its colour only, ``size_px`` map pixels in radius."""
    colour = editor.hex_color(labels.INDEX[name])
    return gr.Brush(colors=[colour], default_color=colour, color_mode="fixed", default_size=int(size_px))


def pick_class(name: str, sizes: dict[str, int]):
    """A class picked (its button or its number key): the brush takes its colour and its remembered size →
    (canvas update, size slider). Only the brush changes: the canvas keeps its strokes."""
    if name not in sizes:
        return gr.skip(), gr.skip()
    return gr.ImageEditor(brush=brush_for(name, sizes[name])), sizes[name]


def set_brush_size(name: str, size_px: float, sizes: dict[str, int]):
    """The size slider moved: the brush takes the size, remembered for the class → (canvas update, sizes)."""
    if name not in sizes or size_px is None:
        return gr.skip(), gr.skip()
    px = int(min(editor.MAX_BRUSH_PX, max(editor.MIN_BRUSH_PX, round(float(size_px)))))
    return gr.ImageEditor(brush=brush_for(name, px)), {**sizes, name: px}


# Full screen shows the paint area (classes, brush size, canvas, legend) alone; the editor grows to the
# screen's height so that small lesions are painted at several screen pixels per map pixel.
FULLSCREEN_CSS_JS = """() => {
  const style = document.createElement("style");
  style.textContent = `
    #paint-area:fullscreen { background: var(--body-background-fill); padding: 12px; overflow: auto; }
    #paint-area:fullscreen #canvas { height: calc(100vh - 240px) !important; flex-shrink: 0; }`;
  document.head.appendChild(style);
}"""
FULLSCREEN_TOGGLE_JS = """() => {
  const area = document.querySelector("#paint-area");
  if (document.fullscreenElement) document.exitFullscreen();
  else if (area && area.requestFullscreen) area.requestFullscreen();
}"""


BRUSH_WAIT_MS = 4000  # the longest the canvas waits for its brush to follow a class pick


def brush_guard_js() -> str:
    """Page-load JavaScript: from a class pick until the editor's brush has taken that class's colour (the
    editor styles its Color button with it), the canvas takes no strokes. The brush follows with the
    server's answer (1–2 s on a loaded 2-core machine), and a stroke started before is painted in the
    previous class's colour. At most ``BRUSH_WAIT_MS``: a brush that never follows cannot lock the canvas."""
    colours = json.dumps({name: editor.css_rgb(name) for name in editor.class_keys().values()})
    return f"""() => {{
  const colours = {colours};
  const style = document.createElement("style");
  style.textContent = "#canvas.brush-pending canvas {{ pointer-events: none; }} #canvas.brush-pending {{ cursor: progress; }}";
  document.head.appendChild(style);
  let picked = null, pickedAt = -Infinity;  // the pick's own value: the radio shows it a moment later
  const check = () => {{
    const canvas = document.querySelector("#canvas");
    if (!canvas) return;
    const brush = document.querySelector("#canvas button[aria-label=Color]")?.style.color;
    const waiting = !!picked && !!brush && brush !== colours[picked] && performance.now() - pickedAt < {BRUSH_WAIT_MS};
    canvas.classList.toggle("brush-pending", waiting);
  }};
  document.addEventListener("change", (event) => {{
    if (event.target.closest?.("#paint-class")) {{ picked = event.target.value; pickedAt = performance.now(); check(); }}
  }}, true);
  // At once when the editor restyles its Color button; the interval ends a wait that timed out.
  new MutationObserver(check).observe(document.querySelector("#canvas") || document.body,
                                      {{subtree: true, attributes: true, attributeFilter: ["style"]}});
  setInterval(check, 250);
}}"""


def class_keys_js() -> str:
    """Page-load JavaScript: a number key picks its class (``editor.class_keys``) by clicking that class's button in
    ``#paint-class``, unless the user is typing in a text field or Paint is not shown."""
    keys = json.dumps(list(editor.class_keys()))
    return f"""() => {{
  const keys = {keys};  // the n-th key picks the n-th choice of #paint-class (both from editor.class_keys)
  document.addEventListener("keydown", (event) => {{
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const t = event.target;
    const typing = t.isContentEditable || ["TEXTAREA", "SELECT"].includes(t.tagName) ||
      (t.tagName === "INPUT" && !["radio", "checkbox", "range", "button"].includes(t.type));
    const choice = document.querySelectorAll("#paint-class input[type=radio]")[keys.indexOf(event.key)];
    if (typing || !choice || choice.offsetParent === null) return;  // offsetParent: null while Paint is hidden
    event.preventDefault();
    choice.click();
  }});
}}"""


@_guarded
def paint_changed(value: dict | None, base: np.ndarray | None, seed: float, style: str | None, view: str,
                  opacity: float, source: dict | None = None, mode: str = MODE_SYNTH,
                  current: np.ndarray | None = None):
    """Every finished stroke: the painted map → view, statistics, current map and its render.

    ``current``: the map last rendered. A map equal to it changes nothing and is not rendered again: the
    editor reports every new value a handler gives it (a stamp, a start) as the user's input a second or
    more later, and a second render of that echo would hold up the next click (and a new picture arriving
    under the pointer can swallow a click on it)."""
    base = healthy_map() if base is None else base
    try:
        index_map = editor.painted_map(value, base=base)
    except StudioError as err:
        gr.Warning(_refused(err, "paint"))
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    if current is not None and np.array_equal(index_map, current):
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    return _rendered(index_map, seed=seed, style=style, view=view, opacity=opacity, source=source, mode=mode)


def _photo_of(index_map: np.ndarray, *, seed: float, style: str | None, source: dict | None, mode: str) -> np.ndarray:
    """The picture of a map: in edit mode the extracted photo with the changes since carried in, else a render."""
    if mode == MODE_EDIT:
        if source is None:
            raise StudioError("edit mode needs a photo: start from \"Extract from photo\" first")
        if source["map"].shape == index_map.shape:
            return STUDIO.edit_photo(source["photo"], source["map"], index_map, seed=_as_int(seed))
        raise StudioError("this map was not extracted from the photo being edited; extract it again")
    return STUDIO.render(index_map, seed=_as_int(seed), style=_style(style))


def _rendered(index_map: np.ndarray, *, seed: float, style: str | None, view: str, opacity: float,
              source: dict | None = None, mode: str = MODE_SYNTH):
    """A map → (view, statistics, the map, its render); a refused render warns and changes nothing."""
    try:
        photo = _photo_of(index_map, seed=seed, style=style, source=source, mode=mode)
    except StudioError as err:
        gr.Warning(_refused(err, "paint"))
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    stats = stats_markdown(index_map, grade_probs=STUDIO.classify_grade(index_map))
    return _show(index_map, photo, view=view, opacity=opacity), stats, index_map, photo


@_guarded
def canvas_loaded(value: dict | None, base: np.ndarray | None, current: np.ndarray | None, seed: float,
                  style: str | None, view: str, opacity: float, source: dict | None = None, mode: str = MODE_SYNTH):
    """The canvas replaced by a handler (start, gallery, stamp): render it, unless it shows the map rendered
    already (a stamp renders at once, without waiting for the canvas's round trip). The editor fires this
    for the user's strokes too; those are ``paint_changed``'s (rendering them here as well rendered every
    stroke twice: the soak found one unserved render per stroke)."""
    if editor.has_strokes(value):
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    return paint_changed(value, base, seed, style, view, opacity, source, mode, current)


@_guarded
def rerender(index_map: np.ndarray | None, seed: float, style: str | None, view: str, opacity: float,
             source: dict | None = None, mode: str = MODE_SYNTH):
    """A new seed, style or render mode: render the current map again → (view, render)."""
    if index_map is None:
        return gr.skip(), gr.skip()
    try:
        photo = _photo_of(index_map, seed=seed, style=style, source=source, mode=mode)
    except StudioError as err:
        gr.Warning(_refused(err, "rerender"))
        return gr.skip(), gr.skip()
    return _show(index_map, photo, view=view, opacity=opacity), photo


@_guarded
def reshow(index_map: np.ndarray | None, photo: np.ndarray | None, view: str, opacity: float):
    """Another view or opacity: the render at hand, shown anew (no new render)."""
    if index_map is None or photo is None:
        return gr.skip()
    return _show(index_map, photo, view=view, opacity=opacity)


@_guarded
def downloads(index_map: np.ndarray | None, photo: np.ndarray | None, mode: str = MODE_SYNTH):
    """The current map (palette PNG) and the render the user sees (in edit mode: the edited photo)."""
    if index_map is None or photo is None:
        gr.Warning("paint or load a map first")
        return gr.skip()
    folder = _fresh_folder("download-")
    name = "edited_photo.png" if mode == MODE_EDIT else "render.png"
    return [str(write_download(folder / "label.png", index_map=index_map)),
            str(write_download(folder / name, photo=photo))]


# --- lesion suggestions ----------------------------------------------------------------------------


def suggestion_view(source: dict | None, threshold: float):
    """The U-Net's suggestions at ``threshold`` outlined on the photo → (image update, message). No network
    runs: the probabilities were computed once, at extraction."""
    from fundus_studio.suggestions import outline

    if source is None or source.get("suggestions") is None:
        note = "" if source is None else "No lesion suggestions (no `unet` checkpoint, or discarded)."
        return gr.Image(value=None, visible=False), note
    suggestions = source["suggestions"]
    masks = suggestions.masks(float(threshold))
    spots = suggestions.spots(float(threshold))
    found = ", ".join(f"{n} {labels.NAMES[k]}" for k, n in spots.items() if n) or "none"
    text = f"Suggested at p ≥ {float(threshold):.2f}: {found}. {SUGGEST_NOTE}"
    return gr.Image(value=_png(outline(source["photo"], masks), "suggestions"), visible=True), text


@_guarded
def accept_suggestions(source: dict | None, threshold: float, current: np.ndarray | None, seed: float,
                       style: str | None, view: str, opacity: float, mode: str):
    """Paint the suggestions at ``threshold`` into the map (and into the photo's own map: the photo shows them
    already, so editing keeps them as they are) → (editor value, base map, photo to edit, suggestions image,
    message, view, statistics, map, render)."""
    from fundus_studio.suggestions import accept

    if source is None or source.get("suggestions") is None or current is None:
        return (*(gr.skip(),) * 4, "No suggestions to accept.", *(gr.skip(),) * 4)
    masks = source["suggestions"].masks(float(threshold))
    painted = accept(current, masks)
    source = {**source, "map": accept(source["map"], masks), "suggestions": None}
    image, _ = suggestion_view(source, threshold)
    return (editor.editor_value(painted), painted, source, image,
            f"Accepted {int((painted != current).sum())} px of suggested lesions into the map.",
            *_rendered(painted, seed=seed, style=style, view=view, opacity=opacity, source=source, mode=mode))


def discard_suggestions(source: dict | None):
    """Drop the suggestions → (photo to edit, suggestions image, message)."""
    if source is None:
        return gr.skip(), gr.skip(), "No suggestions to discard."
    source = {**source, "suggestions": None}
    return source, gr.Image(value=None, visible=False), "Suggestions discarded; the map is as extracted."


@_guarded
def keep_painting(index_map: np.ndarray | None, photo: np.ndarray | None, base_source: str, grade: int, seed: float,
                  items: list[GalleryItem]):
    """Add the current painting, with the render the user sees, to this user's curated set."""
    if index_map is None or photo is None:
        gr.Warning("paint or load a map first")
        return gr.skip(), gr.skip()
    provenance = "painted" if base_source == START_BLANK else "edited"
    item = GalleryItem(label=index_map, image=photo, grade=int(grade), seed=_as_int(seed), provenance=provenance,
                       kept=True)
    items = [*items, item][-MAX_GALLERY:]
    return items, f"Added to the curated set ({sum(i.kept is True for i in items)} kept)."


# --- Gallery ------------------------------------------------------------------------------------


@_guarded
def sample_gallery(grades: list[str], per_grade: float, seed: float, items: list[GalleryItem],
                   generator: str | None = None, progress: gr.Progress = gr.Progress(track_tqdm=True)):
    per_grade = max(1, min(MAX_PER_GRADE, _as_int(per_grade, 1)))
    try:
        new = STUDIO.sample_pairs(grades=[int(g) for g in grades], per_grade=per_grade, seed=_as_int(seed),
                                  size=CANVAS_SIZE, generator=_generator(generator))
    except StudioError as err:
        gr.Warning(_refused(err, "sample_gallery"))
        return gr.skip()
    return [*items, *(GalleryItem(label=m, image=p, grade=g, seed=s, provenance="sampled") for m, p, g, s in new)][
        -MAX_GALLERY:]


@_guarded
def gallery_view(items: list[GalleryItem], grade_filter: str):
    shown = [i for i, it in enumerate(items) if grade_filter == "all" or str(it.grade) == grade_filter]
    pics = [(_png(np.concatenate([labels.to_color(items[i].label), items[i].image], axis=1), "sample"),
             f"#{i} grade {items[i].grade} · seed {items[i].seed} · {items[i].status}") for i in shown]
    return pics, shown


def gallery_select(shown: list[int], evt: gr.SelectData):
    return shown[evt.index] if evt is not None and evt.index is not None and evt.index < len(shown) else None


def set_kept(items: list[GalleryItem], selected: int | None, kept: bool):
    if selected is None or selected >= len(items):
        gr.Warning("select a sample in the gallery first")
        return gr.skip()
    items = list(items)
    items[selected] = items[selected].with_kept(kept)
    return items


def open_in_paint(items: list[GalleryItem], selected: int | None):
    if selected is None or selected >= len(items):
        gr.Warning("select a sample in the gallery first")
        return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
    base = items[selected].label
    return editor.editor_value(base), base, gr.Tabs(selected="paint"), None, MODE_SYNTH


# --- Export -------------------------------------------------------------------------------------


@_guarded
def export(what: str, per_grade: float, seed: float, items: list[GalleryItem], generator: str | None = None,
           layout: str = "Studio dataset", progress: gr.Progress = gr.Progress(track_tqdm=True)):
    try:
        if layout not in EXPORT_FORMATS:
            raise StudioError(f"unknown export format {layout!r}; choose one of {', '.join(EXPORT_FORMATS)}")
        if what == "Curated set":
            chosen = [it for it in items if it.kept is True]
            if not chosen:
                raise StudioError("nothing is kept yet: keep samples in the Gallery or add paintings first")
        else:
            pairs = STUDIO.sample_pairs(grades=list(range(labels.NUM_GRADES)),
                                        per_grade=max(1, min(MAX_PER_GRADE, _as_int(per_grade, 1))),
                                        seed=_as_int(seed), size=CANVAS_SIZE, generator=_generator(generator))
            chosen = [GalleryItem(label=m, image=p, grade=g, seed=s, provenance="sampled") for m, p, g, s in pairs]
        # The dataset folder is only the zip's source: it goes, the zip stays where Gradio will delete it.
        with tempfile.TemporaryDirectory(prefix="fundus-export-") as work:
            made = export_items(chosen, out_dir=Path(work), size=CANVAS_SIZE,
                                checkpoint_hashes=STUDIO.checkpoint_hashes(), zip_it=EXPORT_FORMATS[layout] is None)
            if EXPORT_FORMATS[layout] is not None:  # the studio dataset converted by the CLI's exporter
                converted = Path(work) / EXPORT_ZIP_NAMES[layout]
                export_dataset(made, converted, format=EXPORT_FORMATS[layout], progress=False)
                made = zip_folder(converted)
            path = Path(shutil.move(made, _fresh_folder("export-") / made.name))
    except StudioError as err:
        message = _refused(err, "export")
        gr.Warning(message)
        return gr.skip(), f"⚠️ {message}"
    as_what = f" ({layout})" if EXPORT_FORMATS[layout] is not None else ""
    return str(path), f"Exported {len(chosen)} samples{as_what}."


# --- API for gradio_client ----------------------------------------------------------------------


# Bad input comes back as a gradio error with its reason (the client raises it), logged in one line.


@_guarded
def api_render(label_map: str, seed: float, style: str | None = None) -> str:
    """/render(label_map: image file, seed: int, style: optional fundus photo file) -> image file."""
    if not label_map:
        raise StudioError("send a label map file")
    index_map = editor.uploaded_map(read_label_map(label_map, name=_upload_name(label_map)), size=CANVAS_SIZE,
                                    nearest=False)
    return _png(STUDIO.render(index_map, seed=_as_int(seed), style=_style(style)), "render")


@_guarded
def api_sample(grade: float, count: float, seed: float, generator: str | None = None) -> list[tuple[str, str]]:
    """/sample(grade, count, seed, generator: optional name) -> gallery of label maps (palette colours)."""
    count = max(1, min(MAX_PER_GRADE, _as_int(count, 1)))
    maps = STUDIO.sample_labels(grade=_as_int(grade), count=count, seed=_as_int(seed), size=CANVAS_SIZE,
                                generator=_generator(generator))
    return [(_png(labels.to_color(m), "label"), f"grade {_as_int(grade)} #{i}") for i, m in enumerate(maps)]


@_guarded
def api_extract(photo: str) -> str:
    """/extract(photo: image file) -> label map file (taxonomy colours)."""
    if not photo:
        raise StudioError("send a photo file")
    return _png(labels.to_color(STUDIO.extract(read_image(photo, name=_upload_name(photo)), size=CANVAS_SIZE)),
                "label")


@_guarded
def api_photo_map(photo: str) -> str:
    """/photo_map(photo: image file) -> the label map to edit the photo through (field of view, disc, vessels;
    the U-Net's lesions are left out: they are suggestions, see the Paint tab), taxonomy colours."""
    if not photo:
        raise StudioError("send a photo file")
    extracted = STUDIO.extract_photo(read_image(photo, name=_upload_name(photo)), size=CANVAS_SIZE)
    return _png(labels.to_color(extracted.label_map), "label")


@_guarded
def api_edit_photo(photo: str, label_map: str, seed: float) -> str:
    """/edit_photo(photo: image file, label_map: the /photo_map map with lesions painted or erased, seed) ->
    the photo squared to the canvas, kept where the map is unchanged, the changes rendered in its style."""
    if not photo or not label_map:
        raise StudioError("send a photo file and its edited label map")
    extracted = STUDIO.extract_photo(read_image(photo, name=_upload_name(photo)), size=CANVAS_SIZE)
    edited = editor.uploaded_map(read_label_map(label_map, name=_upload_name(label_map)), size=CANVAS_SIZE,
                                 nearest=False)
    return _png(STUDIO.edit_photo(extracted.photo, extracted.label_map, edited, seed=_as_int(seed)), "edited")


# --- layout -------------------------------------------------------------------------------------


def _delete_cache(age: int) -> tuple[int, int]:
    """Gradio's (how often, how old) for deleting its temporary files: only at shutdown (everything then);
    while the app runs, ``tempfiles.start_sweeper`` deletes them (Gradio's periodic task dies at the first
    upload that races it)."""
    return tempfiles.NEVER_S, age


def _sweep_every(age: int) -> int:
    """How often the temporary files are swept: a few times per age."""
    return max(10, age // 4)


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="Fundus Studio", delete_cache=_delete_cache(CACHE_AGE)) as demo:
        gr.Markdown("# Fundus Studio\nPaint a retinal label map and watch it render; sample, curate and export.")
        gr.Markdown(PHANTOM_NOTE)
        items = gr.State([])  # this user's gallery and curated set
        with gr.Tabs() as tabs:
            with gr.Tab("Paint", id="paint"):
                base = gr.State(None)
                edit_src = gr.State(None)  # after "Extract from photo": {photo, its map, lesion suggestions}
                current = gr.State(None)  # the painted map ...
                photo_now = gr.State(None)  # ... and its render, as shown
                stamps = gr.State([])  # maps before each stamp, for "Undo stamp"
                first_sizes = editor.default_brush_sizes(canvas_size=CANVAS_SIZE)
                brush_sizes = gr.State(first_sizes)  # class name → brush radius (map px), per tab
                with gr.Row():
                    # The canvas gets the wider column and a tall editor: at a 1400-px window the 512² map is
                    # shown near 1:1, so a microaneurysm (a few px) stays visible and paintable.
                    with gr.Column(scale=3):
                        with gr.Column(elem_id="paint-area"):  # what "Full screen" enlarges
                            with gr.Row():
                                paint_class = gr.Radio(class_choices(), value=FIRST_CLASS, label="Paint class",
                                                       info="or press its number key", elem_id="paint-class", scale=4)
                                brush_px = gr.Slider(editor.MIN_BRUSH_PX, editor.MAX_BRUSH_PX, step=1,
                                                     value=first_sizes[FIRST_CLASS],
                                                     label="Brush size (radius, map px)", info="remembered per class",
                                                     elem_id="brush-size", scale=1, min_width=180)
                            canvas = gr.ImageEditor(
                                value=editor.editor_value(editor.blank_template(size=CANVAS_SIZE)),
                                type="numpy", image_mode="RGBA", canvas_size=(CANVAS_SIZE, CANVAS_SIZE),
                                fixed_canvas=True, sources=(), transforms=(), layers=False, format="png",
                                brush=brush_for(FIRST_CLASS, first_sizes[FIRST_CLASS]),
                                eraser=gr.Eraser(default_size=12), label="Label map", elem_id="canvas",
                                height=CANVAS_HEIGHT,
                            )
                            canvas.blob_storage = _BoundedDict(MAX_EDITOR_BLOBS)
                            with gr.Row():
                                gr.HTML(legend_html())
                                full_btn = gr.Button("⛶ Full screen (Esc leaves)", size="sm", elem_id="fullscreen",
                                                     scale=0, min_width=200)
                        with gr.Accordion("Start from", open=True):
                            source = gr.Radio([START_SAMPLE, START_PHANTOM, START_BLANK, START_UPLOAD, START_PHOTO],
                                              value=START_SAMPLE, label="Start from")
                            with gr.Row():
                                start_grade = gr.Slider(0, labels.NUM_GRADES - 1, value=0, step=1, label="Grade")
                                start_seed = gr.Number(HEALTHY_SEED, precision=0, label="Sample seed")
                                p_generator = generator_dropdown()
                            with gr.Row():
                                upload = upload_file(label="Label map (PNG/JPEG)", file_types=["image"])
                                photo = upload_file(label="Fundus photo", file_types=["image"])
                            with gr.Row():
                                nearest = gr.Checkbox(False, label="Snap unknown colours to the nearest class")
                                example_btn = gr.Button("Example photo (skimage.data.retina, CC0)", size="sm",
                                                        elem_id="example-photo")
                            load_btn = gr.Button("Load", elem_id="load")
                            start_msg = gr.Markdown(elem_id="start-msg")
                        with gr.Accordion("Lesion suggestions (photo extraction)", open=True):
                            suggest_img = gr.Image(label="Suggested lesions, outlined on the photo", format="png",
                                                   interactive=False, visible=False, elem_id="suggestions")
                            suggest_threshold = gr.Slider(0.05, 0.95, value=SUGGEST_THRESHOLD, step=0.05,
                                                          label="Confidence threshold", elem_id="suggest-threshold")
                            suggest_msg = gr.Markdown(elem_id="suggest-msg")
                            with gr.Row():
                                accept_btn = gr.Button("Accept suggestions", size="sm", elem_id="accept-suggestions")
                                discard_btn = gr.Button("Discard suggestions", size="sm", elem_id="discard-suggestions")
                    with gr.Column(scale=2):
                        shown = gr.Image(label="Label map | render (with a stamp chosen, click to place it)",
                                         format="png", interactive=False, elem_id="render")
                        with gr.Row():
                            stamp_kind = gr.Dropdown([STAMP_OFF, *LESION_KINDS], value=STAMP_OFF, label="Lesion stamp",
                                                     elem_id="stamp-kind",
                                                     info="pick a lesion, then click the map or the render")
                            stamp_dd = gr.Number(0.25, label="Stamp size (disc diameters)", minimum=0.01, maximum=3,
                                                 step=0.01, elem_id="stamp-size")
                            undo_btn = gr.Button("Undo stamp", size="sm", elem_id="undo-stamp")
                        stamp_msg = gr.Markdown(elem_id="stamp-msg")
                        render_mode = gr.Radio([MODE_SYNTH, MODE_EDIT], value=MODE_SYNTH, label="Render",
                                               elem_id="render-mode")
                        gr.Markdown(EDIT_HINT)
                        with gr.Row():
                            view = gr.Radio([VIEW_SIDE, VIEW_OVERLAY], value=VIEW_SIDE, label="View")
                            opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Overlay opacity")
                        with gr.Row():
                            seed = gr.Number(0, precision=0, label="Render seed")
                            style = upload_file(label="Style photo (optional)", file_types=["image"])
                        gr.Markdown(STYLE_HINT)
                        stats = gr.Markdown(elem_id="stats")
                        with gr.Row():
                            dl_btn = gr.Button("Prepare downloads")
                            keep_btn = gr.Button("Add to curated set")
                        files = gr.File(label="Downloads", file_count="multiple", interactive=False)
                        keep_msg = gr.Markdown()
            with gr.Tab("Gallery", id="gallery"):
                with gr.Row():
                    g_grades = gr.CheckboxGroup([str(g) for g in range(labels.NUM_GRADES)],
                                                value=[str(g) for g in range(labels.NUM_GRADES)], label="Grades")
                    g_count = gr.Slider(1, MAX_PER_GRADE, value=2, step=1, label="Samples per grade")
                    g_seed = gr.Number(0, precision=0, label="Seed")
                    g_generator = generator_dropdown()
                    g_btn = gr.Button("Sample", variant="primary")
                g_filter = gr.Radio(["all", *(str(g) for g in range(labels.NUM_GRADES))], value="all",
                                    label="Show grade")
                g_shown = gr.State([])
                g_selected = gr.State(None)
                gallery = gr.Gallery(label="Label map | render", columns=3, format="png", allow_preview=False,
                                     object_fit="contain", height="auto")
                with gr.Row():
                    keep = gr.Button("Keep")
                    discard = gr.Button("Discard")
                    to_paint = gr.Button("Open in Paint")
            with gr.Tab("Export", id="export"):
                e_what = gr.Radio(["Curated set", "Generate N per grade now"], value="Curated set", label="Export")
                with gr.Row():
                    e_count = gr.Slider(1, MAX_PER_GRADE, value=4, step=1, label="N per grade")
                    e_seed = gr.Number(0, precision=0, label="Seed")
                    e_generator = generator_dropdown()
                e_layout = gr.Radio(list(EXPORT_FORMATS), value="Studio dataset", label="Format",
                                    info="nnU-Net v2: DatasetNNN_Name with dataset.json; IDRiD: its folders and "
                                         "grades CSV (fundus-studio prepare idrid reads it back)")
                e_btn = gr.Button("Export zip", variant="primary")
                e_file = gr.File(label="Export (zip)", interactive=False)
                e_msg = gr.Markdown()
            with gr.Tab("Models", id="models"):
                gr.Markdown(PHANTOM_NOTE)
                models_md = gr.Markdown(STUDIO.describe())

        # Paint
        started = [canvas, base, start_msg, edit_src, render_mode, suggest_img, suggest_msg]
        load_btn.click(start_map, [source, start_grade, start_seed, upload, photo, nearest, p_generator],
                       started, api_name="start")
        example_btn.click(lambda: (example_photo(), START_PHOTO), None, [photo, source], api_visibility="private").then(
            start_map, [source, start_grade, start_seed, upload, photo, nearest, p_generator], started,
            api_visibility="private")
        rendered = [shown, stats, current, photo_now]
        editing = [edit_src, render_mode]  # every render reads them: in edit mode the photo is edited, not drawn
        shown.select(stamp, [current, base, stamp_kind, stamp_dd, stamps, seed, style, view, opacity, *editing],
                     [canvas, base, stamps, stamp_msg, *rendered], api_visibility="private")
        stamp_kind.change(stamp_size, stamp_kind, stamp_dd, api_visibility="private")
        # The brush follows a class change only with the server's answer: past the queue (not behind renders),
        # and without a progress veil, which would cover the canvas and swallow the next stroke.
        paint_class.change(pick_class, [paint_class, brush_sizes], [canvas, brush_px], api_visibility="private",
                           show_progress="hidden", queue=False)
        # `.input`: only the user's own moves are remembered, not the slider set by a class change.
        brush_px.input(set_brush_size, [paint_class, brush_px, brush_sizes], [canvas, brush_sizes],
                       api_visibility="private", trigger_mode="always_last", show_progress="hidden", queue=False)
        demo.load(None, None, None, js=class_keys_js())  # number keys pick classes
        demo.load(None, None, None, js=brush_guard_js())  # no strokes until the brush has followed a pick
        demo.load(None, None, None, js=FULLSCREEN_CSS_JS)
        full_btn.click(None, None, None, js=FULLSCREEN_TOGGLE_JS)
        undo_btn.click(undo_stamp, [stamps, seed, style, view, opacity, *editing],
                       [canvas, base, stamps, stamp_msg, *rendered], api_visibility="private")
        suggest_threshold.change(suggestion_view, [edit_src, suggest_threshold], [suggest_img, suggest_msg],
                                 api_visibility="private")
        accept_btn.click(accept_suggestions, [edit_src, suggest_threshold, current, seed, style, view, opacity,
                                              render_mode],
                         [canvas, base, edit_src, suggest_img, suggest_msg, *rendered], api_visibility="private")
        discard_btn.click(discard_suggestions, edit_src, [edit_src, suggest_img, suggest_msg], api_visibility="private")
        # `.input`, not `.change`: in Gradio 6.31 `.change` skipped the first stroke after page load.
        # Only the latest canvas state is rendered when strokes arrive faster than renders.
        canvas.input(paint_changed, [canvas, base, seed, style, view, opacity, *editing, current],
                     [shown, stats, current, photo_now], api_name="paint", trigger_mode="always_last")
        # A loaded map (start, gallery) replaces the canvas value programmatically: render it too.
        canvas.change(canvas_loaded, [canvas, base, current, seed, style, view, opacity, *editing],
                      [shown, stats, current, photo_now], api_visibility="private", trigger_mode="always_last")
        # Paint opens on a healthy retina; setting the canvas renders it (canvas.change above).
        demo.load(open_healthy, None, [canvas, base, start_msg], api_visibility="private")
        demo.load(lambda: STUDIO.describe(), None, models_md, api_visibility="private")  # --checkpoints may differ
        demo.load(lambda: tuple(generator_dropdown() for _ in range(3)), None, [p_generator, g_generator, e_generator],
                  api_visibility="private")
        for control in (seed, style):
            control.change(rerender, [current, seed, style, view, opacity, *editing], [shown, photo_now],
                           api_visibility="private")
        # `.input`: a start from a photo sets the mode itself, and the loaded map renders through the canvas.
        render_mode.input(rerender, [current, seed, style, view, opacity, *editing], [shown, photo_now],
                          api_visibility="private")
        for control in (view, opacity):
            control.change(reshow, [current, photo_now, view, opacity], shown, api_visibility="private")
        dl_btn.click(downloads, [current, photo_now, render_mode], files, api_visibility="private")
        keep_btn.click(keep_painting, [current, photo_now, source, start_grade, seed, items], [items, keep_msg],
                       api_visibility="private")
        # Gallery
        g_btn.click(sample_gallery, [g_grades, g_count, g_seed, items, g_generator], items, api_visibility="private").then(
            gallery_view, [items, g_filter], [gallery, g_shown])
        g_filter.change(gallery_view, [items, g_filter], [gallery, g_shown], api_visibility="private")
        gallery.select(gallery_select, g_shown, g_selected, api_visibility="private")
        keep.click(lambda it, s: set_kept(it, s, True), [items, g_selected], items, api_visibility="private").then(
            gallery_view, [items, g_filter], [gallery, g_shown])
        discard.click(lambda it, s: set_kept(it, s, False), [items, g_selected], items,
                      api_visibility="private").then(gallery_view, [items, g_filter], [gallery, g_shown])
        to_paint.click(open_in_paint, [items, g_selected], [canvas, base, tabs, edit_src, render_mode],
                       api_visibility="private")
        # Export
        e_btn.click(export, [e_what, e_count, e_seed, items, e_generator, e_layout], [e_file, e_msg], api_name="export")

        # Plain endpoints for gradio_client (file in, file out).
        with gr.Row(visible=False):
            # gr.File, not gr.Image: the file arrives as uploaded (Image re-encodes it into a shared cache
            # path, and concurrent uploads of the same map raced on that file).
            a_map = upload_file()
            a_seed = gr.Number(0, precision=0)
            a_out = gr.Image(format="png")
            a_grade = gr.Number(0, precision=0)
            a_count = gr.Number(1, precision=0)
            a_gallery = gr.Gallery(format="png")
            a_style = upload_file()
            a_generator = gr.Textbox("")
            a_btn = gr.Button()
        a_btn.click(api_render, [a_map, a_seed, a_style], a_out, api_name="render")
        a_btn.click(api_sample, [a_grade, a_count, a_seed, a_generator], a_gallery, api_name="sample")
        a_btn.click(api_extract, [a_map], a_out, api_name="extract")
        a_btn.click(api_photo_map, [a_map], a_out, api_name="photo_map")
        a_btn.click(api_edit_photo, [a_style, a_map, a_seed], a_out, api_name="edit_photo")
    share_compute_slots(demo)
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=MAX_QUEUE)
    return demo


# Handlers that run a model (render, sample, extract, segment): they share CONCURRENCY slots in all,
# where Gradio gives each event its own. With a slot per event up to 8 model calls ran at once under
# the soak's mix, for no more throughput on 2 cores, and the server's memory peaked with them (issue 14).
COMPUTE = "compute"
COMPUTE_HANDLERS = (start_map, paint_changed, canvas_loaded, stamp, undo_stamp, accept_suggestions, rerender,
                    open_healthy, sample_gallery, export, api_render, api_sample, api_extract, api_photo_map,
                    api_edit_photo)


def share_compute_slots(blocks: gr.Blocks) -> int:
    """Put every model-running event of ``blocks`` in one concurrency group; how many were."""
    shared = 0
    for fn in blocks.fns.values():
        if fn.fn in COMPUTE_HANDLERS:
            fn.concurrency_id, fn.concurrency_limit = COMPUTE, CONCURRENCY
            shared += 1
    return shared


demo = build_demo()


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Start the Fundus Studio web app.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--checkpoints", type=Path, default=CHECKPOINTS, help="folder of model checkpoints")
    p.add_argument("--auth", default=None, help="USER:PASS to require a login")
    p.add_argument("--size", type=int, choices=(256, 512), default=CANVAS_SIZE,
                   help="side of the canvas and the renders in px (default 512)")
    p.add_argument("--cache-age", type=int, default=CACHE_AGE,
                   help=f"seconds after which renders, downloads and uploads are deleted (default {CACHE_AGE})")
    return p.parse_args()


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """``USER:PASS`` → (user, password); None without --auth."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth must be USER:PASS")
    return user, password


def exposure_warning(host: str, auth: tuple[str, str] | None) -> str | None:
    """The warning for a server reachable from other machines without a login; None when there is none."""
    if auth is not None or host in LOCAL_HOSTS:
        return None
    return (f"warning: listening on {host} without --auth: anyone who can reach this machine can use the studio, "
            "its models and its files; add --auth USER:PASS")


def main() -> None:
    global demo, CANVAS_SIZE
    args = parse_args()
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")  # others: warnings and up
    logging.getLogger("fundus_studio").setLevel(logging.INFO)  # ours: one line per refused request too
    tune_malloc()  # renders at 512 spend much of their time faulting in fresh pages otherwise
    start_memory_governor()  # free heap memory beyond the budget goes back to the kernel (RSS levels off)
    if args.checkpoints != CHECKPOINTS:
        STUDIO.reload(args.checkpoints)
    if args.size != CANVAS_SIZE:
        CANVAS_SIZE = args.size
        demo = build_demo()
    demo.delete_cache = _delete_cache(args.cache_age)  # read at launch
    tempfiles.start_sweeper(demo, every_s=_sweep_every(args.cache_age), age_s=args.cache_age, folders=(OUTPUT_DIR,))
    auth = parse_auth(args.auth)
    if (warning := exposure_warning(args.host, auth)) is not None:
        print(warning, file=sys.stderr)
    demo.launch(server_name=args.host, server_port=args.port, auth=auth, max_file_size=MAX_UPLOAD,
                run_history=False, enable_monitoring=False, footer_links=["api", "settings"])


if __name__ == "__main__":
    main()
