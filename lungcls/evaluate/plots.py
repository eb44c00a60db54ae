"""PNG plots of an evaluation: ROC with a bootstrap band, precision-recall, reliability,
score distributions and the confusion matrix at the threshold.

Plots use matplotlib's object-oriented `Figure`, which renders with Agg and never registers
with pyplot: no global backend switch, and nothing is left open once the bytes are taken.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve

from lungcls.evaluate.bootstrap import roc_band
from lungcls.evaluate.metrics import (
    ECE_BINS,
    binary_metrics,
    calibration_bins,
    has_both_classes,
)

PLOTS: dict[str, str] = {
    "roc.png": "ROC curve with bootstrap band",
    "pr.png": "Precision-recall curve",
    "reliability.png": "Reliability diagram",
    "scores.png": "Score distributions by class",
    "confusion.png": "Confusion matrix at the threshold",
}


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    # No Software/date metadata, so equal inputs give byte-identical files.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()


def _not_estimable_plot(title: str) -> bytes:
    """A placeholder for a curve that needs both classes, saying why it is missing."""
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    axes.text(0.5, 0.5, "not estimable:\nthe samples hold one class only", ha="center")
    axes.set(title=title, xticks=[], yticks=[])
    return _png(figure)


def _roc_plot(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: Sequence[str],
    threshold: float,
    at: dict[str, float],
    rounds: int,
    seed: int,
) -> bytes:
    grid, tpr, lower, upper = roc_band(labels, scores, groups, rounds, seed)
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    axes.fill_between(grid, lower, upper, alpha=0.25, label="95 % patient bootstrap band")
    axes.plot(grid, tpr, label=f"ROC (AUC {at['roc_auc']:.3f})")
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance")
    marker = f"at threshold {threshold:.3f}"
    axes.plot(1 - at["specificity"], at["sensitivity"], "o", color="black", label=marker)
    axes.set(
        xlabel="False positive rate (1 − specificity)",
        ylabel="Sensitivity",
        title="ROC curve",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    axes.legend(loc="lower right")
    return _png(figure)


def _pr_plot(
    labels: np.ndarray, scores: np.ndarray, threshold: float, at: dict[str, float]
) -> bytes:
    precision, recall, _ = precision_recall_curve(labels, scores)
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    axes.step(recall, precision, where="post", label=f"PR (AUC {at['pr_auc']:.3f})")
    axes.axhline(labels.mean(), linestyle="--", color="grey", label="prevalence")
    marker = f"at threshold {threshold:.3f}"
    axes.plot(at["sensitivity"], at["ppv"], "o", color="black", label=marker)
    axes.set(
        xlabel="Recall (sensitivity)",
        ylabel="Precision (PPV)",
        title="Precision-recall curve",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    axes.legend(loc="lower left")
    return _png(figure)


def _reliability_plot(labels: np.ndarray, scores: np.ndarray, at: dict[str, float]) -> bytes:
    mean_score, fraction_positive, count = calibration_bins(labels, scores)
    figure = Figure(figsize=(5, 6.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.plot(mean_score, fraction_positive, "o-", label=f"model (ECE {at['ece']:.3f})")
    top.set(
        xlabel="Mean predicted probability in bin",
        ylabel="Fraction positive",
        title="Reliability diagram",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    top.legend(loc="upper left")
    edges = np.linspace(0, 1, ECE_BINS + 1)
    bars = bottom.bar(edges[:-1], count, width=1 / ECE_BINS, align="edge", edgecolor="white")
    bottom.bar_label(bars, fontsize=8)
    bottom.margins(y=0.3)  # room for the count labels above the bars
    bottom.set(xlabel="Predicted probability (bins)", ylabel="Samples", xlim=(0, 1))
    return _png(figure)


def _score_plot(labels: np.ndarray, scores: np.ndarray, threshold: float) -> bytes:
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    edges = np.linspace(0, 1, 21)
    axes.hist(scores[labels == 0], bins=edges, alpha=0.6, label="negative (benign)")
    axes.hist(scores[labels == 1], bins=edges, alpha=0.6, label="positive (malignant)")
    axes.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3f}")
    axes.set(
        xlabel="Predicted probability of malignancy",
        ylabel="Samples",
        title="Scores by true class",
        xlim=(0, 1),
    )
    axes.legend()
    return _png(figure)


def _confusion_plot(at: dict[str, float], threshold: float) -> bytes:
    matrix = np.array([[at["tn"], at["fp"]], [at["fn"], at["tp"]]])
    figure = Figure(figsize=(4.5, 4), layout="constrained")
    axes = figure.subplots()
    axes.imshow(matrix, cmap="Blues")
    for (row, column), value in np.ndenumerate(matrix):
        # Dark cells need light text to stay readable.
        light = value > matrix.max() / 2
        axes.text(
            column,
            row,
            str(value),
            ha="center",
            va="center",
            fontsize=14,
            color="white" if light else "black",
        )
    axes.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["negative", "positive"],
        yticklabels=["negative", "positive"],
        xlabel="Predicted",
        ylabel="Actual",
        title=f"Confusion matrix at threshold {threshold:.3f}",
    )
    return _png(figure)


def render_plots(
    labels: np.ndarray,
    scores: np.ndarray,
    groups: Sequence[str],
    threshold: float,
    rounds: int,
    seed: int,
) -> dict[str, bytes]:
    """PNG plots of one split's predictions, keyed by file name (the keys of `PLOTS`).

    Args:
        labels: True classes, 0 or 1; with one class only, the ROC and precision-recall
            plots say they are not estimable.
        scores: Predicted probabilities of class 1.
        groups: Patient pseudonym of each sample, used only for resampling, never drawn.
        threshold: The operating threshold marked on the plots.
        rounds: Bootstrap rounds for the ROC band.
        seed: Seed of the bootstrap.

    Returns:
        File name -> PNG bytes; equal inputs give equal bytes.
    """
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=float)
    at = binary_metrics(y, s, threshold)
    both = has_both_classes(y)
    return {
        "roc.png": _roc_plot(y, s, groups, threshold, at, rounds, seed)
        if both
        else _not_estimable_plot("ROC curve"),
        "pr.png": _pr_plot(y, s, threshold, at) if both else _not_estimable_plot("PR curve"),
        "reliability.png": _reliability_plot(y, s, at),
        "scores.png": _score_plot(y, s, threshold),
        "confusion.png": _confusion_plot(at, threshold),
    }
