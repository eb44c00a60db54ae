"""The promotion gate: a candidate replaces the champion only when its report says so.

    lungcls promote [--version N]       (default: the latest version)
    lungcls rollback

Absolute gates come from `promotion.*` and are read from the candidate's evaluation on its
own dataset version: sensitivity at the operating point, the lower CI bound of ROC AUC,
calibration error, that the dataset's contracts were applied, and that the cross-validation
folds agree (`max_fold_spread`). Non-inferiority: the champion is scored on the same test
split and a paired patient-level bootstrap of AUC(candidate) - AUC(champion) must have its
lower bound above -margin. A test split with fewer patients of a class than
`evaluation.min_patients_per_class` supports none of the test-metric gates: it fails
`test_split_too_small` instead, and those gates are not judged (they would fail on numbers
that mean nothing). Every decision — promoted, rejected, lost a race, rolled back — is logged
with every gate and its numbers.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from lungcls.config import PromotionSettings, Settings
from lungcls.evaluate.bootstrap import paired_auc_difference
from lungcls.evaluate.evaluation import Evaluation, evaluate_model
from lungcls.evaluate.report import EvaluationReport
from lungcls.io.artifacts import number
from lungcls.io.storage import Storage
from lungcls.registry.aliases import AliasState, move_alias, read_alias
from lungcls.registry.decisions import Decision, Gate, Outcome, decision_logged, log_decision
from lungcls.registry.store import load_record

CHAMPION = "champion"
# Gates that read the test split's metrics: judged only when the split supports them.
TEST_METRIC_GATES = ("min_sensitivity", "min_auc_lower_ci", "max_ece", "non_inferiority")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")  # orders the log


def _split_supports_gates(report: EvaluationReport) -> bool:
    """Whether the test split has enough patients of each class for the test-metric gates
    (a report written before patients were counted per class is judged as before)."""
    return report.class_support is None or report.class_support.estimable


def _absolute_gates(report: EvaluationReport, p: PromotionSettings) -> list[Gate]:
    gates = [_split_gate(report)]
    if _split_supports_gates(report):
        gates += _test_metric_gates(report, p)
    gates += [_contracts_gate(report), _fold_spread_gate(report, p.max_fold_spread)]
    return gates


def drifted_subgroups_gate(report: EvaluationReport, new_makers: list[str]) -> Gate:
    """Test metrics on every scanner maker that monitored batches brought in new."""
    covered = {
        row.value
        for row in report.subgroups
        if row.attribute == "manufacturer" and row.roc_auc is not None
    }
    missing = [maker for maker in new_makers if maker not in covered]
    if not new_makers:
        detail = "no monitored batch brought in a new scanner maker"
    elif missing:
        detail = (
            f"no test metrics on {', '.join(missing)} (new in monitored batches): what it "
            "was tested on needs scans of both classes from each"
        )
    else:
        detail = f"test metrics on every maker new in monitored batches: {', '.join(new_makers)}"
    return Gate(name="drifted_subgroups", passed=not missing, value=None, limit=None, detail=detail)


def _split_gate(report: EvaluationReport) -> Gate:
    support = report.class_support
    if support is None:
        return Gate(
            name="test_split_too_small",
            passed=True,
            value=None,
            limit=None,
            detail="not recorded: the report predates patient counts per class "
            "(`lungcls evaluate --force` counts them)",
        )
    detail = f"{report.scope} has {support.counts()}"
    if not support.estimable:
        detail += f": {support.shortfall()}; not judged on it: {', '.join(TEST_METRIC_GATES)}"
    return Gate(
        name="test_split_too_small",
        passed=support.estimable,
        value=min(support.patients_with_cancer, support.patients_without_cancer),
        limit=support.needed_per_class,
        detail=detail,
    )


def _test_metric_gates(report: EvaluationReport, p: PromotionSettings) -> list[Gate]:
    at_op = report.metrics.at_operating_point
    sensitivity = at_op.values["sensitivity"]
    auc, (auc_low, _) = at_op.values["roc_auc"], at_op.ci95["roc_auc"]
    ece = at_op.values["ece"]
    target = report.operating_point.target_sensitivity
    return [
        Gate(
            name="min_sensitivity",
            passed=_at_least(sensitivity, p.min_sensitivity),
            value=sensitivity,
            limit=p.min_sensitivity,
            detail=f"test sensitivity {number(sensitivity)} at threshold "
            f"{at_op.threshold:.3f} (chosen on val for {target:.2f})",
        ),
        Gate(
            name="min_auc_lower_ci",
            passed=_at_least(auc_low, p.min_auc_lower_ci),
            value=auc_low,
            limit=p.min_auc_lower_ci,
            detail=f"test ROC AUC {number(auc)}, 95 % CI lower bound {number(auc_low)}",
        ),
        Gate(
            name="max_ece",
            passed=ece is not None and ece <= p.max_ece,
            value=ece,
            limit=p.max_ece,
            detail=f"expected calibration error {number(ece)}",
        ),
    ]


def _contracts_gate(report: EvaluationReport) -> Gate:
    applied = all(
        name in report.contracts and report.contracts[name].evaluated_expectations > 0
        for name in ("series_metadata", "tensor")
    )
    return Gate(
        name="contracts_passed",
        passed=applied,
        value=None,
        limit=None,
        detail="series_metadata and tensor contracts were applied to the dataset version"
        if applied
        else "the dataset version does not record both contracts",
    )


def _fold_spread_gate(report: EvaluationReport, limit: float | None) -> Gate:
    """The folds' ROC AUCs must agree within `limit`; passes when there is nothing to
    compare (no cross-validation, or fewer than two folds with an estimable AUC)."""
    cv = report.cross_validation

    def gate(passed: bool, value: float | None, detail: str) -> Gate:
        return Gate(name="max_fold_spread", passed=passed, value=value, limit=limit, detail=detail)

    if cv is None:
        return gate(
            True, None, "no cross-validation was run (train.folds = 1): no folds to compare"
        )
    spread = cv.spread
    if spread is None:
        return gate(True, None, f"spread not estimable: {cv.why_no_spread()}")
    aucs = ", ".join(number(f.roc_auc) for f in cv.folds)
    if limit is None:
        return gate(True, spread, f"fold ROC AUCs {aucs}: spread {spread:.3f}; not gated")
    detail = f"fold ROC AUCs {aucs}: spread {spread:.3f}, limit {limit:.3f}"
    disagreement = cv.disagreement(limit)
    return gate(spread <= limit, spread, f"{detail}. {disagreement}" if disagreement else detail)


def _at_least(value: float | None, limit: float) -> bool:
    """A value that could not be estimated passes no gate."""
    return value is not None and value >= limit


def _non_inferiority(settings: Settings, candidate: Evaluation, champion_version: int) -> Gate:
    report = candidate.report
    dataset = report.dataset
    champion = evaluate_model(
        settings, report.model.name, champion_version, dataset.name, dataset.version
    )
    test_new = candidate.scores[candidate.scores["split"] == "test"].sort_values("sample_id")
    test_old = champion.scores[champion.scores["split"] == "test"].sort_values("sample_id")
    if list(test_new["sample_id"]) != list(test_old["sample_id"]):
        return Gate(
            name="non_inferiority",
            passed=False,
            value=None,
            limit=None,
            detail="champion scored on other samples",
        )
    e, margin = settings.evaluation, settings.promotion.non_inferiority_margin
    difference, low, high = paired_auc_difference(
        test_new["label"].to_numpy(),
        test_new["score"].to_numpy(),
        test_old["score"].to_numpy(),
        test_new["patient_id"].to_numpy(),
        e.bootstrap_rounds,
        e.bootstrap_seed,
    )
    return Gate(
        name="non_inferiority",
        passed=low > -margin,
        value=low,
        limit=-margin,
        detail=f"AUC(v{report.model.version}) - AUC(champion v{champion_version}) = "
        f"{difference:+.3f}, 95 % CI {low:+.3f} to {high:+.3f}, on {dataset} test; "
        f"must stay above {-margin:+.3f}",
    )


def _move(
    storage: Storage, name: str, state: AliasState, version: int, decision_id: str, action: str
) -> tuple[bool, int | None]:
    """Move the champion; returns whether this call moved it, and where it points now."""
    if move_alias(storage, name, state, version, decision_id, action):
        return True, version
    return False, read_alias(storage, name, CHAMPION).version  # another move came first


def _logged(storage: Storage, decision: Decision) -> Decision:
    decision.log_path = log_decision(storage, decision)
    return decision


def _unlogged(storage: Storage, name: str, state: AliasState) -> bool:
    """Whether the champion's current pointer was moved by a decision that was never logged
    (its run was killed between the two writes)."""
    return state.decision is not None and not decision_logged(storage, name, state.decision)


def _settle(settings: Settings, storage: Storage, name: str, state: AliasState) -> AliasState:
    """Log the decision of a move whose run was killed before logging it, so that every
    pointer's decision is in the log before the champion moves again: a rollback as it was,
    a promotion by running it again (it logs under the move's id, with every gate). Returns
    the champion as it is now."""
    if not _unlogged(storage, name, state) or state.version is None:
        return state
    if state.action == "rollback":
        _log_killed_rollback(storage, name, state)
    else:
        promote(settings, state.version, name)
    return read_alias(storage, name, CHAMPION)


def _log_killed_rollback(storage: Storage, name: str, state: AliasState) -> Decision:
    """The decision of the rollback that made `state` and was killed before logging it."""
    decision = Decision(
        id=str(state.decision),
        at=_now(),
        action="rollback",
        model=name,
        candidate_version=state.version,
        champion_before=state.previous_version,
        outcome="rolled_back",
        champion_after=state.version,
    )
    return _logged(storage, decision)


def promote(settings: Settings, version: int | None = None, name: str | None = None) -> Decision:
    """Gate a candidate (default: the latest version) and make it champion if it passes."""
    storage = Storage.from_settings(settings)
    name = name or settings.model.name
    record = load_record(storage, name, version)
    state = read_alias(storage, name, CHAMPION)
    rerun = state.action == "promote" and state.version == record.version
    killed_here = rerun and _unlogged(storage, name, state)
    if not killed_here:
        state = _settle(settings, storage, name, state)  # logged before this decision
    at, decision_id, before = _now(), secrets.token_hex(4), state.version
    if killed_here:
        # A promotion moved the champion here and was killed before it logged why: this run
        # logs that decision, under the move's id, against the champion it replaced.
        decision_id, before = str(state.decision), state.previous_version
    evaluation = evaluate_model(settings, name, record.version)
    gates = _absolute_gates(evaluation.report, settings.promotion)
    if settings.promotion.require_drifted_subgroups:
        from lungcls.monitor.subgroups import new_manufacturers  # monitor reads the registry

        gates.append(drifted_subgroups_gate(evaluation.report, new_manufacturers(storage, name)))
    challenges = before is not None and before != record.version
    if challenges and _split_supports_gates(evaluation.report):
        gates.append(_non_inferiority(settings, evaluation, before))
    outcome: Outcome
    if any(not g.passed for g in gates):
        outcome, after = "rejected", state.version
    elif state.version == record.version:
        outcome, after = "promoted", state.version  # already champion: nothing moves
    else:
        moved, after = _move(storage, name, state, record.version, decision_id, "promote")
        outcome = "promoted" if moved else "lost_race"
    decision = Decision(
        id=decision_id,
        at=at,
        action="promote",
        model=name,
        candidate_version=record.version,
        champion_before=before,
        outcome=outcome,
        champion_after=after,
        gates=gates,
        evaluation=evaluation.folder,
    )
    return _logged(storage, decision)


def rollback(settings: Settings, name: str | None = None) -> Decision:
    """Point the champion back at the version it replaced. A rollback killed between moving
    the champion and logging is finished by its rerun: it logs that move and moves nothing."""
    storage = Storage.from_settings(settings)
    name = name or settings.model.name
    state = read_alias(storage, name, CHAMPION)
    if _unlogged(storage, name, state) and state.action == "rollback":
        return _log_killed_rollback(storage, name, state)
    state = _settle(settings, storage, name, state)
    at, decision_id = _now(), secrets.token_hex(4)
    outcome: Outcome
    if state.previous_version is None:
        outcome, after = "nothing_to_roll_back", state.version
    else:
        moved, after = _move(storage, name, state, state.previous_version, decision_id, "rollback")
        outcome = "rolled_back" if moved else "lost_race"
    decision = Decision(
        id=decision_id,
        at=at,
        action="rollback",
        model=name,
        candidate_version=state.previous_version,
        champion_before=state.version,
        outcome=outcome,
        champion_after=after,
    )
    return _logged(storage, decision)
