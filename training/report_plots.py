"""The quality report's figures (``training.report``): PNG files drawn with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fundus_studio import labels

DPI = 100


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def lesions(result: dict[str, Any], path: Path) -> Path:
    """Per lesion class, the mean pixel fraction per grade, generated vs real; then the diversity."""
    plt = _pyplot()
    grades = sorted(result["per_grade"], key=int)
    panels = len(labels.LESIONS) + 1
    cols = 4
    fig, axes = plt.subplots((panels + cols - 1) // cols, cols, figsize=(4 * cols, 3.2 * ((panels + cols - 1) // cols)),
                             squeeze=False)
    x = np.array([int(g) for g in grades])
    for ax, k in zip(axes.flat, labels.LESIONS):
        name = labels.NAMES[k]
        for who, style in (("generated", "o-"), ("real", "s--")):
            y = [result["per_grade"][g]["classes"][name].get(f"{who}_fraction") for g in grades]
            ax.plot(x, [np.nan if v is None else 100 * v for v in y], style, label=who)
        ax.set(title=name, xlabel="DR grade", ylabel="% of pixels", xticks=x)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes.flat[len(labels.LESIONS)]
    for who, style in (("generated", "o-"), ("real", "s--")):
        y = [result["per_grade"][g][f"diversity_{who}"] for g in grades]
        ax.plot(x, [np.nan if v is None else v for v in y], style, label=who)
    ax.set(title="within-grade diversity", xlabel="DR grade", ylabel="pixels differing between two maps", xticks=x)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    return _save(fig, path)


def samples(maps: np.ndarray, renders: np.ndarray, *, path: Path) -> Path:
    """A row per grade: each generated map (taxonomy colours) beside its render."""
    plt = _pyplot()
    grades, per = maps.shape[:2]
    fig, axes = plt.subplots(grades, 2 * per, figsize=(2 * per * 1.6, grades * 1.7), squeeze=False)
    for g in range(grades):
        for i in range(per):
            for j, image in enumerate((labels.to_color(maps[g, i]), renders[g, i])):
                ax = axes[g, 2 * i + j]
                ax.imshow(image)
                ax.set_xticks([])
                ax.set_yticks([])
        axes[g, 0].set_ylabel(f"grade {g}")
    return _save(fig, path)


def render_iou(result: dict[str, Any], path: Path) -> Path:
    """Pooled IoU per class the segmenter predicts, on the real photos and on the renders."""
    plt = _pyplot()
    names = result["segmenter_classes"]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names)), 3.8))
    for offset, who in ((-0.2, "real"), (0.2, "render")):
        iou = [result["segmentation"][who]["pooled"]["iou"][n] for n in names]
        ax.bar(x + offset, [np.nan if v is None else v for v in iou], width=0.4,
               label="real photos" if who == "real" else "renders of their label maps")
    ax.set(xticks=x, ylabel="IoU (pooled)", ylim=(0, 1), title=f"U-Net segmentation, {result['count']} held-out pairs")
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    return _save(fig, path)


def downstream(summary: dict[str, Any], *, fractions: tuple[float, ...], classes: tuple[str, ...],
               sources: dict[str, str], path: Path) -> Path:
    """F1 (pooled and per image) against the synthetic share, one line per source; the real-only
    point (share 0) is shared by every line."""
    plt = _pyplot()
    aggregations = {"pooled": "pooled", "per_image": "per image"}
    fig, axes = plt.subplots(len(classes), len(aggregations), figsize=(10, 4 * len(classes)), squeeze=False)
    first = next(iter(summary))
    for row, name in enumerate(classes):
        for col, (agg, agg_label) in enumerate(aggregations.items()):
            ax = axes[row, col]
            for source, label in sources.items():
                if source not in summary:
                    continue
                points = [(0.0, summary[first][name]["0"])] + [
                    (f, summary[source][name][f"{f:g}"]) for f in fractions if f > 0 and f"{f:g}" in summary[source][name]]
                stats = [s[agg]["f1"] for _, s in points]
                mean = [np.nan if s["mean"] is None else s["mean"] for s in stats]
                sd = [0.0 if s["sd"] is None else s["sd"] for s in stats]
                ax.errorbar([100 * f for f, _ in points], mean, yerr=sd, marker="o", capsize=4, label=label)
            ax.set(title=f"{name}: F1 ({agg_label})", xlabel="synthetic share of the training set (%)", ylabel="F1",
                   xticks=[100 * f for f in fractions], ylim=(0, 1))
            ax.grid(alpha=0.3)
            ax.legend()
    return _save(fig, path)


def image_rows(rows: list[list[np.ndarray]], *, titles: list[str], row_labels: list[str], path: Path) -> Path:
    """A grid of ``(H, W, 3)`` uint8 images: one row per entry of ``rows``, columns titled ``titles``."""
    plt = _pyplot()
    cols = len(titles)
    fig, axes = plt.subplots(len(rows), cols, figsize=(3.2 * cols, 3.3 * len(rows)), squeeze=False)
    for r, (row, label) in enumerate(zip(rows, row_labels)):
        for c, image in enumerate(row):
            ax = axes[r, c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=9)
        axes[r, 0].set_ylabel(label, fontsize=8)
    return _save(fig, path)
