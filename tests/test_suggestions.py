"""Lesion suggestions: thresholds, spots, accepting them into a map, outlines."""

from __future__ import annotations

import numpy as np
import pytest

from fundus_studio import labels
from fundus_studio.editor import blank_template
from fundus_studio.errors import InputError
from fundus_studio.suggestions import LesionSuggestions, accept, outline

SIZE = 64


def _suggestions() -> LesionSuggestions:
    haem = np.zeros((SIZE, SIZE), np.float32)
    haem[20:26, 20:26] = 0.9  # a confident spot ...
    haem[40:43, 40:43] = 0.3  # ... and a doubtful one
    haem[0:3, 0:3] = 0.95  # beyond the field of view
    micro = np.zeros((SIZE, SIZE), np.float32)
    micro[22, 22] = 0.7  # inside the haemorrhage: paint order puts it on top
    return LesionSuggestions({labels.HAEMORRHAGE: haem, labels.MICROANEURYSM: micro})


def test_the_threshold_decides_which_spots_are_suggested() -> None:
    s = _suggestions()
    assert s.spots(0.5) == {labels.HAEMORRHAGE: 2, labels.MICROANEURYSM: 1}
    assert s.spots(0.2)[labels.HAEMORRHAGE] == 3 and s.spots(0.8)[labels.MICROANEURYSM] == 0
    with pytest.raises(InputError, match="threshold"):
        s.masks(1.0)


def test_accepting_paints_in_paint_order_inside_the_field_of_view_only() -> None:
    base = blank_template(size=SIZE)
    out = accept(base, _suggestions().masks(0.5))
    assert (out[20:26, 20:26] != labels.RETINA).all() and out[22, 22] == labels.MICROANEURYSM
    assert out[41, 41] == labels.RETINA and out[1, 1] == labels.OUTSIDE
    assert np.array_equal(base, blank_template(size=SIZE))  # the input is left alone
    with pytest.raises(InputError, match="not a lesion class"):
        accept(base, {labels.VESSEL: np.ones((SIZE, SIZE), bool)})


def test_outlines_leave_the_inside_visible() -> None:
    image = np.full((SIZE, SIZE, 3), 50, np.uint8)
    out = outline(image, _suggestions().masks(0.5))
    colour = labels.CLASSES[labels.HAEMORRHAGE].color
    assert (out[19, 23] == colour).all() and (out[23, 24] == 50).all()
    assert np.array_equal(image, np.full((SIZE, SIZE, 3), 50, np.uint8))
