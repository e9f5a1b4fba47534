"""Canvas value ⇄ label map, and the statistics the Paint tab shows."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fundus_studio import editor, labels
from fundus_studio.errors import InputError

SIZE = 128


def _stroke(colour_index: int, *, thickness: int = 6, aa: bool = True) -> np.ndarray:
    """An RGBA layer with one anti-aliased line in a class colour, as the browser canvas sends it."""
    layer = np.zeros((SIZE, SIZE, 4), np.uint8)
    colour = (*labels.CLASSES[colour_index].color, 255)
    cv2.line(layer, (20, 64), (108, 64), colour, thickness, lineType=cv2.LINE_AA if aa else cv2.LINE_8)
    return layer


def test_blank_template_is_a_disc_of_retina() -> None:
    t = editor.blank_template(size=SIZE)
    assert t[0, 0] == labels.OUTSIDE and t[SIZE // 2, SIZE // 2] == labels.RETINA
    assert set(np.unique(t)) == {labels.OUTSIDE, labels.RETINA}
    assert (t == labels.RETINA).mean() == pytest.approx(np.pi * (SIZE / 2 - 1) ** 2 / SIZE**2, abs=0.01)


def test_unpainted_canvas_gives_the_base_map() -> None:
    base = editor.blank_template(size=SIZE)
    assert np.array_equal(editor.painted_map(editor.editor_value(base), base=base), base)
    assert np.array_equal(editor.painted_map(None, base=base), base)


def test_a_stroke_paints_its_class_and_only_where_opaque() -> None:
    base = editor.blank_template(size=SIZE)
    layer = _stroke(labels.HAEMORRHAGE)
    got = editor.painted_map({"background": None, "layers": [layer], "composite": None}, base=base)
    painted = layer[..., 3] >= editor.PAINTED_ALPHA
    assert painted.sum() > 300
    assert (got[painted] == labels.HAEMORRHAGE).all()
    assert np.array_equal(got[~painted], base[~painted])
    # The anti-aliased fringe carries premultiplied-looking blends; none of them becomes a third class.
    assert set(np.unique(got)) == {labels.OUTSIDE, labels.RETINA, labels.HAEMORRHAGE}


def test_strokes_over_a_cleared_background_still_use_the_base() -> None:
    base = editor.blank_template(size=SIZE)
    white = np.full((SIZE, SIZE, 4), 255, np.uint8)  # what "clear canvas" leaves as background/composite
    got = editor.painted_map({"background": white, "layers": [_stroke(labels.VESSEL)], "composite": white}, base=base)
    assert (got == labels.VESSEL).any()
    assert got[0, 0] == labels.OUTSIDE


def test_layers_of_another_size_are_scaled() -> None:
    base = editor.blank_template(size=SIZE)
    big = cv2.resize(_stroke(labels.HARD_EXUDATE, aa=False), (2 * SIZE, 2 * SIZE), interpolation=cv2.INTER_NEAREST)
    got = editor.painted_map({"layers": [big]}, base=base)
    assert (got == labels.HARD_EXUDATE).sum() > 300


def test_non_rgba_layer_is_refused() -> None:
    with pytest.raises(InputError, match="RGBA"):
        editor.painted_map({"layers": [np.zeros((SIZE, SIZE, 3), np.uint8)]}, base=editor.blank_template(size=SIZE))


def test_map_stats_counts_pixels_and_spots() -> None:
    m = editor.blank_template(size=SIZE)
    m[10:12, 40:42] = labels.MICROANEURYSM
    m[50:52, 60:62] = labels.MICROANEURYSM
    m[80:90, 50:60] = labels.HAEMORRHAGE
    s = editor.map_stats(m)
    assert s.pixels["microaneurysm"] == 8 and s.spots["microaneurysm"] == 2
    assert s.pixels["haemorrhage"] == 100 and s.spots["haemorrhage"] == 1
    assert s.spots["hard_exudate"] == 0
    fov = SIZE * SIZE - s.pixels["outside"]
    assert s.fov_fraction["haemorrhage"] == pytest.approx(100 / fov)


def test_uploaded_maps_of_any_size_are_resized_nearest() -> None:
    m = editor.blank_template(size=64)
    m[20:30, 20:30] = labels.SOFT_EXUDATE
    got = editor.uploaded_map(labels.to_color(m), size=SIZE, nearest=False)
    assert got.shape == (SIZE, SIZE)
    assert set(np.unique(got)) == set(np.unique(m))


def test_overlay_blends_only_structures() -> None:
    m = editor.blank_template(size=SIZE)
    m[60:70, 60:70] = labels.HARD_EXUDATE
    photo = np.full((SIZE, SIZE, 3), 100, np.uint8)
    out = editor.overlay(photo, m, opacity=1.0)
    assert (out[65, 65] == labels.CLASSES[labels.HARD_EXUDATE].color).all()
    assert (out[5, 5] == 100).all() and (out[30, 64] == 100).all()
    with pytest.raises(InputError):
        editor.overlay(photo, m, opacity=2.0)


def test_brush_colours_cover_every_paintable_class() -> None:
    cols = editor.brush_colors()
    assert len(cols) == labels.NUM_CLASSES - 1 and len(set(cols)) == len(cols)
    assert editor.hex_color(labels.OUTSIDE) not in cols


# --- brushes ----------------------------------------------------------------------------------------


def test_every_paintable_class_has_a_brush_size_and_a_key_in_taxonomy_order() -> None:
    names = [c.name for c in editor.paintable_classes()]
    assert "outside" not in names and len(names) == labels.NUM_CLASSES - 1
    assert set(editor.BRUSH_SIZES_DD) == set(names)
    keys = editor.class_keys()
    assert list(keys.values()) == names[:len(editor.CLASS_KEYS)]
    assert list(keys) == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"][:len(keys)]


@pytest.mark.parametrize("canvas_size", [128, 256, 512, 1024])
def test_brush_radius_follows_the_disc_diameter(canvas_size: int) -> None:
    from fundus_studio.phantom import nominal_disc_diameter

    dd = nominal_disc_diameter(canvas_size)
    assert editor.brush_radius_px(1.0, canvas_size=canvas_size) == round(dd / 2)  # 1 DD across: radius DD/2
    assert editor.brush_radius_px(1e-3, canvas_size=canvas_size) == editor.MIN_BRUSH_PX  # never below a pixel
    assert editor.brush_radius_px(1e3, canvas_size=canvas_size) == editor.MAX_BRUSH_PX  # the editor's largest
    sizes = editor.default_brush_sizes(canvas_size=canvas_size)
    assert set(sizes) == set(editor.BRUSH_SIZES_DD)
    assert all(editor.MIN_BRUSH_PX <= px <= editor.MAX_BRUSH_PX and isinstance(px, int) for px in sizes.values())
    # A microaneurysm's brush is the smallest, a haemorrhage's and a cotton-wool spot's larger.
    assert sizes["microaneurysm"] == min(sizes.values())
    assert sizes["microaneurysm"] < sizes["haemorrhage"] and sizes["microaneurysm"] < sizes["soft_exudate"]


def test_brush_sizes_scale_with_the_canvas() -> None:
    small, large = (editor.default_brush_sizes(canvas_size=n) for n in (256, 512))
    assert large["haemorrhage"] == pytest.approx(2 * small["haemorrhage"], abs=1)
    assert large["retina"] == pytest.approx(2 * small["retina"], abs=1)
    # At the users' 512² a microaneurysm brush paints a dot ~2 px across, a haemorrhage one ~16 px.
    assert large["microaneurysm"] == 1 and 6 <= large["haemorrhage"] <= 10


@pytest.mark.parametrize("bad", [0.0, -0.1, float("nan")])
def test_a_brush_size_must_be_positive(bad: float) -> None:
    with pytest.raises(InputError, match="must be positive"):
        editor.brush_radius_px(bad, canvas_size=512)


# --- lesion stamps ----------------------------------------------------------------------------------


def _healthy(size: int = 256) -> np.ndarray:
    from fundus_studio.phantom import generate_phantom

    return generate_phantom(grade=0, seed=3, size=size).label


@pytest.mark.parametrize("kind", list(editor.STAMP_SIZES_DD))
def test_every_stamp_draws_its_class_at_the_click_seeded(kind: str) -> None:
    from fundus_studio.phantom import LESION_KINDS

    base = _healthy()
    out = editor.stamp_lesion(base, kind, at=(150.0, 170.0), seed=7)
    changed = np.argwhere(out != base)
    assert len(changed) > 0 and set(np.unique(out[out != base])) == {LESION_KINDS[kind]}
    assert np.abs(changed.mean(0) - (170, 150)).max() < 0.6 * editor.map_anatomy(base).dd
    assert np.array_equal(out, editor.stamp_lesion(base, kind, at=(150.0, 170.0), seed=7))
    assert np.array_equal(base, _healthy())  # the map given is not modified


def test_map_anatomy_finds_the_disc_and_falls_back_to_the_nominal_size() -> None:
    from fundus_studio.phantom import nominal_disc_diameter

    base = _healthy()
    a = editor.map_anatomy(base)
    ys, xs = np.nonzero(base == labels.OPTIC_DISC)
    assert a.disc == pytest.approx((xs.mean(), ys.mean())) and 0.05 * 256 < a.dd < 0.25 * 256
    blank = editor.map_anatomy(editor.blank_template(size=256))
    assert blank.disc is None and blank.dd == nominal_disc_diameter(256)


def test_flames_lie_along_the_nerve_fibres() -> None:
    """Beside the disc on the horizontal through it, fibres run radially (horizontal); above the disc, towards
    the fovea side they arch: a flame there is long along the fibre direction the phantom model gives."""
    m = editor.blank_template(size=256)
    m[120:136, 40:56] = labels.OPTIC_DISC  # disc left of the centre, fovea at the centre
    a = editor.map_anatomy(m)
    assert editor.fibre_angle(a, (90.0, a.disc[1])) == pytest.approx(0.0, abs=0.02)  # radial, to the right
    out = editor.stamp_lesion(m, "flame_haemorrhage", at=(90.0, a.disc[1]), seed=1, size_dd=1.5)
    ys, xs = np.nonzero(out == labels.HAEMORRHAGE)
    assert np.ptp(xs) > 2 * np.ptp(ys)  # long axis horizontal
    with pytest.raises(InputError, match="unknown lesion kind"):
        editor.stamp_lesion(m, "drusen", at=(90.0, 90.0), seed=0)
    with pytest.raises(InputError, match="must be positive"):
        editor.stamp_lesion(m, "microaneurysm", at=(90.0, 90.0), seed=0, size_dd=0)
