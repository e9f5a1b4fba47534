"""Small lesions redrawn as spots (fundus_studio.lesion_spots), on hand-made maps and in the sampler."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from fundus_studio import labels
from fundus_studio.lesion_spots import LesionSpotsConfig, SpotClass, redraw_spots
from test_label_flow import tiny_sampler

SIDE = 256
HE = labels.HARD_EXUDATE


def _scene() -> np.ndarray:
    """A field of view with a disc, a haemorrhage, a vessel and a 20 × 12 px hard-exudate blob (what
    the arg-max draws for a cluster), plus a single-pixel exudate speck far from it."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    index = np.where((yy - SIDE / 2) ** 2 + (xx - SIDE / 2) ** 2 <= (SIDE / 2 - 2) ** 2,
                     labels.RETINA, labels.OUTSIDE).astype(np.uint8)
    index[(yy - 128) ** 2 + (xx - 40) ** 2 <= 15 ** 2] = labels.OPTIC_DISC
    index[120:124, 55:200] = labels.VESSEL
    index[150:170, 150:170] = labels.HAEMORRHAGE
    index[100:112, 120:140] = HE
    index[200, 100] = HE
    return index


def _components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return count - 1, stats[1:, cv2.CC_STAT_AREA]


def test_a_blob_becomes_a_cluster_of_spots_of_about_its_area_around_it() -> None:
    index = _scene()
    out = redraw_spots(index, rng=np.random.default_rng(0))
    blob_area = int((index == HE).sum())
    after = out == HE
    assert abs(int(after.sum()) - blob_area) <= 0.15 * blob_area  # the class keeps its share
    count, areas = _components(after)
    assert count >= 5  # spots, not one blob (plus the speck)
    spec = LesionSpotsConfig().classes[1]
    widest = np.pi / 4 * (spec.diameter[1] * SIDE / 512 + 1) ** 2
    assert np.median(areas) <= widest  # a typical component is one spot
    ys, xs = np.nonzero(after)
    near_blob = (ys >= 100 - 30) & (ys < 112 + 30) & (xs >= 120 - 30) & (xs < 140 + 30)
    assert near_blob.sum() >= after.sum() - 1  # every spot lies around the blob (or is the speck)


def test_spots_are_painted_only_on_retina_and_vessels_and_the_rest_stays() -> None:
    index = _scene()
    out = redraw_spots(index, rng=np.random.default_rng(1))
    changed = out != index
    assert changed.any()
    assert np.isin(index[changed], (labels.RETINA, labels.VESSEL, HE)).all()
    assert np.isin(out[changed], (labels.RETINA, HE)).all()
    for cls in (labels.OUTSIDE, labels.OPTIC_DISC, labels.HAEMORRHAGE):
        assert np.array_equal(out == cls, index == cls)


def test_a_one_pixel_speck_stays_one_pixel_and_a_map_without_spot_classes_is_unchanged() -> None:
    index = np.full((64, 64), labels.RETINA, np.uint8)
    index[30, 30] = HE
    out = redraw_spots(index, rng=np.random.default_rng(2))
    assert (out == HE).sum() == 1
    plain = _scene()
    plain[plain == HE] = labels.RETINA
    assert np.array_equal(redraw_spots(plain, rng=np.random.default_rng(0)), plain)


def test_spots_are_seeded() -> None:
    index = _scene()
    a, b = redraw_spots(index, rng=np.random.default_rng(5)), redraw_spots(index, rng=np.random.default_rng(5))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, redraw_spots(index, rng=np.random.default_rng(6)))


@pytest.mark.parametrize("kwargs", [dict(name="vessel", diameter=(1.0, 2.0), spread=1.0),
                                    dict(name="hard_exudate", diameter=(3.0, 2.0), spread=1.0),
                                    dict(name="hard_exudate", diameter=(2.0, 3.0), spread=-1.0)])
def test_spot_classes_refuse_bad_settings(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SpotClass(**kwargs)


def test_the_sampler_draws_spots_per_map_independent_of_the_batch() -> None:
    blobs = tiny_sampler()
    # the tiny random prior draws haemorrhages rather than exudates: spot those
    config = LesionSpotsConfig(reference_side=64, classes=(SpotClass("haemorrhage", diameter=(1.0, 3.0), spread=1.0),))
    # (tangles off: they draw from the same generator after the spots, so they would differ too)
    spots = type(blobs)(blobs.prior, upsampler=blobs.upsampler,
                        config=dataclasses.replace(blobs.config, lesion_spots=config, lesion_tangles=None))
    blobs = type(blobs)(blobs.prior, upsampler=blobs.upsampler,
                        config=dataclasses.replace(blobs.config, lesion_spots=None, lesion_tangles=None))
    grades = [4, 3, 4]
    a, b = spots.sample_grades(grades, seed=9), blobs.sample_grades(grades, seed=9)
    changed = a != b
    assert changed.any()
    touched = (labels.RETINA, labels.VESSEL, labels.HAEMORRHAGE)
    assert np.isin(a[changed], touched).all()
    # an arg-max vessel pixel under a spot stays a lesion; without the spot the tree gives it back to
    # the retina, or to the disc inside the disc's outline
    assert np.isin(b[changed], (*touched, labels.OPTIC_DISC)).all()
    assert abs(int((a == labels.HAEMORRHAGE).sum()) / int((b == labels.HAEMORRHAGE).sum()) - 1) < 0.1
    assert np.array_equal(spots.sample_grades(grades[:1], seed=9)[0], a[0])  # not dependent on the call's size
    assert not np.array_equal(spots.sample_grades(grades[:1], seed=10)[0], a[0])
