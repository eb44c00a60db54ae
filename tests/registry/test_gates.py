"""The promotion gates a split or a cross-validation cannot pass: `test_split_too_small`
(with how many patients of each class the test split has and needs) and `max_fold_spread`;
on constructed reports and end to end on the 0.1.0 root's real model and 3-sample test split."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lungcls.config import PromotionSettings
from lungcls.evaluate.evaluation import evaluate_model
from lungcls.evaluate.report import (
    ClassSupport,
    CrossValidationSummary,
    EvaluationReport,
    FoldScore,
    SubgroupRow,
)
from lungcls.io.storage import Storage
from lungcls.registry.decisions import Gate
from lungcls.registry.promote import (
    TEST_METRIC_GATES,
    _absolute_gates,
    drifted_subgroups_gate,
    promote,
)
from tests.support import OLD_ROOT, make_settings

REPORT_JSON = "models/lung-nodule-cnn/v1/evaluations/lung-nodules-v1/report.json"
RELAXED = PromotionSettings(min_sensitivity=0.0, min_auc_lower_ci=0.0, max_ece=1.0)


def old_report(**update: object) -> EvaluationReport:
    report = EvaluationReport.from_json((OLD_ROOT / REPORT_JSON).read_text(), REPORT_JSON)
    return report.model_copy(update=update)


def support(with_cancer: int, without: int, needed: int = 5) -> ClassSupport:
    return ClassSupport(
        patients_with_cancer=with_cancer, patients_without_cancer=without, needed_per_class=needed
    )


def cross_validation(*aucs: float | None) -> CrossValidationSummary:
    return CrossValidationSummary(
        folds=[
            FoldScore(fold=k, patients=30, positives=12, negatives=18, roc_auc=a, best_epoch=4)
            for k, a in enumerate(aucs)
        ],
        oof_roc_auc=0.9,
        oof_roc_auc_ci95=(0.85, 0.94),
    )


def gates(report: EvaluationReport, p: PromotionSettings = RELAXED) -> dict[str, Gate]:
    return {g.name: g for g in _absolute_gates(report, p)}


def test_a_small_test_split_fails_one_gate_that_says_what_it_needs() -> None:
    judged = gates(old_report(class_support=support(1, 6)))
    split = judged["test_split_too_small"]
    assert not split.passed and (split.value, split.limit) == (1, 5)
    assert split.detail.startswith(
        "test has 1 patient with cancer and 6 without cancer (5 of each needed): "
        "needs 4 more patients with cancer; not judged on it: min_sensitivity"
    )
    # The gates that read the split's metrics would fail on numbers that mean nothing.
    assert not set(TEST_METRIC_GATES) & set(judged)
    assert {"contracts_passed", "max_fold_spread"} <= set(judged)


def test_an_estimable_test_split_passes_and_the_metric_gates_judge_it() -> None:
    judged = gates(old_report(class_support=support(5, 7)))
    split = judged["test_split_too_small"]
    assert split.passed and split.detail == (
        "test has 5 patients with cancer and 7 without cancer (5 of each needed)"
    )
    assert {"min_sensitivity", "min_auc_lower_ci", "max_ece"} <= set(judged)


def test_a_report_without_patient_counts_is_judged_as_before() -> None:
    judged = gates(old_report())
    assert judged["test_split_too_small"].passed
    assert "predates patient counts per class" in judged["test_split_too_small"].detail
    assert {"min_sensitivity", "min_auc_lower_ci", "max_ece"} <= set(judged)


@pytest.mark.parametrize(
    ("aucs", "limit", "passed", "detail"),
    [
        (None, 0.15, True, "no cross-validation was run (train.folds = 1): no folds to compare"),
        ((0.9, 0.93, 0.88), 0.15, True, "fold ROC AUCs 0.900, 0.930, 0.880: spread 0.050, limit"),
        ((0.99, 0.77, 0.95), 0.15, False, "spread 0.220, limit 0.150. The folds disagree widely"),
        ((0.99, 0.77, 0.95), 0.25, True, "spread 0.220, limit 0.250"),
        ((0.99, 0.77, 0.95), None, True, "spread 0.220; not gated"),
        ((0.9, None, None), 0.15, True, "spread not estimable: 1 of 3 folds has an estimable"),
    ],
)
def test_fold_spread_gate(
    aucs: tuple[float | None, ...] | None, limit: float | None, passed: bool, detail: str
) -> None:
    cv = cross_validation(*aucs) if aucs is not None else None
    p = RELAXED.model_copy(update={"max_fold_spread": limit})
    gate = gates(old_report(cross_validation=cv), p)["max_fold_spread"]
    assert gate.passed is passed and detail in gate.detail
    assert gate.limit == limit
    if cv is not None and cv.spread is not None:
        assert gate.value == pytest.approx(cv.spread)


@pytest.fixture
def old_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    shutil.copytree(OLD_ROOT, root)
    return root


def test_evaluate_and_promote_a_model_on_a_three_sample_test_split(
    old_root: Path, tmp_path: Path
) -> None:
    """The real evaluation of the 0.1.0 model (test: 1 patient with cancer, 2 without)
    reports no interval it cannot support, and the gate rejects for that reason alone."""
    settings = make_settings(
        old_root, tmp_path, evaluation={"bootstrap_rounds": 200}, promotion=RELAXED.model_dump()
    )
    evaluation = evaluate_model(settings, force=True)
    report = evaluation.report
    assert report.class_support == support(1, 2)
    written = json.loads(Storage.from_settings(settings).read_bytes(f"{report.folder}/report.json"))
    assert written["class_support"] == {
        "patients_with_cancer": 1,
        "patients_without_cancer": 2,
        "needed_per_class": 5,
    }
    for block in written["metrics"].values():
        assert all(interval == [None, None] for interval in block["ci95"].values())
        assert block["values"]["roc_auc"] is not None  # both classes: the AUC itself is defined
    markdown = (old_root / report.folder / "report.md").read_text()
    assert "not estimable (needs 4 more patients with cancer and 3 more without cancer)" in (
        markdown
    )
    assert "(1.000–1.000)" not in markdown  # what one patient a class used to give

    decision = promote(settings, 1)
    assert decision.outcome == "rejected"
    assert [g.name for g in decision.failed_gates] == ["test_split_too_small"]
    assert "needs 4 more patients with cancer and 3 more without cancer" in (
        decision.failed_gates[0].detail
    )
    assert not {g.name for g in decision.gates} & set(TEST_METRIC_GATES)

    # Accepting one patient a class, the same model and split are judged on their numbers.
    lenient = settings.model_copy(
        update={"evaluation": settings.evaluation.model_copy(update={"min_patients_per_class": 1})}
    )
    report = evaluate_model(lenient, force=True).report
    assert report.class_support.estimable
    assert report.metrics.at_operating_point.ci95["roc_auc"] == (1.0, 1.0)
    judged = {g.name: g for g in promote(lenient, 1).gates}
    assert judged["test_split_too_small"].passed and "min_auc_lower_ci" in judged


def test_drifted_subgroups_gate_wants_test_metrics_on_each_new_maker() -> None:
    """A maker a monitored batch brought in new must have a test subgroup row with both
    classes (an AUC); a maker with one class only, or none, fails the gate and is named."""
    row = {"attribute": "manufacturer", "n": 12, "positives": 5, "sensitivity": 0.8}
    report = old_report(
        subgroups=[
            SubgroupRow(**row, value="Canon Medical Systems", specificity=0.9, roc_auc=0.91),
            SubgroupRow(**row, value="Philips", specificity=None, roc_auc=None),
        ]
    )
    nothing_new = drifted_subgroups_gate(report, [])
    assert nothing_new.passed and "no monitored batch" in nothing_new.detail
    covered = drifted_subgroups_gate(report, ["Canon Medical Systems"])
    assert covered.passed and "Canon Medical Systems" in covered.detail
    missing = drifted_subgroups_gate(report, ["Canon Medical Systems", "Philips", "Fujifilm"])
    assert not missing.passed
    assert missing.detail.startswith("no test metrics on Philips, Fujifilm")
