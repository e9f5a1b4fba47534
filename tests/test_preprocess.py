"""The one preprocessing path: field of view, crop → centred square → resize, masks that follow."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fundus_studio.errors import InputError
from fundus_studio.preprocess import FovConfig, Geometry, detect_fov, fit_geometry, preprocess


def circle_photo(*, width: int, height: int, centre: tuple[int, int], radius: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.uint8)
    cv2.circle(img, centre, radius, (160, 70, 40), -1)
    noise = rng.integers(0, 6, img.shape, dtype=np.uint8)  # JPEG-like grey, not pure black, outside
    return np.maximum(img, noise)


def circle_mask(*, width: int, height: int, centre: tuple[int, int], radius: int) -> np.ndarray:
    m = np.zeros((height, width), np.uint8)
    cv2.circle(m, centre, radius, 1, -1)
    return m.astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize(
    ("width", "height", "centre", "radius"),
    [
        (320, 240, (160, 120), 100),  # whole circle
        (300, 200, (150, 100), 125),  # IDRiD: top and bottom cut off
        (256, 256, (128, 128), 140),  # cut on every side
        (400, 240, (170, 125), 90),  # off-centre
    ],
)
def test_fov_matches_the_drawn_circle(width: int, height: int, centre: tuple[int, int], radius: int) -> None:
    photo = circle_photo(width=width, height=height, centre=centre, radius=radius)
    truth = circle_mask(width=width, height=height, centre=centre, radius=radius)
    assert iou(detect_fov(photo), truth) > 0.98


def test_fov_ignores_dark_spots_at_the_rim() -> None:
    photo = circle_photo(width=300, height=300, centre=(150, 150), radius=120)
    cv2.circle(photo, (40, 150), 18, (0, 0, 0), -1)  # a black haemorrhage cutting into the rim
    cv2.circle(photo, (150, 150), 25, (2, 2, 2), -1)  # and one in the middle
    truth = circle_mask(width=300, height=300, centre=(150, 150), radius=120)
    assert iou(detect_fov(photo), truth) > 0.98


def test_uniform_dark_photo_is_refused() -> None:
    with pytest.raises(InputError, match="no field of view"):
        detect_fov(np.full((100, 100, 3), 3, np.uint8))
    speck = np.zeros((100, 100, 3), np.uint8)
    speck[10:14, 10:14] = 200
    with pytest.raises(InputError, match="no field of view"):
        detect_fov(speck)


def test_fov_config_is_validated() -> None:
    with pytest.raises(ValueError, match="rel_level"):
        FovConfig(rel_level=1.5)


@pytest.mark.parametrize("size", [64, 128, 256])
def test_preprocess_squares_and_centres_the_fov(size: int) -> None:
    photo = circle_photo(width=300, height=200, centre=(140, 100), radius=120)  # cut top and bottom
    pre = preprocess(photo, size=size)
    assert pre.photo.shape == (size, size, 3) and pre.photo.dtype == np.uint8
    assert pre.fov.shape == (size, size) and pre.fov.dtype == bool
    assert pre.geometry.box == (0, 20, 200, 261)
    assert (pre.photo[~pre.fov] == 0).all()
    # The cut circle fills the width and sits in the middle, padded equally above and below.
    rows = np.flatnonzero(pre.fov.any(axis=1))
    cols = np.flatnonzero(pre.fov.any(axis=0))
    assert cols[0] <= 1 and cols[-1] >= size - 2
    assert abs(rows[0] - (size - 1 - rows[-1])) <= 1
    assert abs(rows[0] - (241 - 200) / 2 / 241 * size) <= 1  # the padding, scaled


def test_photos_are_area_averaged_never_nearest() -> None:
    photo = circle_photo(width=400, height=400, centre=(200, 200), radius=198)
    checker = ((np.indices((400, 400)).sum(axis=0) % 2) * 200).astype(np.uint8)
    photo[100:300, 100:300, 1] = checker[100:300, 100:300]
    pre = preprocess(photo, size=100)
    middle = pre.photo[40:60, 40:60, 1].astype(int)
    assert abs(middle.mean() - 100) < 3 and middle.std() < 3  # nearest would give 0s and 200s


def test_masks_follow_whatever_their_resolution() -> None:
    photo = circle_photo(width=300, height=200, centre=(150, 100), radius=120)
    at = (200, 60)
    small = circle_mask(width=300, height=200, centre=at, radius=10)
    big = circle_mask(width=1200, height=800, centre=(4 * at[0], 4 * at[1]), radius=40)
    pre = preprocess(photo, size=128, masks={"small": small, "big": big})
    a, b = pre.masks["small"], pre.masks["big"]
    assert a.shape == b.shape == (128, 128)
    assert iou(a, b) > 0.8
    x, y = pre.geometry.to_output(*at)
    ys, xs = np.nonzero(b)
    assert abs(xs.mean() - x) < 1.0 and abs(ys.mean() - y) < 1.0


def test_tiny_lesions_survive_downscaling() -> None:
    photo = circle_photo(width=2000, height=2000, centre=(1000, 1000), radius=990)
    dots = np.zeros((2000, 2000), bool)
    for x, y in [(500, 700), (1203, 999), (1501, 1333)]:
        dots[y : y + 3, x : x + 3] = True  # 3 px in 2000: a fifth of an output pixel at 256
    pre = preprocess(photo, size=256, masks={"ma": dots})
    assert cv2.connectedComponents(pre.masks["ma"].astype(np.uint8))[0] - 1 == 3
    assert pre.masks["ma"].sum() <= 3 * 4


def test_index_maps_use_nearest() -> None:
    geometry = Geometry(source_shape=(200, 300), box=(0, 50, 200, 250), size=64)
    index_map = np.random.default_rng(0).integers(0, 4, (200, 300)).astype(np.uint8)
    out = geometry.index_map(index_map)
    assert out.shape == (64, 64) and set(np.unique(out)) <= {0, 1, 2, 3}


def test_aspect_mismatch_is_refused() -> None:
    geometry = fit_geometry(np.ones((200, 300), bool), size=64)
    with pytest.raises(InputError, match="aspect ratios differ"):
        geometry.mask(np.ones((200, 200), bool), what="IDRiD_01_MA.tif")


def test_real_retina_fov() -> None:
    skimage_data = pytest.importorskip("skimage.data")
    pre = preprocess(skimage_data.retina(), size=256)
    # skimage's retina is a full circle (with a small notch) touching the frame: the FOV is ≈ π/4.
    assert abs(pre.fov.mean() - np.pi / 4) < 0.02
    assert pre.photo[pre.fov].mean() > 60
