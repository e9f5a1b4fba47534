"""Metrics on hand-made masks with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fundus_studio import metrics
from fundus_studio.labels import HAEMORRHAGE, MICROANEURYSM, NAMES, NUM_CLASSES, RETINA

MA = NAMES[MICROANEURYSM]
HE = NAMES[HAEMORRHAGE]


def _blank(size: int = 4) -> np.ndarray:
    return np.full((size, size), RETINA, dtype=np.uint8)


def _two_images() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Image 1: 4 MA pixels found exactly. Image 2: 1 MA pixel missed, 1 false pixel elsewhere."""
    t1, p1 = _blank(), _blank()
    t1[:2, :2] = MICROANEURYSM
    p1[:2, :2] = MICROANEURYSM
    t2, p2 = _blank(), _blank()
    t2[0, 0] = MICROANEURYSM
    p2[3, 3] = MICROANEURYSM
    return [p1, p2], [t1, t2]


def test_pooled_and_per_image_differ_and_are_both_right() -> None:
    preds, truths = _two_images()
    r = metrics.segmentation_metrics(preds, truths, classes=(MICROANEURYSM,))
    assert r["counts"] == {"tp": {MA: 4}, "fp": {MA: 1}, "fn": {MA: 1}}
    # Pooled: TP 4, FP 1, FN 1.
    assert r["pooled"]["precision"][MA] == pytest.approx(0.8)
    assert r["pooled"]["recall"][MA] == pytest.approx(0.8)
    assert r["pooled"]["f1"][MA] == pytest.approx(0.8)
    assert r["pooled"]["iou"][MA] == pytest.approx(4 / 6)
    # Per image: image 1 scores 1 everywhere, image 2 scores 0.
    for m in ("precision", "recall", "f1", "iou"):
        assert r["per_image"][m][MA] == pytest.approx(0.5)
        assert r["per_image_count"][m][MA] == 2
    assert r["images"] == 2


def test_empty_mask_conventions() -> None:
    both_empty_t, both_empty_p = _blank(), _blank()
    false_alarm_t, false_alarm_p = _blank(), _blank()
    false_alarm_p[1, 1:3] = MICROANEURYSM
    missed_t, missed_p = _blank(), _blank()
    missed_t[2, :2] = MICROANEURYSM
    preds = [both_empty_p, false_alarm_p, missed_p]
    truths = [both_empty_t, false_alarm_t, missed_t]
    r = metrics.segmentation_metrics(preds, truths, classes=(MICROANEURYSM,))
    count = {m: r["per_image_count"][m][MA] for m in ("precision", "recall", "f1", "iou")}
    # Both empty → excluded everywhere; truth empty → no recall; prediction empty → no precision.
    assert count == {"precision": 1, "recall": 1, "f1": 2, "iou": 2}
    assert r["per_image"]["precision"][MA] == 0.0
    assert r["per_image"]["recall"][MA] == 0.0
    assert r["per_image"]["f1"][MA] == 0.0
    # An image where nothing is defined at all leaves the mean undefined (NaN), not 0 or 1.
    r_empty = metrics.segmentation_metrics([both_empty_p], [both_empty_t], classes=(MICROANEURYSM,))
    assert all(math.isnan(r_empty[a][m][MA]) for a in ("pooled", "per_image") for m in metrics.METRICS)
    assert r_empty["per_image_count"]["f1"][MA] == 0


def test_scores_from_counts_nan_only_for_zero_denominators() -> None:
    s = metrics.scores_from_counts(np.array([0, 3]), np.array([0, 1]), np.array([2, 0]))
    assert math.isnan(s["precision"][0]) and s["recall"][0] == 0.0 and s["f1"][0] == 0.0
    assert s["precision"][1] == pytest.approx(0.75) and s["recall"][1] == 1.0
    assert s["f1"][1] == pytest.approx(6 / 7) and s["iou"][1] == pytest.approx(0.75)


def test_average_precision_hand_computed() -> None:
    # Thresholds 0.9 (P 1, R ½), 0.8 (P ½, R ½), 0.7 (P ⅔, R 1): AP = ½·1 + ½·⅔.
    assert metrics.average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)


def test_average_precision_groups_ties() -> None:
    # The tied pair (positive, negative) at 0.5 enters together: P = ⅔ at R = 1, whatever its order.
    # A plain stable sort would put the positive first and report 1.0.
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    assert metrics.average_precision(scores, np.array([1, 1, 0, 0])) == pytest.approx(5 / 6)
    assert metrics.average_precision(scores, np.array([1, 0, 1, 0])) == pytest.approx(5 / 6)


def test_average_precision_perfect_and_undefined() -> None:
    truth = np.array([0, 1, 0, 1, 1])
    assert metrics.average_precision(truth * 0.5 + 0.25, truth) == pytest.approx(1.0)
    assert math.isnan(metrics.average_precision(np.array([0.3, 0.7]), np.array([0, 0])))


def test_binned_ap_equals_exact_when_scores_sit_in_distinct_bins() -> None:
    rng = np.random.default_rng(0)
    bins = 20
    scores = (rng.integers(0, bins, 500) + 0.5) / bins  # bin centres: ties within a bin are real ties
    truth = rng.random(500) < scores
    pos, neg = metrics.score_histograms(scores, truth, bins=bins)
    assert pos.sum() + neg.sum() == 500
    assert metrics.binned_average_precision(pos, neg) == pytest.approx(metrics.average_precision(scores, truth))


def test_binned_ap_close_to_exact_for_continuous_scores() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random(20000)
    truth = rng.random(20000) < scores**2
    exact = metrics.average_precision(scores, truth)
    binned = metrics.binned_average_precision(*metrics.score_histograms(scores, truth, bins=metrics.DEFAULT_AP_BINS))
    assert abs(binned - exact) < 1e-3


def test_confusion_matrix_and_mean_iou() -> None:
    truth = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    cm = metrics.confusion_matrix(pred, truth, num_classes=4)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 2], expected[2, 0] = 1, 1, 2, 1, 1
    np.testing.assert_array_equal(cm, expected)
    iou, miou = metrics.iou_from_confusion(cm)
    # Class 0: TP 1, union 3; class 1: TP 2, union 3; class 2: TP 1, union 2; class 3 absent.
    np.testing.assert_allclose(iou[:3], [1 / 3, 2 / 3, 1 / 2])
    assert math.isnan(iou[3])
    assert miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def _random_set(seed: int, n: int = 5, size: int = 16) -> tuple[list, list, list]:
    rng = np.random.default_rng(seed)
    truths, preds, scores = [], [], []
    for i in range(n):
        t = rng.choice([RETINA, MICROANEURYSM, HAEMORRHAGE], size=(size, size), p=[0.8, 0.1, 0.1]).astype(np.uint8)
        if i == 0:
            t[t == HAEMORRHAGE] = RETINA  # one image without haemorrhages: exercises the exclusions
        s = np.stack([np.clip((t == c) * 0.5 + rng.random((size, size)) * 0.6, 0, 1) for c in (MICROANEURYSM, HAEMORRHAGE)])
        p = np.where(s.max(0) > 0.5, np.array([MICROANEURYSM, HAEMORRHAGE])[s.argmax(0)], RETINA).astype(np.uint8)
        truths.append(t), preds.append(p), scores.append(s)
    return preds, truths, scores


@pytest.mark.parametrize("ap_bins", [None, 50])
def test_accumulator_equals_batch(ap_bins: int | None) -> None:
    preds, truths, scores = _random_set(3)
    classes = (MICROANEURYSM, HAEMORRHAGE)
    batch = metrics.segmentation_metrics(preds, truths, scores, classes=classes, ap_bins=ap_bins)
    acc = metrics.SegmentationMetrics(classes=classes, ap_bins=ap_bins)
    for p, t, s in zip(preds, truths, scores):
        acc.update(p, t, s)
    streamed = acc.compute()
    assert streamed.keys() == batch.keys()
    for agg in ("pooled", "per_image"):
        for m in metrics.METRICS:
            for name in (MA, HE):
                assert streamed[agg][m][name] == pytest.approx(batch[agg][m][name], nan_ok=True), (agg, m, name)
    assert streamed["per_image_count"] == batch["per_image_count"]
    assert streamed["counts"] == batch["counts"]
    assert streamed["confusion_matrix"] == batch["confusion_matrix"]
    assert streamed["per_image_count"]["recall"][HE] == len(preds) - 1
    assert 0.0 < batch["pooled"]["auprc"][MA] <= 1.0


def test_mask_inputs_match_index_maps() -> None:
    preds, truths, scores = _random_set(4, n=2)
    classes = (MICROANEURYSM, HAEMORRHAGE)
    as_masks = [np.stack([m == c for c in classes]) for m in preds]
    truth_masks = [np.stack([m == c for c in classes]) for m in truths]
    a = metrics.segmentation_metrics(preds, truths, scores, classes=classes)
    b = metrics.segmentation_metrics(as_masks, truth_masks, scores, classes=classes)
    assert a["pooled"] == b["pooled"] and "confusion_matrix" not in b


def test_perfect_prediction_scores_one() -> None:
    preds, truths, scores = _random_set(5, n=3)
    perfect = [np.stack([(t == c).astype(np.float64) for c in (MICROANEURYSM, HAEMORRHAGE)]) for t in truths]
    r = metrics.segmentation_metrics(truths, truths, perfect, classes=(MICROANEURYSM, HAEMORRHAGE))
    for agg in ("pooled", "per_image"):
        for m in metrics.METRICS:
            assert r[agg][m][MA] == pytest.approx(1.0)
    assert r["mean_iou"] == pytest.approx(1.0)


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="index map"):
        metrics.segmentation_metrics([np.zeros((2, 4, 4), bool)], [_blank()], classes=(MICROANEURYSM,))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.confusion_matrix(np.zeros((2, 2), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="outside"):
        metrics.confusion_matrix(np.full((2, 2), NUM_CLASSES), np.zeros((2, 2), int))
    acc = metrics.SegmentationMetrics(classes=(MICROANEURYSM,))
    acc.update(_blank(), _blank(), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="every image or for none"):
        acc.update(_blank(), _blank())
    with pytest.raises(ValueError, match="scores of shape"):
        metrics.segmentation_metrics([_blank()], [_blank()], [np.zeros((2, 4, 4))], classes=(MICROANEURYSM,))
