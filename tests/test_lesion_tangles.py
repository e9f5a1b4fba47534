"""Neovascularisation and IRMA redrawn as tangles (fundus_studio.lesion_tangles), on hand-made maps and
in the sampler."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from fundus_studio import labels
from fundus_studio.lesion_spots import LesionSpotsConfig, redraw_spots
from fundus_studio.lesion_tangles import LesionTanglesConfig, redraw_tangles
from fundus_studio.pipeline import map_rng
from test_label_flow import tiny_sampler
from training.anatomy import measure

SIDE = 512
NV = labels.NEOVASCULARISATION
DISC_CENTRE, DISC_RADIUS = (256, 120), 32


def _scene() -> np.ndarray:
    """A field of view with a disc, a vessel and a haemorrhage, and a solid neovascularisation blob over
    the disc's middle (what the arg-max draws for NVD): the disc is left a ring."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    index = np.where((yy - SIDE / 2) ** 2 + (xx - SIDE / 2) ** 2 <= (SIDE / 2 - 4) ** 2,
                     labels.RETINA, labels.OUTSIDE).astype(np.uint8)
    (cy, cx), r = DISC_CENTRE, DISC_RADIUS
    index[(yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2] = labels.OPTIC_DISC
    index[250:254, 150:400] = labels.VESSEL
    index[300:320, 300:330] = labels.HAEMORRHAGE
    index[(yy - cy) ** 2 + (xx - cx) ** 2 <= (r - 3) ** 2] = NV
    return index


def test_a_blob_over_the_disc_becomes_strands_over_a_whole_disc() -> None:
    index = _scene()
    assert not measure(index).plausible_disc  # the blob leaves a ring: no disc of plausible size
    out = redraw_tangles(index, rng=np.random.default_rng(0))
    after = out == NV
    assert 0 < after.sum() < 0.7 * (index == NV).sum()
    # strands, not a blob: two erosions by a 3 × 3 square leave almost nothing
    assert cv2.erode(after.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2).sum() < 0.05 * after.sum()
    (cy, cx), r = DISC_CENTRE, DISC_RADIUS
    yy, xx = np.mgrid[:SIDE, :SIDE]
    under = ((yy - cy) ** 2 + (xx - cx) ** 2 <= (r - 3) ** 2) & ~after
    assert (out[under] == labels.OPTIC_DISC).mean() > 0.95  # the blob gave the disc back
    assert measure(out).plausible_disc
    ys, xs = np.nonzero(after)
    assert np.hypot(ys - cy, xs - cx).max() <= r + 4  # the tangle stays where the blob was


def test_tangles_are_drawn_over_retina_disc_and_vessels_only() -> None:
    index = _scene()
    (cy, cx), r = DISC_CENTRE, DISC_RADIUS
    index[cy - 6:cy + 6, cx - 6:cx + 6] = labels.HARD_EXUDATE  # another lesion in the blob's middle
    index[cy + r - 8:cy + r, cx - 4:cx + 4] = labels.HAEMORRHAGE  # and one at its rim
    out = redraw_tangles(index, rng=np.random.default_rng(1))
    changed = out != index
    assert np.isin(index[changed], (labels.RETINA, labels.OPTIC_DISC, labels.VESSEL, NV)).all()
    for cls in (labels.OUTSIDE, labels.HAEMORRHAGE, labels.HARD_EXUDATE):
        assert np.array_equal(out == cls, index == cls)


def test_a_blob_at_the_rim_does_not_dent_the_field_of_view() -> None:
    index = _scene()
    index[index == NV] = labels.OPTIC_DISC
    rim = (index != labels.OUTSIDE) & (np.mgrid[:SIDE, :SIDE][1] < 30)
    index[rim] = NV
    out = redraw_tangles(index, rng=np.random.default_rng(2))
    assert np.array_equal(out == labels.OUTSIDE, index == labels.OUTSIDE)
    assert np.isin(out[rim], (labels.RETINA, NV)).all()


def test_tangles_are_seeded_and_a_map_without_tangle_classes_is_unchanged() -> None:
    index = _scene()
    a, b = redraw_tangles(index, rng=np.random.default_rng(5)), redraw_tangles(index, rng=np.random.default_rng(5))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, redraw_tangles(index, rng=np.random.default_rng(6)))
    plain = _scene()
    plain[plain == NV] = labels.OPTIC_DISC
    assert np.array_equal(redraw_tangles(plain, rng=np.random.default_rng(0)), plain)


def test_only_the_listed_kinds_are_redrawn() -> None:
    index = _scene()
    index[index == NV] = labels.IRMA
    irma_only = redraw_tangles(index, rng=np.random.default_rng(0), config=LesionTanglesConfig(kinds=("irma",)))
    assert (irma_only == labels.IRMA).sum() < (index == labels.IRMA).sum()
    nv_only = redraw_tangles(index, rng=np.random.default_rng(0),
                             config=LesionTanglesConfig(kinds=("neovascularisation",)))
    assert np.array_equal(nv_only, index)


@pytest.mark.parametrize("kwargs", [dict(kinds=("hard_exudate",)), dict(kinds=("irma", "irma")),
                                    dict(min_diameter=0.0), dict(margin=-1)])
def test_tangle_settings_refuse_bad_values(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LesionTanglesConfig(**kwargs)


def test_the_sampler_redraws_tangles_after_the_spots_unless_told_not_to() -> None:
    base = tiny_sampler()
    index = _scene()
    index[400:410, 200:220] = labels.HARD_EXUDATE  # a blob the spots redraw first

    def redraw(tangles: LesionTanglesConfig | None) -> np.ndarray:
        config = dataclasses.replace(base.config, lesion_spots=LesionSpotsConfig(), lesion_tangles=tangles,
                                     vessel_tree=None)
        sampler = type(base)(base.prior, upsampler=base.upsampler, config=config)
        return sampler.redraw(index[None], None, rngs=[map_rng(3, 0)])[0]

    rng = map_rng(3, 0)  # one generator for the map: the spots draw from it first, then the tangles
    spots = redraw_spots(index, rng=rng)
    assert np.array_equal(redraw(None), spots)
    assert np.array_equal(redraw(LesionTanglesConfig()), redraw_tangles(spots, rng=rng))
