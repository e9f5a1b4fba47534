"""Editing a real photo through its map: the region, the Poisson blend, the seam measure."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fundus_studio import labels
from fundus_studio.editor import blank_template
from fundus_studio.errors import InputError
from fundus_studio.photo_edit import PhotoEditConfig, changed_region, edit_photo, poisson_blend, seam_step

SIZE = 96


def _photo(seed: int = 0) -> np.ndarray:
    """A smooth reddish field with grain, black beyond the field of view of ``blank_template``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    base = np.stack([150 + 0.5 * xx, 70 + 0.3 * yy, 40 + 0.1 * (xx + yy)], axis=-1)
    photo = np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
    photo[blank_template(size=SIZE) == labels.OUTSIDE] = 0
    return photo


def _stamped(index_map: np.ndarray) -> np.ndarray:
    edited = index_map.copy()
    cv2.circle(edited, (40, 50), 6, labels.HAEMORRHAGE, -1)
    return edited


def test_the_region_is_the_change_grown_by_the_margin_inside_the_field_of_view() -> None:
    original = blank_template(size=SIZE)
    edited = original.copy()
    edited[50, 40] = labels.MICROANEURYSM
    edited[2, 2] = labels.RETINA  # beyond the field of view: the photo is black there and stays so
    region = changed_region(original, edited, config=PhotoEditConfig(margin_px=5))
    ys, xs = np.nonzero(region)
    assert region[50, 40] and region[50, 45] and region[45, 40] and not region[50, 46]
    assert xs.min() == 35 and ys.max() == 55 and not region[2, 2]
    assert not changed_region(original, original).any()


def test_blending_the_photo_into_itself_changes_nothing_and_outside_is_the_photo() -> None:
    rng = np.random.default_rng(1)
    texture = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)  # any misalignment shows as ~60 levels
    region = np.zeros((SIZE, SIZE), bool)
    region[30:47, 20:33] = True  # odd and even sides
    region[0:9, 60:80] = True  # touching the image's edge
    region[70:80, 70:81] = True
    out = poisson_blend(texture, texture, region)
    assert np.array_equal(out[~region], texture[~region])
    assert np.abs(out.astype(int) - texture)[region].mean() < 1.5  # the solver's rounding only


def test_a_lighter_render_is_carried_in_by_its_gradients_without_a_seam() -> None:
    photo = _photo()
    original = blank_template(size=SIZE)
    edited = _stamped(original)
    render = np.clip(photo.astype(int) + 30, 0, 255).astype(np.uint8)  # another exposure ...
    cv2.circle(render, (40, 50), 6, (90, 20, 20), -1)  # ... with the new lesion drawn in it
    region = changed_region(original, edited)
    out = poisson_blend(photo, render, region)
    assert np.array_equal(out[~region], photo[~region])
    assert out[50, 40, 0] < photo[50, 40, 0] - 40  # the lesion is there, dark
    pasted = np.where(region[..., None], render, photo)
    assert seam_step(pasted, region) > 20 and seam_step(out, region) < 5
    assert abs(seam_step(out, region) - seam_step(photo, region)) < 2


def test_edit_photo_renders_the_edited_map_and_keeps_the_photo_beyond_16_px() -> None:
    photo, original = _photo(), blank_template(size=SIZE)
    edited = _stamped(original)
    calls = []

    def render(index_map: np.ndarray) -> np.ndarray:
        calls.append(index_map)
        return np.where((index_map == labels.HAEMORRHAGE)[..., None], np.uint8(60), photo).astype(np.uint8)

    out = edit_photo(photo, original, edited, render=render)
    assert len(calls) == 1 and np.array_equal(calls[0], edited)
    far = ~cv2.dilate((edited != original).astype(np.uint8), np.ones((33, 33), np.uint8)).astype(bool)
    assert np.array_equal(out[far], photo[far]) and not np.array_equal(out, photo)

    def refuse(index_map: np.ndarray) -> np.ndarray:
        raise AssertionError("an unchanged map needs no render")

    assert np.array_equal(edit_photo(photo, original, original, render=refuse), photo)


def test_bad_inputs_are_refused() -> None:
    photo, original = _photo(), blank_template(size=SIZE)
    with pytest.raises(InputError, match="edit the map extracted from this photo"):
        edit_photo(photo, original, blank_template(size=SIZE // 2), render=lambda m: photo)
    with pytest.raises(InputError, match="render is"):
        edit_photo(photo, original, _stamped(original), render=lambda m: photo[:10])
    with pytest.raises(InputError, match="photo to edit"):
        edit_photo(photo[..., 0], original, original, render=lambda m: photo)
    with pytest.raises(ValueError, match="margin_px"):
        PhotoEditConfig(margin_px=-1)


def test_seam_step_known_answers() -> None:
    region = np.zeros((SIZE, SIZE), bool)
    region[30:60, 30:60] = True
    flat = np.full((SIZE, SIZE, 3), 100, np.uint8)
    assert seam_step(flat, region) == 0.0
    step = flat.copy()
    step[region] = 110
    assert seam_step(step, region) == pytest.approx(10.0)
    assert seam_step(flat, np.zeros_like(region)) == 0.0
