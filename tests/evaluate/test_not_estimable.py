"""Numbers a split cannot support come out as not estimable, never as a number: a class
missing (point estimates) and too few patients of a class (bootstrap intervals), with the
patients that are missing in the report, its documents and its headline."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lungcls.evaluate.bootstrap import bootstrap_intervals
from lungcls.evaluate.metrics import (
    METRIC_CLASSES,
    METRIC_NAMES,
    binary_metrics,
    patients_per_class,
)
from lungcls.evaluate.render import render_html, render_markdown
from lungcls.evaluate.report import ClassSupport, EvaluationReport
from tests.support import OLD_ROOT

REPORT_JSON = "models/lung-nodule-cnn/v1/evaluations/lung-nodules-v1/report.json"


def split(positives: int, negatives: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """One sample per patient: positives score around 0.7, negatives around 0.3."""
    rng = np.random.default_rng(seed)
    labels = np.array([1] * positives + [0] * negatives)
    scores = np.clip(0.3 + 0.4 * labels + rng.normal(0, 0.15, labels.size), 0, 1)
    groups = np.array([f"pseudo-{i:03d}" for i in range(labels.size)])
    return labels, scores, groups


def test_a_missing_class_gives_nan_never_zero() -> None:
    negatives_only = binary_metrics(np.zeros(4, dtype=int), np.array([0.1, 0.2, 0.6, 0.7]), 0.5)
    assert math.isnan(negatives_only["sensitivity"]) and math.isnan(negatives_only["roc_auc"])
    assert negatives_only["specificity"] == 0.5
    positives_only = binary_metrics(np.ones(3, dtype=int), np.array([0.1, 0.6, 0.7]), 0.5)
    assert math.isnan(positives_only["specificity"]) and math.isnan(positives_only["roc_auc"])
    nothing_predicted = binary_metrics(np.array([0, 1]), np.array([0.1, 0.2]), 0.5)
    assert math.isnan(nothing_predicted["ppv"])  # no predicted positive: not 0.0


def test_patients_are_counted_per_class() -> None:
    labels = np.array([1, 0, 1, 1, 0])
    groups = np.array(["a", "a", "b", "b", "c"])  # a has a benign and a malignant nodule
    assert patients_per_class(labels, groups) == {0: 2, 1: 2}
    with pytest.raises(ValueError):
        patients_per_class(labels, groups[:4])


def test_the_issue_split_gives_no_interval_for_what_it_cannot_support() -> None:
    # 7 samples, one negative scored highest: "ROC AUC 0.000, 95 % CI 0.000-0.000" before.
    labels = np.array([1, 1, 1, 1, 1, 1, 0])
    scores = np.array([0.5, 0.55, 0.6, 0.62, 0.64, 0.66, 0.9])
    groups = np.array([f"p{i}" for i in range(7)])
    old = bootstrap_intervals(labels, scores, groups, 0.5, rounds=300, seed=0)
    assert old["roc_auc"] == (0.0, 0.0)  # what one negative patient gives without the rule
    intervals = bootstrap_intervals(
        labels, scores, groups, 0.5, rounds=300, seed=0, min_patients_per_class=5
    )
    for name in METRIC_NAMES:
        low, high = intervals[name]
        if 0 in METRIC_CLASSES[name]:  # measured on patients without cancer: only one
            assert math.isnan(low) and math.isnan(high), name
        else:
            assert low == pytest.approx(1.0) and high == pytest.approx(1.0), name
    support = ClassSupport.of(labels, groups, 5)
    assert (support.patients_with_cancer, support.patients_without_cancer) == (6, 1)
    assert not support.estimable and support.missing(0) == 4 and support.missing(1) == 0
    assert (
        support.not_estimable("roc_auc") == "not estimable (needs 4 more patients without cancer)"
    )
    assert support.not_estimable("sensitivity") == "not estimable"  # enough with cancer
    assert support.counts() == "6 patients with cancer and 1 without cancer (5 of each needed)"


def test_both_classes_short_name_both_shortfalls() -> None:
    labels, _, groups = split(2, 1)
    support = ClassSupport.of(labels, groups, needed=5)
    assert support.shortfall() == "needs 3 more patients with cancer and 4 more without cancer"
    assert support.not_estimable("specificity") == (
        "not estimable (needs 4 more patients without cancer)"
    )
    labels, _, groups = split(5, 5)
    assert ClassSupport.of(labels, groups, needed=5).shortfall() is None


def test_a_split_like_the_demos_is_estimable() -> None:
    labels, scores, groups = split(12, 12, seed=3)
    intervals = bootstrap_intervals(
        labels, scores, groups, 0.5, rounds=300, seed=0, min_patients_per_class=5
    )
    for name in METRIC_NAMES:
        low, high = intervals[name]
        assert not math.isnan(low) and low <= high, name
    assert ClassSupport.of(labels, groups, 5).estimable


def test_rounds_without_a_class_are_not_scored_zero() -> None:
    # Two patients with cancer among twelve: about 11 % of the rounds draw neither. Every
    # negative scores above the threshold, so such a round would have PPV and F1 0.0 and put
    # the lower bound at 0; a round with a positive has PPV of at least 1/12.
    labels = np.array([1, 1] + [0] * 10)
    scores = np.array([0.9, 0.9] + [0.8] * 10)
    groups = np.array([f"p{i}" for i in range(12)])
    intervals = bootstrap_intervals(labels, scores, groups, 0.5, rounds=500, seed=0)
    assert intervals["ppv"][0] >= 1 / 12 - 1e-9
    assert intervals["f1"][0] > 0.0
    assert intervals["sensitivity"] == (1.0, 1.0)


def test_min_patients_per_class_must_be_positive() -> None:
    with pytest.raises(ValueError):
        bootstrap_intervals(*split(5, 5), 0.5, rounds=10, seed=0, min_patients_per_class=0)


def _short_report() -> EvaluationReport:
    """The 0.1.0 root's real report (3 test samples, 1 positive), as a lungcls that counts
    patients per class writes it: intervals of the short classes null."""
    report = EvaluationReport.from_json((OLD_ROOT / REPORT_JSON).read_text(), REPORT_JSON)
    block = report.metrics.at_operating_point
    ci95 = {name: (None, None) for name in block.ci95}
    support = ClassSupport(patients_with_cancer=1, patients_without_cancer=2, needed_per_class=5)
    metrics = report.metrics.model_copy(
        update={"at_operating_point": block.model_copy(update={"ci95": ci95})}
    )
    return report.model_copy(update={"class_support": support, "metrics": metrics})


def test_documents_and_headline_say_what_is_missing() -> None:
    report = _short_report()
    markdown = render_markdown(report)
    assert "| ROC AUC | roc_auc |" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| ROC AUC |"))
    # At the operating point: the value the samples define, and why there is no interval.
    assert row.endswith(
        "| 1.000; interval not estimable (needs 4 more patients with cancer and 3 more "
        "without cancer) |"
    )
    sensitivity = next(line for line in markdown.splitlines() if line.startswith("| Sens"))
    assert "interval not estimable (needs 4 more patients with cancer) |" in sensitivity
    assert "1 patient with cancer and 2 without cancer (5 of each needed)" in markdown
    page = render_html(report, {})
    assert "interval not estimable (needs 4 more patients with cancer)" in page
    headline = report.headline()
    assert headline.startswith("model lung-nodule-cnn v1 on lung-nodules v1 test;")
    assert "test has 1 patient with cancer and 2 without cancer (5 of each needed)" in headline
    assert headline.endswith(
        "intervals not estimable (needs 4 more patients with cancer and 3 more without cancer)"
    )
    rows = {row["metric"]: row for row in report.key_metrics_rows()}
    assert rows["roc_auc"]["95% CI low"] is None and rows["roc_auc"]["value"] == 1.0


def test_a_value_the_split_does_not_define_is_not_estimable_in_the_documents() -> None:
    report = _short_report()
    block = report.metrics.at_operating_point
    values = {**block.values, "sensitivity": None}
    metrics = report.metrics.model_copy(
        update={"at_operating_point": block.model_copy(update={"values": values})}
    )
    markdown = render_markdown(report.model_copy(update={"metrics": metrics}))
    row = next(line for line in markdown.splitlines() if line.startswith("| Sens"))
    assert row.endswith("| not estimable (needs 4 more patients with cancer) |")


def test_class_support_is_written_and_old_reports_load_without_it() -> None:
    old = EvaluationReport.from_json((OLD_ROOT / REPORT_JSON).read_text(), REPORT_JSON)
    assert old.class_support is None and b"class_support" not in old.to_json()
    report = _short_report()
    again = EvaluationReport.from_json(report.to_json())
    assert again == report
    assert again.class_support is not None and again.class_support.missing(1) == 4
    assert again.metrics.at_operating_point.ci95["roc_auc"] == (None, None)
