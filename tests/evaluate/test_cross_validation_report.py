"""The cross-validation part of the evaluation report: the folds' spread, the pooled
out-of-fold AUC, and the sentence a report shows when the folds disagree widely."""

from __future__ import annotations

import html
import json

import pytest

from lungcls.evaluate.render import render_html, render_markdown
from lungcls.evaluate.report import (
    DEFAULT_FOLD_SPREAD_LIMIT,
    CrossValidationSummary,
    EvaluationReport,
    FoldScore,
)
from tests.support import OLD_ROOT

REPORT_JSON = "models/lung-nodule-cnn/v1/evaluations/lung-nodules-v1/report.json"
DISAGREE = "The folds disagree widely"


def folds(*aucs: float | None) -> CrossValidationSummary:
    return CrossValidationSummary(
        folds=[
            FoldScore(fold=k, patients=20, positives=9, negatives=11, roc_auc=auc, best_epoch=3 + k)
            for k, auc in enumerate(aucs)
        ],
        oof_roc_auc=0.905,
        oof_roc_auc_ci95=(0.861, 0.944),
    )


def with_cv(cv: CrossValidationSummary | None) -> EvaluationReport:
    """The 0.1.0 root's real report with a cross-validation part."""
    report = EvaluationReport.from_json((OLD_ROOT / REPORT_JSON).read_text(), REPORT_JSON)
    return report.model_copy(update={"cross_validation": cv})


def test_spread_is_max_minus_min_of_the_estimable_folds() -> None:
    assert folds(0.9, 0.95, None, 0.82).spread == pytest.approx(0.13)
    assert folds(0.9, None).spread is None
    assert "1 of 2 folds has an estimable ROC AUC" in folds(0.9, None).why_no_spread()
    assert folds().spread is None


def test_cross_validation_round_trips_and_is_left_out_when_absent() -> None:
    plain = with_cv(None)
    assert "cross_validation" not in json.loads(plain.to_json())
    report = with_cv(folds(0.9, None, 0.8))
    written = json.loads(report.to_json())
    assert written["cross_validation"]["folds"][1]["roc_auc"] is None
    assert written["cross_validation"]["oof_roc_auc_ci95"] == [0.861, 0.944]
    again = EvaluationReport.from_json(report.to_json())
    assert again == report and again.cross_validation.spread == pytest.approx(0.1)


def test_documents_show_the_folds_spread_and_pooled_auc() -> None:
    report = with_cv(folds(0.91, 0.93, None, 0.88, 0.9))
    markdown = render_markdown(report)
    assert "## Cross-validation" in markdown
    assert "| fold | patients | positives | negatives | ROC AUC | best epoch |" in markdown
    assert "| 0 | 20 | 9 | 11 | 0.910 | 3 |" in markdown
    assert "| 2 | 20 | 9 | 11 | n/a | 5 |" in markdown
    assert "Spread of the fold ROC AUCs (max − min): 0.050." in markdown
    assert "Pooled out-of-fold ROC AUC (patient bootstrap 95 % CI): 0.905 (0.861–0.944)." in (
        markdown
    )
    assert DISAGREE not in markdown
    page = render_html(report, {})
    assert "<h2>Cross-validation</h2>" in page and "0.905 (0.861–0.944)" in page
    headline = report.headline()
    assert "cross-validation: 5 folds, ROC AUC spread 0.050, pooled out-of-fold 0.905" in headline
    assert "disagree" not in headline


def test_documents_say_when_the_folds_disagree() -> None:
    report = with_cv(folds(0.99, 0.77, 0.95))  # IQ-OTH/NCCD's collapse: 0.22 apart
    sentence = (
        f"{DISAGREE} (spread 0.220 > {DEFAULT_FOLD_SPREAD_LIMIT:.3f}): the test numbers depend "
        "on which patients were held out."
    )
    assert sentence in render_markdown(report)
    assert html.escape(sentence) in render_html(report, {})
    assert report.headline().endswith("the folds disagree widely")
    # The gate's own limit decides, when the evaluation passes it.
    assert DISAGREE not in render_markdown(report, fold_spread_limit=0.25)
    assert "disagree" not in report.headline(fold_spread_limit=0.25)
    assert "(spread 0.220 > 0.100)" in render_markdown(report, fold_spread_limit=0.1)


def test_a_spread_that_is_not_estimable_says_why() -> None:
    markdown = render_markdown(with_cv(folds(0.9, None, None)))
    assert "not estimable: 1 of 3 folds has an estimable ROC AUC" in markdown
    assert DISAGREE not in markdown
