"""The taxonomy contract: classes, colours, paint order and the conversions between map forms."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from fundus_studio import labels
from fundus_studio.errors import InputError


def _random_map(*, seed: int, size: int = 256, shapes: int = 60) -> np.ndarray:
    """An index map of filled discs and lines of random classes on retina inside a circle."""
    rng = np.random.default_rng(seed)
    out = np.full((size, size), labels.OUTSIDE, np.uint8)
    cv2.circle(out, (size // 2, size // 2), size // 2 - 2, labels.RETINA, -1)
    for _ in range(shapes):
        centre = tuple(int(v) for v in rng.integers(0, size, 2))
        cls = int(rng.integers(labels.OPTIC_DISC, labels.NUM_CLASSES))
        if rng.random() < 0.5:
            cv2.circle(out, centre, int(rng.integers(2, size // 10)), cls, -1)
        else:
            end = tuple(int(v) for v in rng.integers(0, size, 2))
            cv2.line(out, centre, end, labels.VESSEL, int(rng.integers(1, 5)))
    return out


def _boundary(index_map: np.ndarray) -> np.ndarray:
    kernel = np.ones((3, 3), np.uint8)
    return cv2.dilate(index_map, kernel) != cv2.erode(index_map, kernel)


def test_taxonomy_is_the_issue_table() -> None:
    assert labels.NAMES == (
        "outside", "retina", "optic_disc", "vessel", "microaneurysm", "haemorrhage",
        "hard_exudate", "soft_exudate", "neovascularisation", "irma",
    )
    assert [c.index for c in labels.CLASSES] == list(range(labels.NUM_CLASSES))
    assert labels.NUM_GRADES == 5


def test_colours_are_distinct_and_far_apart() -> None:
    cols = labels.COLORS.astype(float)
    d = np.linalg.norm(cols[:, None] - cols[None], axis=2) + np.eye(len(cols)) * 1e9
    # A clean pixel can never be within the clean tolerance of two classes.
    assert d.min() > 2 * labels.CLEAN_TOLERANCE


def test_paint_order_is_background_then_structures_then_lesions() -> None:
    order = labels.PAINT_ORDER
    assert sorted(order) == list(range(labels.NUM_CLASSES))
    pos = {k: i for i, k in enumerate(order)}
    assert pos[labels.RETINA] < pos[labels.OPTIC_DISC] < pos[labels.VESSEL]
    assert all(pos[labels.VESSEL] < pos[k] for k in labels.LESIONS)


def test_compose_follows_paint_order() -> None:
    shape = (8, 8)
    disc = np.zeros(shape, bool)
    disc[2:6, 2:6] = True
    vessel = np.zeros(shape, bool)
    vessel[4, :] = True
    ma = np.zeros(shape, bool)
    ma[4, 4] = True
    out = labels.compose({labels.MICROANEURYSM: ma, labels.OPTIC_DISC: disc, labels.VESSEL: vessel}, shape=shape,
                         base=labels.RETINA)
    assert out[4, 4] == labels.MICROANEURYSM
    assert out[4, 0] == labels.VESSEL
    assert out[3, 3] == labels.OPTIC_DISC
    assert out[0, 0] == labels.RETINA


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_index_colour_index_is_identity(seed: int) -> None:
    idx = _random_map(seed=seed)
    assert np.array_equal(labels.from_color(labels.to_color(idx)), idx)


def test_one_hot_round_trip() -> None:
    idx = _random_map(seed=3, size=64)
    one_hot = labels.to_one_hot(idx)
    assert one_hot.shape == (labels.NUM_CLASSES, 64, 64)
    assert one_hot.dtype == np.float32
    assert np.array_equal(one_hot.sum(0), np.ones((64, 64), np.float32))
    assert np.array_equal(labels.from_one_hot(one_hot), idx)


def test_palette_png_round_trip(tmp_path) -> None:
    from fundus_studio.imageio import read_label_map, save_label_png

    idx = _random_map(seed=4, size=128)
    path = save_label_png(tmp_path / "map.png", idx)
    with Image.open(path) as img:
        assert img.mode == "P"
        assert np.array_equal(np.asarray(img), idx)  # the value is the class index
    assert np.array_equal(read_label_map(path), idx)


def test_anti_aliased_edges_map_to_a_neighbouring_class() -> None:
    idx = _random_map(seed=5)
    blurred = cv2.GaussianBlur(labels.to_color(idx), (3, 3), 0.8)  # what a canvas brush does to edges
    got = labels.from_color(blurred)
    edge = _boundary(idx)
    assert np.array_equal(got[~edge], idx[~edge])
    # On edges, the pixel takes one of the classes that meet there.
    lo = cv2.erode(idx, np.ones((3, 3), np.uint8))
    hi = cv2.dilate(idx, np.ones((3, 3), np.uint8))
    neighbours = np.stack([np.roll(np.roll(idx, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    assert ((neighbours == got[None]).any(0) | (got == lo) | (got == hi))[edge].mean() > 0.99


@pytest.mark.parametrize("quality", [95, 75])
def test_jpeg_edges_map_right(quality: int) -> None:
    idx = _random_map(seed=6)
    buf = io.BytesIO()
    Image.fromarray(labels.to_color(idx)).save(buf, format="JPEG", quality=quality)
    got = labels.from_color(np.asarray(Image.open(buf)))
    interior = ~_boundary(idx)
    assert (got[interior] == idx[interior]).mean() > 0.995
    assert (got == idx).mean() > 0.95


def test_unknown_colours_are_an_error_that_counts_them() -> None:
    idx = _random_map(seed=7, size=64)
    col = labels.to_color(idx)
    col[10:30, 10:30] = (90, 200, 120)  # a 20×20 patch of a colour far from every class
    # Its rim within BLEND_RADIUS of clean pixels reads as an edge; the core is refused.
    core = (20 - 2 * labels.BLEND_RADIUS) ** 2
    with pytest.raises(InputError, match=rf"{core} pixels .*outside the label palette"):
        labels.from_color(col)
    snapped = labels.from_color(col, nearest=True)
    assert snapped.shape == idx.shape
    assert np.array_equal(snapped[40:, 40:], idx[40:, 40:])


def test_a_photograph_is_not_a_label_map() -> None:
    from skimage import data

    with pytest.raises(InputError, match="outside the label palette"):
        labels.from_color(data.retina()[::4, ::4])


def test_bad_index_maps_are_refused() -> None:
    with pytest.raises(InputError, match="outside 0..9"):
        labels.to_color(np.full((4, 4), labels.NUM_CLASSES, np.uint8))
    with pytest.raises(InputError, match="2-D"):
        labels.to_color(np.zeros((4, 4, 1), np.uint8))
    with pytest.raises(InputError, match="integer"):
        labels.to_color(np.zeros((4, 4), np.float32))


def test_class_lookup_by_name_or_short_name() -> None:
    assert labels.class_index("hard_exudate") == labels.HARD_EXUDATE
    assert labels.class_index("EX") == labels.HARD_EXUDATE
    with pytest.raises(InputError, match="unknown class"):
        labels.class_index("drusen")


def test_class_fractions_sum_to_one() -> None:
    idx = _random_map(seed=8, size=64)
    frac = labels.class_fractions(idx)
    assert frac.shape == (labels.NUM_CLASSES,)
    assert frac.sum() == pytest.approx(1.0)
    assert frac[labels.OUTSIDE] == pytest.approx((idx == labels.OUTSIDE).mean())
