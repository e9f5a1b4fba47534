"""Photo → label map on a real photograph (skimage's CC0 retina) and on hand-made inputs."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fundus_studio import cli, labels
from fundus_studio.errors import InputError
from fundus_studio.extract import (
    ExtractConfig,
    detect_optic_disc,
    extract_file,
    extract_label_map,
    label_map_from_preprocessed,
    vessel_mask,
)
from fundus_studio.imageio import read_label_map, save_png
from fundus_studio.preprocess import preprocess

skimage_data = pytest.importorskip("skimage.data")

# skimage.data.retina() (1411×1411, left eye): the disc's centre and diameter read off the photo by
# eye (a 2× contrast-stretched crop with a 25-px grid: rim from x ≈ 120 to 300, y ≈ 570 to 760).
DISC_CENTRE = (210.0, 665.0)
DISC_DIAMETER = 185.0
SIZE = 512


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    return skimage_data.retina()


@pytest.fixture(scope="module")
def retina_map(retina: np.ndarray) -> np.ndarray:
    return extract_label_map(retina, size=SIZE)


def _largest_share(mask: np.ndarray) -> float:
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return float(areas.max() / areas.sum())


def test_label_map_classes_and_shape(retina_map: np.ndarray) -> None:
    assert retina_map.shape == (SIZE, SIZE) and retina_map.dtype == np.uint8
    assert set(np.unique(retina_map)) == {labels.OUTSIDE, labels.RETINA, labels.OPTIC_DISC, labels.VESSEL}
    # The whole circle is inside, the corners outside.
    assert abs((retina_map != labels.OUTSIDE).mean() - np.pi / 4) < 0.02
    assert retina_map[0, 0] == retina_map[-1, -1] == labels.OUTSIDE


def test_vessels_form_one_tree_of_plausible_size(retina_map: np.ndarray) -> None:
    fov = retina_map != labels.OUTSIDE
    vessels = retina_map == labels.VESSEL
    fraction = vessels[fov].mean()
    assert 0.06 <= fraction <= 0.20  # measured 0.109; manual annotations cover 8–14 %
    assert _largest_share(vessels) >= 0.85  # measured 0.93: the arcades join through the disc


def test_disc_found_within_half_a_diameter(retina: np.ndarray) -> None:
    pre = preprocess(retina, size=SIZE)
    cx, cy, radius = detect_optic_disc(pre.photo, pre.fov)
    tx, ty = pre.geometry.to_output(*DISC_CENTRE)
    dd = DISC_DIAMETER * pre.geometry.scale
    assert np.hypot(cx - tx, cy - ty) < 0.5 * dd  # measured 0.15 DD
    assert cx < SIZE / 3  # on the left
    assert 0.7 < 2 * radius / dd < 1.3


def test_disc_follows_laterality_and_ignores_a_bright_spot(retina: np.ndarray) -> None:
    mirrored = retina[:, ::-1].copy()
    cv2.circle(mirrored, (400, 800), 60, (255, 230, 170), -1)  # a disc-sized bright spot, no vessels
    pre = preprocess(mirrored, size=SIZE)
    cx, cy, _ = detect_optic_disc(pre.photo, pre.fov)
    tx, ty = pre.geometry.to_output(retina.shape[1] - 1 - DISC_CENTRE[0], DISC_CENTRE[1])
    assert np.hypot(cx - tx, cy - ty) < 0.5 * DISC_DIAMETER * pre.geometry.scale


def test_detector_accepts_any_resolution(retina: np.ndarray) -> None:
    fov = preprocess(retina, size=SIZE).fov
    small = cv2.resize(preprocess(retina, size=SIZE).photo, (300, 300), interpolation=cv2.INTER_AREA)
    cx, cy, r = detect_optic_disc(small, cv2.resize(fov.astype(np.uint8), (300, 300)) > 0)
    big_cx, big_cy, big_r = detect_optic_disc(preprocess(retina, size=SIZE).photo, fov)
    assert abs(cx * SIZE / 300 - big_cx) < 6 and abs(cy * SIZE / 300 - big_cy) < 6
    assert abs(r * SIZE / 300 - big_r) < 2
    assert vessel_mask(small, cv2.resize(fov.astype(np.uint8), (300, 300)) > 0).shape == (300, 300)


def test_lesions_are_painted(retina: np.ndarray) -> None:
    pre = preprocess(retina, size=256)
    he = np.zeros((256, 256), bool)
    he[120:140, 150:170] = True
    ma = np.zeros((256, 256), bool)
    ma[60, 200] = True
    out = label_map_from_preprocessed(pre.photo, pre.fov, lesions={labels.HAEMORRHAGE: he, labels.MICROANEURYSM: ma})
    assert (out[he] == labels.HAEMORRHAGE).all()
    assert out[60, 200] == labels.MICROANEURYSM


def test_excluded_lesions_do_not_grow_vessels(retina: np.ndarray) -> None:
    pre = preprocess(retina, size=256)
    he = np.zeros((256, 256), np.uint8)
    cv2.circle(he, (150, 100), 3, 1, -1)  # a dark haemorrhage next to a small vessel
    he = he.astype(bool)
    photo = pre.photo.copy()
    photo[he] = (110, 25, 15)
    near = cv2.dilate(he.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    before = vessel_mask(pre.photo, pre.fov)[near].sum()
    assert vessel_mask(photo, pre.fov)[near].sum() > before + 30  # the ridge filter takes it for a vessel
    assert vessel_mask(photo, pre.fov, exclude=he)[near].sum() <= before + 3


def test_lesion_hook_checks_its_input(retina: np.ndarray) -> None:
    pre = preprocess(retina, size=128)
    with pytest.raises(InputError, match="not a lesion class"):
        label_map_from_preprocessed(pre.photo, pre.fov, lesions={labels.VESSEL: pre.fov})
    with pytest.raises(InputError, match="does not match"):
        label_map_from_preprocessed(pre.photo, pre.fov, lesions={labels.HAEMORRHAGE: np.zeros((64, 64), bool)})


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="low"):
        ExtractConfig(low=0.2, high=0.1)
    with pytest.raises(ValueError, match="disc_ratio"):
        ExtractConfig(disc_ratio=0.9)


def test_extract_file_writes_a_palette_png(tmp_path: Path, retina: np.ndarray) -> None:
    photo = tmp_path / "retina.png"
    save_png(photo, cv2.resize(retina, (600, 600), interpolation=cv2.INTER_AREA))
    out = extract_file(photo, tmp_path / "sub" / "label.png", size=128)
    label = read_label_map(out)
    assert label.shape == (128, 128)
    assert set(np.unique(label)) <= {labels.OUTSIDE, labels.RETINA, labels.OPTIC_DISC, labels.VESSEL}


def test_cli_extract(tmp_path: Path, capsys) -> None:
    dark = tmp_path / "dark.png"
    save_png(dark, np.full((100, 100, 3), 2, np.uint8))
    assert cli.main(["extract", str(dark), "--out", str(tmp_path / "x.png"), "--size", "64"]) == 2
    err = capsys.readouterr().err
    assert "dark.png" in err and "no field of view" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()
    (tmp_path / "text.jpg").write_text("not a photo")
    assert cli.main(["extract", str(tmp_path / "text.jpg"), "--out", str(tmp_path / "x.png")]) == 2
    assert "not an image file" in capsys.readouterr().err
