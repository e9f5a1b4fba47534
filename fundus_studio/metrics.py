"""Segmentation metrics for lesion maps: precision, recall, F1 (= Dice), IoU and the area under the
precision–recall curve (average precision), per class, pooled and per image.

Two aggregations, both always reported and named in the result:

- ``"pooled"``: TP, FP, FN summed over every pixel of every image first, then one ratio per class.
  Large lesions and lesion-heavy images dominate.
- ``"per_image"``: the ratio per image, then the mean over images (as Son et al. report their U-Net).
  Every image counts alike, so small misses on nearly clean images weigh heavily.

Conventions (one rule for both aggregations): a ratio is **undefined when its denominator is
zero** and is then NaN (pooled) or the image is left out of that metric's mean (per image):

    truth / prediction in an image   precision     recall        F1      IoU     AUPRC
    both empty                       excluded      excluded      excl.   excl.   excluded
    truth empty, prediction not      0             excluded      0       0       excluded
    truth present, prediction not    excluded      0             0       0       counted
    both present                     TP/(TP+FP)    TP/(TP+FN)    2TP/…   TP/…    counted

``per_image_count`` says how many images entered each mean. AUPRC needs at least one positive pixel.

Average precision is the step-wise area ``Σ (R_k − R_{k−1}) · P_k`` over the distinct score
thresholds (no interpolation, as scikit-learn's ``average_precision_score``): pixels with equal
scores enter together, so the order of tied pixels does not matter. The exact version sorts the
scores; for streaming over large test sets the pooled AUPRC can instead use a histogram of
``ap_bins`` equal bins over ``[0, 1]`` (scores are probabilities; values outside are clipped), which
treats scores within one bin as tied (with 1000 bins it stayed within 1e-3 of the exact value on
continuous scores in the tests).

Inputs: ``pred`` and ``truth`` are either ``(H, W)`` integer index maps in the taxonomy of
``fundus_studio.labels`` (class ``c`` is ``map == c``) or ``(K, H, W)`` boolean masks, one per
evaluated class in the order of ``classes``; ``scores`` are ``(K, H, W)`` probabilities, same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fundus_studio.labels import LESIONS, NAMES, NUM_CLASSES

METRICS: tuple[str, ...] = ("precision", "recall", "f1", "iou", "auprc")
DEFAULT_AP_BINS = 1000  # histogram bins over [0, 1] for the streamed pooled AUPRC


# ----------------------------------------------------------------------------------------------
# Building blocks


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` as float64, NaN where ``den == 0``."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def scores_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 (= Dice) and IoU from pixel counts; NaN where undefined (denominator 0)."""
    tp, fp, fn = (np.asarray(a, dtype=np.int64) for a in (tp, fp, fn))
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
    }


def average_precision(scores: np.ndarray, truth: np.ndarray) -> float:
    """Exact area under the precision–recall curve of ``scores`` against binary ``truth``.

    Any shapes (flattened together). Ties are grouped: each distinct score is one threshold.
    NaN if ``truth`` has no positive.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    t = np.asarray(truth, dtype=bool).ravel()
    if s.shape != t.shape:
        raise ValueError(f"average_precision: {s.size} scores but {t.size} truth values")
    positives = int(t.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    s, t = s[order], t[order]
    tp = np.cumsum(t, dtype=np.int64)
    # The last index of each run of equal scores: the point where that threshold admits the whole run.
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tp = tp[last]
    predicted = last + 1
    precision = tp / predicted
    recall = tp / positives
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def score_histograms(scores: np.ndarray, truth: np.ndarray, *, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts of positive and of negative pixels per score bin (``bins`` equal bins over [0, 1])."""
    s = np.clip(np.asarray(scores, dtype=np.float64).ravel(), 0.0, 1.0)
    t = np.asarray(truth, dtype=bool).ravel()
    idx = np.minimum((s * bins).astype(np.int64), bins - 1)
    pos = np.bincount(idx[t], minlength=bins)
    neg = np.bincount(idx[~t], minlength=bins)
    return pos, neg


def binned_average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """Average precision from per-bin counts of positives and negatives (bins in ascending score).

    Each bin is one threshold (its scores count as tied). NaN without positives.
    """
    pos = np.asarray(pos, dtype=np.int64)[::-1]
    neg = np.asarray(neg, dtype=np.int64)[::-1]
    total = int(pos.sum())
    if total == 0:
        return float("nan")
    keep = (pos + neg) > 0
    tp = np.cumsum(pos)[keep]
    predicted = np.cumsum(pos + neg)[keep]
    precision = tp / predicted
    recall = tp / total
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def confusion_matrix(pred: np.ndarray, truth: np.ndarray, *, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 pixel counts: row = true class, column = predicted class.

    ``pred`` and ``truth`` are integer index maps of the same shape, values in ``0..num_classes-1``.
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"confusion_matrix: prediction {pred.shape} and truth {truth.shape} differ in shape")
    for name, arr in (("prediction", pred), ("truth", truth)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"confusion_matrix: {name} must hold integer class indices, got {arr.dtype}")
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} has values outside 0..{num_classes - 1}")
    flat = truth.astype(np.int64).ravel() * num_classes + pred.astype(np.int64).ravel()
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_from_confusion(cm: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-class IoU ``(C,)`` (NaN for a class absent from truth and prediction) and their mean
    over the classes where it is defined (mean IoU)."""
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm)
    iou = _ratio(tp, cm.sum(0) + cm.sum(1) - tp)
    defined = ~np.isnan(iou)
    return iou, float(iou[defined].mean()) if defined.any() else float("nan")


def _as_masks(x: np.ndarray, classes: Sequence[int], *, what: str) -> np.ndarray:
    """Index map ``(H, W)`` or masks ``(K, H, W)`` → boolean masks ``(K, H, W)``."""
    x = np.asarray(x)
    if x.ndim == 2:
        if not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"{what}: an (H, W) map must hold integer class indices, got {x.dtype}")
        return np.stack([x == c for c in classes])
    if x.ndim == 3 and x.shape[0] == len(classes):
        return x.astype(bool, copy=False)
    raise ValueError(
        f"{what}: expected an (H, W) index map or ({len(classes)}, H, W) masks for classes "
        f"{list(classes)}, got shape {x.shape}"
    )


def _check_scores(scores: np.ndarray, shape: tuple[int, ...], *, what: str) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.shape != shape:
        raise ValueError(f"{what}: expected scores of shape {shape} (one map per evaluated class), got {scores.shape}")
    return scores


def _mask_counts(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN per class for ``(K, ...)`` boolean masks, summed over the remaining axes."""
    axes = tuple(range(1, pred.ndim))
    tp = np.count_nonzero(pred & truth, axis=axes)
    fp = np.count_nonzero(pred & ~truth, axis=axes)
    fn = np.count_nonzero(~pred & truth, axis=axes)
    return tp.astype(np.int64), fp.astype(np.int64), fn.astype(np.int64)


def _report(
    names: list[str], *, pooled: dict[str, np.ndarray], per_image_sum: dict[str, np.ndarray],
    per_image_count: dict[str, np.ndarray], counts: dict[str, np.ndarray], images: int,
    confusion: np.ndarray | None,
) -> dict:
    """The nested, JSON-friendly result: ``metric → class name → value`` per aggregation."""
    def by_class(values: np.ndarray) -> dict[str, float]:
        return {n: float(v) for n, v in zip(names, values)}

    def nanmean(values: np.ndarray) -> float:
        v = values[~np.isnan(values)]
        return float(v.mean()) if v.size else float("nan")

    per_image = {m: _ratio(per_image_sum[m], per_image_count[m]) for m in METRICS}
    out: dict = {
        "classes": list(names),
        "images": images,
        "pooled": {m: by_class(pooled[m]) for m in METRICS},
        "per_image": {m: by_class(per_image[m]) for m in METRICS},
        "per_image_count": {m: {n: int(c) for n, c in zip(names, per_image_count[m])} for m in METRICS},
        "pooled_class_mean": {m: nanmean(pooled[m]) for m in METRICS},
        "per_image_class_mean": {m: nanmean(per_image[m]) for m in METRICS},
        "counts": {k: {n: int(c) for n, c in zip(names, v)} for k, v in counts.items()},
    }
    if confusion is not None:
        iou, miou = iou_from_confusion(confusion)
        out["confusion_matrix"] = confusion.tolist()
        out["confusion_iou"] = [float(v) for v in iou]
        out["mean_iou"] = miou
    return out


def _class_names(classes: Sequence[int], names: Sequence[str] | None) -> list[str]:
    if names is None:
        return [NAMES[c] if 0 <= c < len(NAMES) else str(c) for c in classes]
    if len(names) != len(classes):
        raise ValueError(f"{len(names)} names given for {len(classes)} classes")
    return list(names)


# ----------------------------------------------------------------------------------------------
# Streaming accumulator


class SegmentationMetrics:
    """Streaming evaluation: ``update(pred, truth, scores)`` per image, then ``compute()``.

    Keeps per class the pooled TP/FP/FN, the running per-image sums and counts, the pooled AUPRC
    state (a score histogram of ``ap_bins`` bins, or, with ``ap_bins=None``, every score for the
    exact value: memory grows with the test set) and, for index-map inputs, the confusion matrix
    over all ``num_classes`` classes.

    Args:
        classes: taxonomy indices to evaluate (default: the lesion classes).
        names: their names in the result (default: the taxonomy names).
        ap_bins: bins of the pooled AUPRC histogram; None = exact.
        num_classes: size of the confusion matrix for index-map inputs.
    """

    def __init__(
        self, *, classes: Sequence[int] = LESIONS, names: Sequence[str] | None = None,
        ap_bins: int | None = DEFAULT_AP_BINS, num_classes: int = NUM_CLASSES,
    ) -> None:
        if len(classes) == 0:
            raise ValueError("SegmentationMetrics: give at least one class to evaluate")
        if ap_bins is not None and ap_bins < 1:
            raise ValueError(f"SegmentationMetrics: ap_bins must be >= 1 or None, got {ap_bins}")
        self.classes = tuple(int(c) for c in classes)
        self.names = _class_names(self.classes, names)
        self.ap_bins = ap_bins
        self.num_classes = num_classes
        k = len(self.classes)
        self._counts = {key: np.zeros(k, np.int64) for key in ("tp", "fp", "fn")}
        self._sum = {m: np.zeros(k) for m in METRICS}
        self._n = {m: np.zeros(k, np.int64) for m in METRICS}
        self._hist = np.zeros((k, 2, ap_bins or 1), np.int64)  # [class, positive/negative, bin]
        self._all_scores: list[list[np.ndarray]] = [[] for _ in range(k)]
        self._all_truth: list[list[np.ndarray]] = [[] for _ in range(k)]
        self._with_scores: bool | None = None
        self._confusion: np.ndarray | None = None
        self._index_maps: bool | None = None
        self.images = 0

    def update(self, pred: np.ndarray, truth: np.ndarray, scores: np.ndarray | None = None) -> None:
        """Add one image: index maps ``(H, W)`` or masks ``(K, H, W)``; ``scores (K, H, W)`` optional
        (but given for every image or none)."""
        p = _as_masks(pred, self.classes, what="prediction")
        t = _as_masks(truth, self.classes, what="truth")
        if p.shape != t.shape:
            raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
        if self._with_scores is None:
            self._with_scores = scores is not None
        elif self._with_scores != (scores is not None):
            raise ValueError("SegmentationMetrics: give scores for every image or for none")
        index_maps = np.asarray(pred).ndim == 2 and np.asarray(truth).ndim == 2
        if self._index_maps is None:
            self._index_maps = index_maps
        if self._index_maps and index_maps:
            cm = confusion_matrix(pred, truth, num_classes=self.num_classes)
            self._confusion = cm if self._confusion is None else self._confusion + cm
        else:
            self._index_maps = False
            self._confusion = None

        tp, fp, fn = _mask_counts(p, t)
        for key, v in (("tp", tp), ("fp", fp), ("fn", fn)):
            self._counts[key] += v
        for m, v in scores_from_counts(tp, fp, fn).items():
            ok = ~np.isnan(v)
            self._sum[m][ok] += v[ok]
            self._n[m] += ok
        if scores is not None:
            s = _check_scores(scores, p.shape, what="scores")
            for k in range(len(self.classes)):
                ap = average_precision(s[k], t[k])
                if not np.isnan(ap):
                    self._sum["auprc"][k] += ap
                    self._n["auprc"][k] += 1
                if self.ap_bins is None:
                    self._all_scores[k].append(np.asarray(s[k], np.float64).ravel())
                    self._all_truth[k].append(t[k].ravel())
                else:
                    pos, neg = score_histograms(s[k], t[k], bins=self.ap_bins)
                    self._hist[k, 0] += pos
                    self._hist[k, 1] += neg
        self.images += 1

    def compute(self) -> dict:
        """The result (see :func:`segmentation_metrics`); AUPRC is NaN when no scores were given."""
        tp, fp, fn = (self._counts[k] for k in ("tp", "fp", "fn"))
        pooled = scores_from_counts(tp, fp, fn)
        k = len(self.classes)
        if not self._with_scores:
            pooled["auprc"] = np.full(k, np.nan)
        elif self.ap_bins is None:
            pooled["auprc"] = np.array([
                average_precision(np.concatenate(self._all_scores[i]), np.concatenate(self._all_truth[i]))
                for i in range(k)
            ])
        else:
            pooled["auprc"] = np.array([binned_average_precision(self._hist[i, 0], self._hist[i, 1]) for i in range(k)])
        return _report(
            self.names, pooled=pooled, per_image_sum=self._sum, per_image_count=self._n, counts=self._counts,
            images=self.images, confusion=self._confusion if self._index_maps else None,
        )


# ----------------------------------------------------------------------------------------------
# Whole test set at once


def segmentation_metrics(
    preds: Sequence[np.ndarray], truths: Sequence[np.ndarray], scores: Sequence[np.ndarray] | None = None, *,
    classes: Sequence[int] = LESIONS, names: Sequence[str] | None = None, ap_bins: int | None = None,
    num_classes: int = NUM_CLASSES,
) -> dict:
    """Metrics of a whole test set held in memory (images may differ in size).

    Returns a dict with ``"pooled"`` and ``"per_image"`` (each ``metric → class name → value`` for
    precision, recall, f1, iou, auprc), ``"per_image_count"`` (images in each per-image mean),
    ``"pooled_class_mean"`` / ``"per_image_class_mean"`` (mean over classes, NaN classes skipped),
    ``"counts"`` (pooled tp/fp/fn), ``"images"``, and for index-map inputs ``"confusion_matrix"``
    (rows = truth), ``"confusion_iou"`` and ``"mean_iou"`` over all ``num_classes`` classes.
    ``ap_bins=None`` (default) computes the pooled AUPRC exactly.
    """
    if len(preds) != len(truths) or (scores is not None and len(scores) != len(preds)):
        raise ValueError("segmentation_metrics: preds, truths (and scores) must hold the same number of images")
    if len(preds) == 0:
        raise ValueError("segmentation_metrics: no images")
    classes = tuple(int(c) for c in classes)
    names_ = _class_names(classes, names)
    p_masks = [_as_masks(p, classes, what="prediction") for p in preds]
    t_masks = [_as_masks(t, classes, what="truth") for t in truths]
    for p, t in zip(p_masks, t_masks):
        if p.shape != t.shape:
            raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    # Pooled: concatenate every image's pixels per class, count once.
    p_all = np.concatenate([p.reshape(len(classes), -1) for p in p_masks], axis=1)
    t_all = np.concatenate([t.reshape(len(classes), -1) for t in t_masks], axis=1)
    counts = dict(zip(("tp", "fp", "fn"), _mask_counts(p_all, t_all)))
    pooled = scores_from_counts(counts["tp"], counts["fp"], counts["fn"])
    # Per image: one row per image, NaN where undefined, then the mean over the defined rows.
    rows = {m: [] for m in METRICS}
    for i, (p, t) in enumerate(zip(p_masks, t_masks)):
        for m, v in scores_from_counts(*_mask_counts(p, t)).items():
            rows[m].append(v)
        if scores is not None:
            s = _check_scores(scores[i], p.shape, what="scores")
            rows["auprc"].append(np.array([average_precision(s[k], t[k]) for k in range(len(classes))]))
        else:
            rows["auprc"].append(np.full(len(classes), np.nan))
    table = {m: np.stack(v) for m, v in rows.items()}  # (N, K)
    per_image_count = {m: (~np.isnan(v)).sum(0) for m, v in table.items()}
    per_image_sum = {m: np.nansum(v, axis=0) for m, v in table.items()}
    if scores is None:
        pooled["auprc"] = np.full(len(classes), np.nan)
    else:
        s_all = np.concatenate([np.asarray(s, np.float64).reshape(len(classes), -1) for s in scores], axis=1)
        if ap_bins is None:
            pooled["auprc"] = np.array([average_precision(s_all[k], t_all[k]) for k in range(len(classes))])
        else:
            pooled["auprc"] = np.array([
                binned_average_precision(*score_histograms(s_all[k], t_all[k], bins=ap_bins)) for k in range(len(classes))
            ])
    confusion = None
    if all(np.asarray(p).ndim == 2 for p in preds) and all(np.asarray(t).ndim == 2 for t in truths):
        confusion = sum(confusion_matrix(p, t, num_classes=num_classes) for p, t in zip(preds, truths))
    return _report(
        names_, pooled=pooled, per_image_sum=per_image_sum, per_image_count=per_image_count, counts=counts,
        images=len(preds), confusion=confusion,
    )
