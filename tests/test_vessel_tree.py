"""The vessel-tree decoder (fundus_studio.vessel_tree) on hand-made probability maps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fundus_studio import labels
from fundus_studio.vessel_tree import VesselTreeConfig, redraw_vessels, tips_served
from training import anatomy

SIDE = 128


def _scene(*, with_disc: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A field of view with a disc on the left and a Y of vessel probability leaving it, plus an
    arg-max map whose vessels are a blob (what a coarse prior's arg-max gives)."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    fov = (yy - SIDE / 2) ** 2 + (xx - SIDE / 2) ** 2 <= (SIDE / 2 - 2) ** 2
    ridge = np.zeros((SIDE, SIDE), np.uint8)
    disc_c = (30, 64)  # (x, y)
    fork = (65, 64)
    cv2.line(ridge, disc_c, fork, 1, 1)  # the trunk
    for end in ((110, 30), (110, 98), (100, 64)):
        cv2.line(ridge, fork, end, 1, 1)
    p_vessel = cv2.GaussianBlur(ridge.astype(np.float32), (0, 0), 2.5)
    p_vessel = 0.6 * p_vessel / p_vessel.max()
    probs = np.zeros((labels.NUM_CLASSES, SIDE, SIDE), np.float32)
    probs[labels.VESSEL] = p_vessel
    probs[labels.RETINA] = 1.0 - p_vessel
    index = np.where(fov, labels.RETINA, labels.OUTSIDE).astype(np.uint8)
    index[(p_vessel > 0.2) & fov] = labels.VESSEL  # thick blobs along the ridge
    if with_disc:
        disc = (yy - disc_c[1]) ** 2 + (xx - disc_c[0]) ** 2 <= 8 ** 2
        index[disc] = labels.OPTIC_DISC
        probs[labels.OPTIC_DISC][disc] = 0.9
    index[90:94, 40:44] = labels.HARD_EXUDATE  # a lesion: it must stay
    probs[:, ~fov] = 0.0
    probs[labels.OUTSIDE][~fov] = 1.0
    return probs, index


def test_a_blobby_argmax_becomes_one_thin_tree_from_the_disc() -> None:
    probs, index = _scene()
    out = redraw_vessels(probs[labels.VESSEL], index, config=VesselTreeConfig())
    before, after = anatomy.measure(index), anatomy.measure(out)
    assert after.connectivity == pytest.approx(1.0)
    assert after.vessel_width < 0.6 * before.vessel_width
    vessel = out == labels.VESSEL
    assert vessel.sum() > 100  # three branches of ≥ 30 px each
    assert (probs[labels.VESSEL][vessel] > 0.1).mean() > 0.9  # on the prior's ridges, not beside them
    for x, y in ((110, 30), (110, 98)):  # both arms reach to within a few pixels of their ends
        assert vessel[y - 9: y + 10, x - 9: x + 10].any()


def test_only_vessel_pixels_change_and_lesions_and_outside_stay() -> None:
    probs, index = _scene()
    out = redraw_vessels(probs[labels.VESSEL], index)
    changed = out != index
    assert np.isin(index[changed], (labels.RETINA, labels.VESSEL, labels.OPTIC_DISC)).all()
    assert np.isin(out[changed], (labels.RETINA, labels.VESSEL, labels.OPTIC_DISC)).all()
    assert np.array_equal(out == labels.HARD_EXUDATE, index == labels.HARD_EXUDATE)
    assert np.array_equal(out == labels.OUTSIDE, index == labels.OUTSIDE)
    assert np.array_equal(redraw_vessels(probs[labels.VESSEL], index), out)  # deterministic


def test_widths_follow_murrays_law_trunk_wider_than_branches() -> None:
    probs, index = _scene()
    grid = SIDE // 2
    small = cv2.resize(probs[labels.VESSEL], (grid, grid), interpolation=cv2.INTER_AREA)
    shrink = lambda a: cv2.resize(a.astype(np.uint8), (grid, grid), interpolation=cv2.INTER_NEAREST).astype(bool)  # noqa: E731
    count = tips_served(small, shrink(index != labels.OUTSIDE), shrink(index == labels.OPTIC_DISC),
                        config=VesselTreeConfig())
    trunk = count[30:35, 24].max()  # between the disc and the fork, where every tip's path runs
    branch = count[14:30, 45].max()  # on the upper arm only
    assert trunk > branch >= 1


def test_without_a_disc_the_tree_starts_where_vessels_are_densest() -> None:
    probs, index = _scene(with_disc=False)
    out = redraw_vessels(probs[labels.VESSEL], index)
    assert anatomy.measure(out).connectivity == pytest.approx(1.0)
    assert (out == labels.VESSEL).sum() > 100


def test_no_vessel_probability_leaves_the_map_as_it_is() -> None:
    probs, index = _scene()
    probs[labels.VESSEL] = 0.0
    assert np.array_equal(redraw_vessels(probs[labels.VESSEL], index), index)


@pytest.mark.parametrize("bad", [dict(path_scale=0.0), dict(eps=0.0), dict(tip_spacing=0),
                                 dict(width_min=3.0, width_max=2.0), dict(disc_closing=-1.0),
                                 dict(reference_side=0)])
def test_invalid_configs_are_refused(bad: dict) -> None:
    with pytest.raises(ValueError):
        VesselTreeConfig(**bad)


def test_tips_the_disc_cannot_reach_are_left_out() -> None:
    probs, index = _scene()
    index[:, 84:86] = labels.OUTSIDE  # a field of view cut in two: the arms' ends lie beyond the cut
    out = redraw_vessels(probs[labels.VESSEL], index)
    assert not (out[:, 86:] == labels.VESSEL).any()
    assert (out[:, :84] == labels.VESSEL).any()
