"""The promotion gate: a candidate replaces the champion only when its report says so.

    lungcls promote [--version N]       (default: the latest version)
    lungcls rollback

Absolute gates come from `promotion.*` and are read from the candidate's evaluation on its
own dataset version: sensitivity at the operating point, the lower CI bound of ROC AUC,
calibration error, and that the dataset's contracts were applied. Non-inferiority: the
champion is scored on the same test split and a paired patient-level bootstrap of
AUC(candidate) - AUC(champion) must have its lower bound above -margin. Every decision —
promoted, rejected, lost a race, rolled back — is logged with every gate and its numbers.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from lungcls.config import Settings
from lungcls.evaluate.evaluation import Evaluation, evaluate_model
from lungcls.evaluate.metrics import paired_auc_difference
from lungcls.io.storage import Storage
from lungcls.registry.store import load_record, log_decision, move_alias, read_alias


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    value: float | None
    limit: float | None
    detail: str


@dataclass
class Decision:
    id: str
    at: str
    action: str  # "promote" or "rollback"
    model: str
    candidate_version: int | None
    champion_before: int | None
    outcome: str  # "promoted", "rejected", "lost_race", "rolled_back", "nothing_to_roll_back"
    champion_after: int | None
    gates: list[Gate] = field(default_factory=list)
    evaluation: str = ""
    log_path: str = ""

    @property
    def failed_gates(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]


def _new_decision(action: str, model: str, candidate: int | None, before: int | None) -> Decision:
    now = datetime.now(UTC).isoformat(timespec="microseconds")  # orders the log
    return Decision(secrets.token_hex(4), now, action, model, candidate, before, "", before)


def _absolute_gates(report: dict[str, Any], settings: Settings) -> list[Gate]:
    p = settings.promotion
    at_op = report["metrics"]["at_operating_point"]
    sensitivity = at_op["values"]["sensitivity"]
    auc_low = at_op["ci95"]["roc_auc"][0]
    ece = at_op["values"]["ece"]
    contracts = report.get("contracts", {})
    applied = all(
        contracts.get(s, {}).get("evaluated_expectations", 0) > 0
        for s in ("series_metadata", "tensor")
    )
    return [
        Gate(
            "min_sensitivity",
            sensitivity >= p.min_sensitivity,
            sensitivity,
            p.min_sensitivity,
            f"test sensitivity {sensitivity:.3f} at threshold {at_op['threshold']:.3f} "
            f"(chosen on val for {report['operating_point']['target_sensitivity']:.2f})",
        ),
        Gate(
            "min_auc_lower_ci",
            auc_low >= p.min_auc_lower_ci,
            auc_low,
            p.min_auc_lower_ci,
            f"test ROC AUC {at_op['values']['roc_auc']:.3f}, 95 % CI lower bound {auc_low:.3f}",
        ),
        Gate("max_ece", ece <= p.max_ece, ece, p.max_ece, f"expected calibration error {ece:.3f}"),
        Gate(
            "contracts_passed",
            applied,
            None,
            None,
            "series_metadata and tensor contracts were applied to the dataset version"
            if applied
            else "the dataset version does not record both contracts",
        ),
    ]


def _non_inferiority(settings: Settings, candidate: Evaluation, champion_version: int) -> Gate:
    report = candidate.report
    name, dataset = report["model"]["name"], report["dataset"]
    champion = evaluate_model(settings, name, champion_version, dataset["name"], dataset["version"])
    test_new = candidate.scores[candidate.scores["split"] == "test"].sort_values("sample_id")
    test_old = champion.scores[champion.scores["split"] == "test"].sort_values("sample_id")
    if list(test_new["sample_id"]) != list(test_old["sample_id"]):
        return Gate("non_inferiority", False, None, None, "champion scored on other samples")
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
        "non_inferiority",
        low > -margin,
        low,
        -margin,
        f"AUC(v{report['model']['version']}) - AUC(champion v{champion_version}) = "
        f"{difference:+.3f}, 95 % CI {low:+.3f} to {high:+.3f}, on {dataset['name']} "
        f"v{dataset['version']} test; must stay above {-margin:+.3f}",
    )


def promote(settings: Settings, version: int | None = None, name: str | None = None) -> Decision:
    """Gate a candidate (default: the latest version) and make it champion if it passes."""
    storage = Storage.from_settings(settings)
    name = name or settings.model.name
    record = load_record(storage, name, version)
    state = read_alias(storage, name, "champion")
    decision = _new_decision("promote", name, record["version"], state.version)
    evaluation = evaluate_model(settings, name, record["version"])
    decision.evaluation = evaluation.folder
    decision.gates = _absolute_gates(evaluation.report, settings)
    if state.version is not None and state.version != record["version"]:
        decision.gates.append(_non_inferiority(settings, evaluation, state.version))
    if decision.failed_gates:
        decision.outcome = "rejected"
    elif state.version == record["version"]:
        decision.outcome = "promoted"  # already champion: nothing moves
    elif move_alias(storage, name, state, record["version"], decision.id):
        decision.outcome, decision.champion_after = "promoted", record["version"]
    else:
        decision.outcome = "lost_race"  # another promotion moved the alias first
        decision.champion_after = read_alias(storage, name, "champion").version
    decision.log_path = log_decision(storage, name, asdict(decision))
    return decision


def rollback(settings: Settings, name: str | None = None) -> Decision:
    """Point the champion back at the version it replaced."""
    storage = Storage.from_settings(settings)
    name = name or settings.model.name
    state = read_alias(storage, name, "champion")
    decision = _new_decision("rollback", name, state.previous_version, state.version)
    if state.previous_version is None:
        decision.outcome = "nothing_to_roll_back"
    elif move_alias(storage, name, state, state.previous_version, decision.id):
        decision.outcome, decision.champion_after = "rolled_back", state.previous_version
    else:
        decision.outcome = "lost_race"
        decision.champion_after = read_alias(storage, name, "champion").version
    decision.log_path = log_decision(storage, name, asdict(decision))
    return decision
