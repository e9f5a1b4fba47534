"""Shape analysis of label maps on hand-made maps with known answers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fundus_studio import labels
from training.anatomy import measure, nearest_distances, pairwise_disagreement, summarise

S = 256


def retina() -> np.ndarray:
    m = np.full((S, S), labels.OUTSIDE, np.uint8)
    cv2.circle(m, (S // 2, S // 2), 120, labels.RETINA, -1)
    return m


def with_disc(m: np.ndarray, *, radius: int = 16, centre: tuple[int, int] = (80, 128)) -> np.ndarray:
    cv2.circle(m, centre, radius, labels.OPTIC_DISC, -1)
    return m


def test_a_disc_of_plausible_size_cut_by_a_vessel_counts_once() -> None:
    m = with_disc(retina())  # diameter 32 / FOV diameter 240 ≈ 0.13
    m[:, 79:81] = np.where(m[:, 79:81] == labels.OPTIC_DISC, labels.VESSEL, m[:, 79:81])  # a vessel cuts it in two
    a = measure(m)
    assert a.disc_count == 1 and a.plausible_disc
    assert a.disc_diameter == pytest.approx(32 / 240, rel=0.1)


@pytest.mark.parametrize("radius, count", [(3, 0), (6, 1), (40, 1)])
def test_discs_too_small_or_too_large_are_not_plausible(radius: int, count: int) -> None:
    a = measure(with_disc(retina(), radius=radius))
    assert not a.plausible_disc and a.disc_count == count


def test_two_discs_are_not_plausible() -> None:
    a = measure(with_disc(with_disc(retina()), centre=(180, 128)))
    assert a.disc_count == 2 and not a.plausible_disc


def test_vessel_width_share_and_connectivity_of_a_tree_and_of_fragments() -> None:
    m = with_disc(retina())
    m[126:129, 96:220] = labels.VESSEL  # a 3-px vessel leaving the disc
    tree = measure(m)
    assert tree.vessel_width == pytest.approx(3.0, rel=0.1)
    assert tree.connectivity == 1.0
    assert tree.vessel_share == pytest.approx(3 * 124 / (np.pi * 120**2), rel=0.05)
    m[126:129, 150:154] = labels.RETINA  # cut in two: 54 columns touch the disc, 66 do not
    cut = measure(m)
    assert cut.connectivity == pytest.approx(66 / 120)  # the larger part, whether or not it touches the disc


def test_lesion_share_and_components() -> None:
    m = with_disc(retina())
    for x in (150, 170, 190):
        cv2.circle(m, (x, 60), 3, labels.HAEMORRHAGE, -1)
    m[200, 100] = labels.MICROANEURYSM
    a = measure(m)
    assert a.lesion_components[labels.HAEMORRHAGE] == 3 and a.lesion_components[labels.MICROANEURYSM] == 1
    lesion_px = np.isin(m, labels.LESIONS).sum()
    assert a.lesion_share == pytest.approx(lesion_px / (m != labels.OUTSIDE).sum())


def test_a_map_without_vessels_has_undefined_width_and_summaries_skip_it() -> None:
    empty = measure(retina())
    assert np.isnan(empty.vessel_width) and np.isnan(empty.connectivity) and empty.lesion_share == 0
    m = with_disc(retina())
    m[126:128, 96:200] = labels.VESSEL
    s = summarise([empty, measure(m)])
    assert s["vessel_width"] == pytest.approx(2.0, rel=0.1)
    assert s["plausible_disc_rate"] == 0.5 and s["lesion_free_rate"] == 1.0


def test_nearest_distances_and_disagreement() -> None:
    refs = np.zeros((3, 4, 4), np.uint8)
    refs[1, 0, :] = 1  # differs from refs[0] in 4 of 16 pixels
    refs[2] = 2
    q = refs[:2].copy()
    assert nearest_distances(q, refs).tolist() == [0.0, 0.0]
    assert nearest_distances(q, refs, exclude_self=True).tolist() == [0.25, 0.25]
    with pytest.raises(ValueError):
        nearest_distances(q[:, :2], refs)
    same = np.zeros((5, 4, 4), np.uint8)
    assert pairwise_disagreement(same, pairs=10, rng=np.random.default_rng(0)) == 0.0
    assert np.isnan(pairwise_disagreement(same[:1], pairs=10, rng=np.random.default_rng(0)))


def test_memorisation_exposes_a_generator_that_copies_its_training_maps() -> None:
    from training.evaluate_labels import memorisation

    rng = np.random.default_rng(0)
    train = np.stack([with_disc(retina(), centre=(int(x), 128)) for x in rng.integers(60, 200, 12)])
    for m in train:  # each training map gets its own lesions
        for cx, cy in rng.integers(40, 216, (6, 2)):
            cv2.circle(m, (int(cx), int(cy)), 6, labels.HAEMORRHAGE, -1)
    held_out = np.stack([with_disc(retina(), centre=(int(x), 100)) for x in rng.integers(60, 200, 6)])
    copies = train[:6].copy()
    copied = memorisation(copies, held_out, train)
    assert copied["generated_median"] == 0.0 < copied["real_median"]
    fresh = memorisation(held_out, held_out, train)
    assert fresh["generated_median"] == pytest.approx(fresh["real_median"])


def test_memorisation_without_vessels_ignores_how_thick_the_vessels_are() -> None:
    from training.evaluate_labels import memorisation

    train = np.stack([with_disc(retina(), centre=(int(x), 128)) for x in (70, 110, 150, 190)])
    thick, thin = train.copy(), train.copy()
    for m in thick:
        cv2.line(m, (50, 60), (206, 60), labels.VESSEL, 12)  # survives at 64² (area resize)
    for m in thin:
        cv2.line(m, (50, 60), (206, 60), labels.VESSEL, 1)  # vanishes at 64²
    result = memorisation(thin, thick, train)
    assert result["generated_median"] < result["real_median"]  # the thin maps look "nearer" as measured
    assert result["generated_median_without_vessels"] == result["real_median_without_vessels"] == 0.0
