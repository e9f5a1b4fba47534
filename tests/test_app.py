"""The studio app: handlers unit-tested, then the real server driven through gradio_client."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fundus_studio import labels
from fundus_studio.dataset import StudioDataset
from fundus_studio.editor import blank_template
from fundus_studio.imageio import save_label_png, save_png

from conftest import APP_SIZE as SIZE


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def _pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _painted_map() -> np.ndarray:
    m = blank_template(size=SIZE)
    m[40:48, 30:90] = labels.HAEMORRHAGE
    m[70:72, 70:72] = labels.MICROANEURYSM
    return m


# --- handlers -----------------------------------------------------------------------------------


def test_paint_handler_renders_and_counts(app) -> None:
    base = blank_template(size=SIZE)
    layer = np.zeros((SIZE, SIZE, 4), np.uint8)
    layer[40:48, 30:90] = (*labels.CLASSES[labels.HAEMORRHAGE].color, 255)
    shown_file, stats, current, photo = app.paint_changed({"background": None, "layers": [layer], "composite": None},
                                                   base, 0, None, app.VIEW_SIDE, 0.5)
    shown = _pixels(shown_file)
    assert shown.shape == (SIZE, 2 * SIZE, 3)
    assert np.array_equal(shown[:, SIZE:], photo)  # the render kept in state is the one shown
    items, _ = app.keep_painting(current, photo, app.START_BLANK, 2, 0, [])
    assert np.array_equal(items[0].image, photo) and items[0].provenance == "painted"
    label_file, render_file = app.downloads(current, photo)
    assert np.array_equal(np.asarray(Image.open(render_file)), photo)
    assert np.array_equal(_pixels(app.reshow(current, photo, app.VIEW_SIDE, 0.5)), shown)
    assert (current == labels.HAEMORRHAGE).sum() == 8 * 60
    assert "| haemorrhage | 480 |" in stats and "Grade classifier:** grade" in stats
    overlay_file, _, _, _ = app.paint_changed({"layers": [layer]}, base, 0, None, app.VIEW_OVERLAY, 1.0)
    overlay = _pixels(overlay_file)
    assert overlay.shape == (SIZE, SIZE, 3)
    assert (overlay[44, 60] == labels.CLASSES[labels.HAEMORRHAGE].color).all()


def test_start_from_upload_with_unknown_colours_warns_and_keeps_the_session(app, tmp_path) -> None:
    col = labels.to_color(_painted_map())
    col[10:40, 10:40] = (90, 200, 120)
    path = save_png(tmp_path / "odd.png", col)
    value, base, msg, *_ = app.start_map(app.START_UPLOAD, 0, 0, str(path), None, False)
    assert "outside the label palette" in msg
    value, base, msg, *_ = app.start_map(app.START_UPLOAD, 0, 0, str(path), None, True)  # nearest-colour mapping
    assert base.shape == (SIZE, SIZE) and msg.startswith("Started")


def test_start_from_non_image_warns(app, tmp_path) -> None:
    (tmp_path / "notes.png").write_text("hello")
    _, _, msg, *_ = app.start_map(app.START_UPLOAD, 0, 0, str(tmp_path / "notes.png"), None, False)
    assert "not an image file" in msg
    _, _, msg, *_ = app.start_map(app.START_PHOTO, 0, 0, None, None, False)
    assert "choose a photo" in msg


def test_start_from_photo_and_sample(app) -> None:
    value, base, *_ = app.start_map(app.START_SAMPLE, 4, 3, None, None, False)
    assert base.shape == (SIZE, SIZE) and value["background"].shape == (SIZE, SIZE, 4)
    _, acgan, *_ = app.start_map(app.START_SAMPLE, 4, 3, None, None, False, "acgan")
    assert np.array_equal(acgan, app.STUDIO.sample_labels(grade=4, count=1, seed=3, size=SIZE, generator="acgan")[0])
    _, _, msg, *_ = app.start_map(app.START_SAMPLE, 4, 3, None, None, False, "gan9000")
    assert "unknown generator 'gan9000'" in msg
    _, phantom, *_ = app.start_map(app.START_PHANTOM, 0, 5, None, None, False)
    assert (phantom == labels.OPTIC_DISC).any() and (phantom == labels.VESSEL).sum() > 0.02 * SIZE * SIZE
    assert not np.isin(phantom, labels.LESIONS).any()  # a healthy eye
    _, photo, msg, source, mode, _, _ = app.start_map(app.START_PHOTO, 0, 0, None, app.example_photo(), False)
    assert msg.startswith("Started") and photo[0, 0] == labels.OUTSIDE  # the bundled CC0 example photo ...
    assert (photo != labels.OUTSIDE).mean() > 0.5  # ... is a field of view
    assert not np.isin(photo, labels.LESIONS).any()  # the U-Net's finds are suggestions, not in the map
    assert mode == app.MODE_EDIT and np.array_equal(source["map"], photo) and source["photo"].shape == (SIZE, SIZE, 3)
    assert app.start_map(app.START_PHANTOM, 0, 5, None, None, False)[3:5] == (None, app.MODE_SYNTH)


# --- generators, the healthy start, stamps -----------------------------------------------------------


def test_generator_choices_are_the_present_checkpoints_default_first(app, monkeypatch) -> None:
    assert app.generator_choices() == ["flow", "acgan"]  # the tiny folder holds both; flow is the default
    flow = app.sample_gallery(["2"], 1, 0, [], "flow")
    acgan = app.sample_gallery(["2"], 1, 0, [], "acgan")
    assert not np.array_equal(flow[0].label, acgan[0].label)
    assert np.array_equal(app.sample_gallery(["2"], 1, 0, [])[0].label, flow[0].label)  # None: the default
    monkeypatch.setattr(app.STUDIO, "has", lambda name: name != "label_flow")
    assert app.generator_choices() == ["acgan"]


def test_paint_opens_on_a_healthy_sample_or_falls_back_to_the_blank_retina(app, monkeypatch) -> None:
    value, base, msg = app.open_healthy()
    expected = app.STUDIO.sample_labels(grade=0, count=1, seed=app.HEALTHY_SEED, size=SIZE, generator="flow")[0]
    assert np.array_equal(base, expected) and "grade-0 sample" in msg
    assert np.array_equal(app.healthy_map(), expected)  # cached, the same every time
    monkeypatch.setattr(app.STUDIO, "has", lambda name: False)
    _, base, msg = app.open_healthy()
    assert np.array_equal(base, blank_template(size=SIZE)) and "blank" in msg


def _click(x: int, y: int):
    import gradio as gr

    return gr.SelectData(None, {"index": [x, y], "value": None})


def test_a_stamp_lands_where_clicked_and_can_be_undone(app) -> None:
    import gradio as gr

    base = app.phantom_anatomy(1)
    stroke = np.zeros((SIZE, SIZE, 4), np.uint8)
    stroke[20:24, 60:70] = (*labels.CLASSES[labels.HARD_EXUDATE].color, 255)
    value = {"background": None, "layers": [stroke], "composite": None}
    _, _, painted, _ = app.paint_changed(value, base, 0, None, app.VIEW_SIDE, 0.5)  # a stroke, rendered
    show = (0, None, app.VIEW_SIDE, 0.5)
    # A click on the render half of the side-by-side view lands on the same place of the map.
    new_value, stamped, history, msg, shown, stats, current, photo = app.stamp(
        painted, base, "blot_haemorrhage", 0.5, [], *show, _click(SIZE + 90, 64))
    assert np.array_equal(current, stamped) and np.array_equal(_pixels(shown)[:, SIZE:], photo)  # rendered at once
    # The canvas's own change event that follows renders nothing twice; a map loaded from elsewhere renders.
    assert app.canvas_loaded(new_value, stamped, current, *show) == (gr.skip(),) * 4
    assert app.canvas_loaded(app.editor.editor_value(base), base, current, *show)[2] is not None
    # A stroke fires the canvas's change event too: it is the input event's to render, not rendered twice.
    assert app.canvas_loaded({**value, "background": None}, base, current, *show) == (gr.skip(),) * 4
    # The editor also reports the stamped value as the user's input (its echo): nothing to render again; a
    # stroke on top of it is rendered.
    echo = app.paint_changed(new_value, stamped, *show, None, app.MODE_SYNTH, current)
    assert echo == (gr.skip(),) * 4
    second = np.zeros((SIZE, SIZE, 4), np.uint8)
    second[100:104, 40:50] = (*labels.CLASSES[labels.SOFT_EXUDATE].color, 255)
    after = app.paint_changed({**new_value, "layers": [second]}, stamped, *show, None, app.MODE_SYNTH, current)
    assert (after[2][100:104, 40:50] == labels.SOFT_EXUDATE).all() and not np.array_equal(after[3], photo)
    added = (stamped == labels.HAEMORRHAGE) & (base != labels.HAEMORRHAGE)
    ys, xs = np.nonzero(added)
    assert added.sum() > 10 and abs(xs.mean() - 90.5) < 3 and abs(ys.mean() - 64.5) < 3
    assert (stamped[20:24, 60:70] == labels.HARD_EXUDATE).all()  # the strokes before the stamp are kept
    assert new_value["layers"] == [] and np.array_equal(labels.from_color(new_value["background"][..., :3]), stamped)
    again = app.stamp(painted, base, "blot_haemorrhage", 0.5, [], *show, _click(90, 64))[1]
    assert np.array_equal(again, stamped)  # seeded by the position: the same click, the same lesion
    assert len(history) == 1 and "blot haemorrhage" in msg
    undone_value, undone, history, _, _, _, current, _ = app.undo_stamp(history, *show)
    assert not (undone == labels.HAEMORRHAGE).any() and (undone[20:24, 60:70] == labels.HARD_EXUDATE).all()
    assert np.array_equal(current, undone)
    assert history == [] and app.undo_stamp([], *show)[3] == "No stamp to undo."
    skipped = app.stamp(painted, base, app.STAMP_OFF, 0.5, [], *show, _click(90, 64))  # no stamp: painting only
    assert len(skipped) == 8 and all(r == gr.skip() for r in skipped)
    assert app.stamp_size("microaneurysm") == app.editor.STAMP_SIZES_DD["microaneurysm"]


def test_each_class_brings_back_its_own_brush_size(app) -> None:
    import gradio as gr

    sizes = app.editor.default_brush_sizes(canvas_size=SIZE)
    update, shown = app.pick_class("microaneurysm", sizes)
    assert shown == sizes["microaneurysm"] and update.brush.default_size == sizes["microaneurysm"]
    colour = app.editor.hex_color(labels.MICROANEURYSM)
    assert update.brush.colors == [colour] and update.brush.default_color == colour  # the class's colour alone
    update, sizes = app.set_brush_size("haemorrhage", 7.4, sizes)  # the slider, while haemorrhage is picked
    assert update.brush.default_size == 7 and sizes["haemorrhage"] == 7
    assert app.pick_class("microaneurysm", sizes)[1] == sizes["microaneurysm"]  # its default, untouched
    assert app.pick_class("haemorrhage", sizes)[1] == 7
    assert app.set_brush_size("vessel", 1e6, sizes)[1]["vessel"] == app.editor.MAX_BRUSH_PX
    assert app.pick_class("outside", sizes) == (gr.skip(), gr.skip())  # not a paintable class


def test_number_keys_come_from_the_taxonomy(app) -> None:
    choices = app.class_choices()
    assert [value for _, value in choices] == [c.name for c in app.editor.paintable_classes()]
    assert [label.split()[0] for label, _ in choices] == list(app.editor.class_keys())
    js = app.class_keys_js()
    assert all(f'"{key}"' in js for key in app.editor.class_keys())
    assert not any(name in js for name in labels.NAMES)  # the script knows keys and positions, no class list


def _far_from(changed: np.ndarray, px: int = 16) -> np.ndarray:
    import cv2

    return ~cv2.dilate(changed.astype(np.uint8), np.ones((2 * px + 1,) * 2, np.uint8)).astype(bool)


def test_edit_mode_keeps_the_photo_and_carries_in_a_stamp(app) -> None:
    import gradio as gr

    _, base, _, source, mode, _, _ = app.start_map(app.START_PHOTO, 0, 0, None, app.example_photo(), False)
    show = (0, None, app.VIEW_SIDE, 0.5)
    shown, _, current, photo = app.paint_changed(app.editor.editor_value(base), base, *show, source, mode)
    assert np.array_equal(photo, source["photo"])  # nothing painted: the photo itself
    assert np.array_equal(_pixels(shown)[:, SIZE:], source["photo"])
    out = app.stamp(current, base, "blot_haemorrhage", 0.5, [], *show, _click(SIZE // 2, SIZE // 2), source, mode)
    stamped, edited = out[1], out[7]
    far = _far_from(stamped != base)
    assert np.array_equal(edited[far], source["photo"][far]) and not np.array_equal(edited, source["photo"])
    label_file, photo_file = app.downloads(stamped, edited, app.MODE_EDIT)
    assert Path(photo_file).name == "edited_photo.png" and np.array_equal(_pixels(photo_file), edited)
    assert np.array_equal(app.read_label_map(label_file), stamped)
    # Edit mode without a photo says why and changes nothing.
    assert app.paint_changed(app.editor.editor_value(base), base, *show, None, app.MODE_EDIT) == (gr.skip(),) * 4


def test_suggestions_follow_the_threshold_and_are_accepted_or_discarded(app) -> None:
    _, base, _, source, mode, image, msg = app.start_map(app.START_PHOTO, 0, 0, None, app.example_photo(), False)
    assert "procedural phantoms only" in msg and image.visible
    probs = source["suggestions"].probabilities
    low, high = 0.05, 0.95
    count = {t: sum(int((p >= t).sum()) for p in probs.values()) for t in (low, high)}
    assert count[low] > count[high]  # the tiny U-Net is untrained: plenty of guesses at a low threshold
    _, msg_low = app.suggestion_view(source, low)
    assert msg_low.startswith("Suggested at p ≥ 0.05")
    show = (0, None, app.VIEW_SIDE, 0.5)
    value, painted, new_source, image, msg, _, _, current, photo = app.accept_suggestions(
        source, low, base, *show, mode)
    assert int((painted != base).sum()) == int(np.isin(painted, labels.LESIONS).sum()) > 0
    assert np.array_equal(new_source["map"], painted) and new_source["suggestions"] is None and not image.visible
    assert np.array_equal(photo, source["photo"])  # accepted lesions describe the photo: it stays as it is
    kept, image, msg = app.discard_suggestions(source)
    assert kept["suggestions"] is None and np.array_equal(kept["map"], source["map"]) and "discarded" in msg


def test_grade_panel_shows_every_probability_and_what_the_classifier_learnt(app) -> None:
    probs = np.array([0.1, 0.2, 0.3, 0.25, 0.15])
    text = app.stats_markdown(blank_template(size=SIZE), grade_probs=probs)
    assert "grade 2 (" in text and all(f"{k}: {p:.2f}" in text for k, p in enumerate(probs))
    assert "trained on procedural phantoms only" in text


@pytest.mark.parametrize("layout", ["nnU-Net v2", "IDRiD layout"])
def test_export_in_other_layouts(app, tmp_path, layout) -> None:
    path, msg = app.export("Generate N per grade now", 1, 0, [], "acgan", layout)
    assert zipfile.is_zipfile(path) and msg == f"Exported 5 samples ({layout})."
    names = zipfile.ZipFile(path).namelist()
    if layout == "nnU-Net v2":
        (dataset_json,) = [n for n in names if n.endswith("dataset.json")]
        import json

        info = json.loads(zipfile.ZipFile(path).read(dataset_json))
        assert info["numTraining"] == 5 and info["file_ending"] == ".png"
        assert sum("/labelsTr/" in n for n in names) == 5
    else:
        assert any("Disease Grading_Training Labels.csv" in n for n in names)
        assert any("5. Optic Disc" in n for n in names)
    _, msg = app.export("Generate N per grade now", 1, 0, [], "acgan", "PNG soup")
    assert "unknown export format" in msg


def test_gallery_curation_and_per_user_export(app, tmp_path) -> None:
    items = app.sample_gallery(["1", "3"], 2, 0, [])
    assert [it.grade for it in items] == [1, 1, 3, 3]
    pics, shown = app.gallery_view(items, "3")
    assert shown == [2, 3] and _pixels(pics[0][0]).shape == (SIZE, 2 * SIZE, 3)
    items = app.set_kept(items, 3, True)
    items = app.set_kept(items, 0, False)
    assert [it.status for it in items] == ["discarded", "undecided", "undecided", "kept"]
    path, msg = app.export("Curated set", 1, 0, items)
    ds = StudioDataset.open(_unzip(Path(path), tmp_path))
    assert len(ds) == 1 and ds.samples[0].grade == 3 and ds.samples[0].extra["provenance"] == "sampled"
    _, msg = app.export("Curated set", 1, 0, [])  # another user's empty curation is not this one's
    assert "nothing is kept" in msg


def _unzip(path: Path, tmp: Path) -> Path:
    from fundus_studio.export import extract_zip

    return extract_zip(path, tmp / path.stem)


# --- through the server ---------------------------------------------------------------------------


def test_api_render_a_painted_map(client, tmp_path) -> None:
    from gradio_client import handle_file

    m = _painted_map()
    palette = save_label_png(tmp_path / "map.png", m)
    colour = save_png(tmp_path / "map_rgb.png", labels.to_color(m))
    a = np.asarray(Image.open(client.predict(handle_file(str(palette)), 3, api_name="/render")))
    b = np.asarray(Image.open(client.predict(handle_file(str(colour)), 3, api_name="/render")))
    assert a.shape == (SIZE, SIZE, 3)
    assert np.array_equal(a, b)  # palette PNG or colour PNG: the same map, the same render


def test_api_render_in_a_photos_style(client, tmp_path) -> None:
    from gradio_client import handle_file
    from skimage import data

    palette = save_label_png(tmp_path / "map.png", _painted_map())
    style = save_png(tmp_path / "style.png", data.retina()[::4, ::4].copy())
    plain = _pixels(client.predict(handle_file(str(palette)), 3, api_name="/render"))
    styled = _pixels(client.predict(handle_file(str(palette)), 3, handle_file(str(style)), api_name="/render"))
    assert styled.shape == plain.shape and not np.array_equal(styled, plain)


def test_api_render_refuses_a_photo(client) -> None:
    from gradio_client import handle_file
    from skimage import data

    photo = Path(__file__).parent / "artifacts" / "retina_photo.png"
    save_png(photo, data.retina()[::8, ::8].copy())
    with pytest.raises(Exception, match="outside the label palette"):
        client.predict(handle_file(str(photo)), 0, api_name="/render")


def test_api_sample_and_extract(client, tmp_path) -> None:
    from gradio_client import handle_file
    from skimage import data

    gallery = client.predict(2, 3, 7, api_name="/sample")
    assert len(gallery) == 3
    flow = client.predict(2, 1, 7, "flow", api_name="/sample")
    acgan = client.predict(2, 1, 7, "acgan", api_name="/sample")
    assert np.array_equal(_pixels(flow[0]["image"]), _pixels(gallery[0]["image"]))  # the default: flow
    assert not np.array_equal(_pixels(acgan[0]["image"]), _pixels(flow[0]["image"]))
    with pytest.raises(Exception, match="unknown generator"):
        client.predict(2, 1, 7, "gan9000", api_name="/sample")
    first = np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))
    labels.from_color(first)  # every pixel is a taxonomy colour
    photo = save_png(tmp_path / "photo.png", data.retina()[::4, ::4].copy())
    out = np.asarray(Image.open(client.predict(handle_file(str(photo)), api_name="/extract")).convert("RGB"))
    assert out.shape == (SIZE, SIZE, 3)
    assert labels.from_color(out)[0, 0] == labels.OUTSIDE


def test_api_edit_a_photo_through_its_map(client, tmp_path) -> None:
    from gradio_client import handle_file
    from skimage import data

    photo = save_png(tmp_path / "photo.png", data.retina()[::4, ::4].copy())
    colours = _pixels(client.predict(handle_file(str(photo)), api_name="/photo_map"))
    index_map = labels.from_color(colours)
    assert not np.isin(index_map, labels.LESIONS).any()
    unchanged = _pixels(client.predict(handle_file(str(photo)), handle_file(str(save_label_png(
        tmp_path / "same.png", index_map))), 0, api_name="/edit_photo"))
    edited_map = index_map.copy()
    edited_map[60:66, 60:66] = labels.HAEMORRHAGE
    edited = _pixels(client.predict(handle_file(str(photo)), handle_file(str(save_label_png(
        tmp_path / "edited.png", edited_map))), 0, api_name="/edit_photo"))
    far = _far_from(edited_map != index_map)
    assert edited.shape == (SIZE, SIZE, 3) and np.array_equal(edited[far], unchanged[far])
    assert not np.array_equal(edited, unchanged)


def test_api_export_zip_is_a_studio_dataset(client, tmp_path) -> None:
    path, msg = client.predict("Generate N per grade now", 1, 5, api_name="/export")
    assert zipfile.is_zipfile(path) and msg == "Exported 5 samples."
    ds = StudioDataset.open(_unzip(Path(path), tmp_path))
    assert sorted(s.grade for s in ds) == list(range(labels.NUM_GRADES))
    assert all(s.extra["checkpoints"].startswith("acgan:") for s in ds)
    assert ds.size == SIZE
    path, msg = client.predict("Generate N per grade now", 1, 5, "acgan", "IDRiD layout", api_name="/export")
    assert msg == "Exported 5 samples (IDRiD layout)." and zipfile.is_zipfile(path)


# --- errors: the user's own file name, one log line for a mistake, a traceback for a fault ---------------


def test_api_refusal_names_the_upload_not_the_server_path_and_logs_one_line(client, tmp_path, caplog) -> None:
    import logging

    from gradio.utils import get_upload_folder
    from gradio_client import handle_file

    (tmp_path / "notes.png").write_text("these are not pixels\n" * 20)
    with caplog.at_level(logging.INFO, logger="fundus_studio.app"):
        with pytest.raises(Exception) as err:
            client.predict(handle_file(str(tmp_path / "notes.png")), 0, api_name="/render")
    message = str(err.value)
    assert "notes.png: not an image file" in message
    assert get_upload_folder() not in message and "/tmp" not in message
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].exc_info is None and "\n" not in refusals[0].getMessage()
    assert "notes.png: not an image file" in refusals[0].getMessage()


def test_a_fault_is_logged_with_its_traceback_and_not_shown(app, monkeypatch, tmp_path, caplog) -> None:
    import logging

    import gradio as gr

    def broken(*args, **kwargs):
        raise RuntimeError("cuda state at /srv/secret/weights is bad")

    monkeypatch.setattr(app.STUDIO, "render", broken)
    path = save_label_png(tmp_path / "map.png", _painted_map())
    with caplog.at_level(logging.INFO, logger="fundus_studio.app"), pytest.raises(gr.Error) as err:
        app.api_render(str(path), 0)
    assert "internal error in api_render" in err.value.message and "secret" not in err.value.message
    (record,) = [r for r in caplog.records if r.name == "fundus_studio.app"]
    assert record.levelno == logging.ERROR and record.exc_info is not None  # the traceback goes to the log


def test_public_message_replaces_temporary_paths_by_file_names() -> None:
    import tempfile

    from gradio.utils import get_upload_folder

    import app as app_module

    cached = f"{get_upload_folder()}/9f8e7d6c/my fundus.png"
    assert app_module.public_message(f"{cached}: not an image file") == "my fundus.png: not an image file"
    assert app_module.public_message(f"{tempfile.gettempdir()}/x/y/map.png: bad") == "map.png: bad"
    assert app_module.public_message("grade 7: must be 0–4") == "grade 7: must be 0–4"


# --- no shared output files (the cut-off download) -----------------------------------------------------


def test_identical_requests_get_files_of_their_own(app, tmp_path) -> None:
    path = str(save_label_png(tmp_path / "map.png", _painted_map()))
    first, second = app.api_render(path, 4), app.api_render(path, 4)
    assert first != second  # Gradio's hash-named file was rewritten in place while another user downloaded it
    assert Path(first).parent == app.OUTPUT_DIR
    assert np.array_equal(_pixels(first), _pixels(second))


def test_concurrent_identical_renders_all_arrive_whole(client, tmp_path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from gradio_client import Client, handle_file

    url = client.src
    path = str(save_label_png(tmp_path / "map.png", _painted_map()))

    def calls(_: int) -> list[np.ndarray]:
        c = Client(url, verbose=False)
        return [_pixels(c.predict(handle_file(path), 1, api_name="/render")) for _ in range(3)]

    with ThreadPoolExecutor(4) as pool:
        results = [img for batch in pool.map(calls, range(4)) for img in batch]
    assert len(results) == 12 and all(np.array_equal(r, results[0]) for r in results)


# --- exposure -------------------------------------------------------------------------------------------


def test_listening_beyond_this_machine_without_auth_warns(app) -> None:
    assert app.exposure_warning("127.0.0.1", None) is None
    assert app.exposure_warning("0.0.0.0", ("ann", "pw")) is None
    assert "without --auth" in app.exposure_warning("0.0.0.0", None)
    assert app.parse_auth("ann:pw:with:colons") == ("ann", "pw:with:colons")
    with pytest.raises(SystemExit, match="USER:PASS"):
        app.parse_auth("ann")


@pytest.mark.slow
def test_the_same_large_picture_for_many_users_arrives_whole(app) -> None:
    """8 users fetching one 512² picture at once: with Gradio's hash-named file (returning the array),
    111 of 240 downloads broke off here ("peer closed connection without sending complete message
    body"); with the studio's own file names none may."""
    import socket
    from concurrent.futures import ThreadPoolExecutor

    import gradio as gr
    from gradio_client import Client

    picture = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)  # ~0.8 MB as PNG
    with gr.Blocks() as demo:
        n, out, button = gr.Number(), gr.Image(format="png"), gr.Button()
        button.click(lambda _: app._png(picture, "same"), n, out, api_name="same")
    demo.queue(default_concurrency_limit=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        # Generous timeouts: server and clients share this process (and, on our machines, 2 busy cores).
        users = [Client(url, verbose=False, httpx_kwargs={"timeout": 300}) for _ in range(8)]

        def calls(c: Client) -> list[bool]:
            return [np.array_equal(_pixels(c.predict(i, api_name="/same")), picture) for i in range(8)]

        with ThreadPoolExecutor(8) as pool:
            whole = [ok for batch in pool.map(calls, users) for ok in batch]
    finally:
        demo.close()
    assert len(whole) == 64 and all(whole)


def test_uploads_leave_no_empty_temporary_files_behind(app, client, tmp_path) -> None:
    """Gradio's own gr.File left one empty file per upload at the top of its cache, never deleted."""
    from gradio.utils import get_upload_folder
    from gradio_client import handle_file

    cache = Path(get_upload_folder())

    def loose() -> set[Path]:
        return {p for p in cache.iterdir() if p.is_file()}

    before = loose()
    path = tmp_path / "map.png"
    Image.fromarray(labels.to_color(_painted_map())).save(path)
    for seed in range(3):
        assert Path(client.predict(handle_file(str(path)), seed, api_name="/render")).is_file()
    assert loose() - before == set()


def test_model_calls_share_the_compute_slots_across_endpoints(app, client, tmp_path, monkeypatch) -> None:
    """Renders and extractions together never run more than CONCURRENCY at once (each event would have
    its own CONCURRENCY slots otherwise: the memory peak of issue 14)."""
    import threading
    import time

    from gradio_client import handle_file

    running, peak, lock = [0], [0], threading.Lock()

    def slow(result):
        def call(*args, **kwargs):
            with lock:
                running[0] += 1
                peak[0] = max(peak[0], running[0])
            time.sleep(0.4)
            with lock:
                running[0] -= 1
            return result
        return call

    monkeypatch.setattr(app.STUDIO, "render", slow(np.zeros((SIZE, SIZE, 3), np.uint8)))
    monkeypatch.setattr(app.STUDIO, "extract", slow(np.zeros((SIZE, SIZE), np.uint8)))
    label_map = save_label_png(tmp_path / "map.png", _painted_map())
    photo = save_png(tmp_path / "photo.png", np.full((SIZE, SIZE, 3), 120, np.uint8))
    jobs = [client.submit(handle_file(str(label_map)), i, api_name="/render") for i in range(3)]
    jobs += [client.submit(handle_file(str(photo)), api_name="/extract") for _ in range(3)]
    assert all(Path(job.result(timeout=60)).exists() for job in jobs)
    assert peak[0] == app.CONCURRENCY
