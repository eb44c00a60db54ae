"""Promotion and rollback decisions: every one logged with every gate and its numbers.

`models/<name>/decisions/<time>-<id>.json` holds one `Decision`, created exclusively and never
changed: the log is append-only, so it says who became champion when and why, including the
candidates that were rejected and the promotions that lost a race. `summary_lines` and
`gate_rows` are the one rendering of a decision that `lungcls promote | rollback` prints and
the Prefect promotion artifact shows.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from lungcls.io.artifacts import Artifact, rounded
from lungcls.io.records import Part, Record
from lungcls.io.storage import Storage

Action = Literal["promote", "rollback"]
Outcome = Literal["promoted", "rejected", "lost_race", "rolled_back", "nothing_to_roll_back"]


class Gate(Part):
    """One check a candidate must pass; `value` and `limit` are None for yes/no checks."""

    name: str
    passed: bool
    value: float | None
    limit: float | None
    detail: str


class Decision(Record):
    """What a promotion or rollback did: the champion before and after, and why.

    `evaluation` is the folder of the candidate's evaluation report. `log_path` is where the
    decision was logged; it is known only after logging, so the logged file has it empty.
    """

    SCHEMA: ClassVar[str] = "lungcls.decision/1"
    LEGACY_UNTAGGED: ClassVar[bool] = True

    id: str
    at: str
    action: Action
    model: str
    candidate_version: int | None
    champion_before: int | None
    outcome: Outcome
    champion_after: int | None
    gates: list[Gate] = Field(default_factory=list)
    evaluation: str = ""
    log_path: str = ""

    @property
    def failed_gates(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]

    def headline(self) -> str:
        candidate = "" if self.candidate_version is None else f" v{self.candidate_version}"
        return (
            f"{self.action} {self.model}{candidate}: {self.outcome}; champion "
            f"v{self.champion_before} -> v{self.champion_after} (decision {self.id})"
        )

    def summary_lines(self) -> list[str]:
        """The headline, then one line per gate, as `lungcls promote` prints it."""
        return [
            self.headline(),
            *(f"  [{'pass' if g.passed else 'FAIL'}] {g.name}: {g.detail}" for g in self.gates),
        ]

    def artifacts(self) -> list[Artifact]:
        """Every gate with its value and limit, for the Prefect UI."""
        rows = self.gate_rows()
        return [Artifact.of_table("promotion-decision", self.headline(), rows, "no gates")]

    def gate_rows(self) -> list[dict[str, str | float | None]]:
        """One table row per gate (numbers to 4 decimals, None when not estimable)."""
        return [
            {
                "gate": g.name,
                "passed": "pass" if g.passed else "FAIL",
                "value": rounded(g.value),
                "limit": rounded(g.limit),
                "detail": g.detail,
            }
            for g in self.gates
        ]


def decisions_dir(name: str) -> str:
    return f"models/{name}/decisions"


def log_decision(storage: Storage, decision: Decision) -> str:
    """Append a decision to its model's log (one immutable file per decision)."""
    stamp = decision.at.replace(":", "").replace("-", "").replace("+0000", "Z")
    rel = f"{decisions_dir(decision.model)}/{stamp}-{decision.id}.json"
    decision.save(storage, rel, exclusive=True)
    return rel


def decision_logged(storage: Storage, name: str, decision_id: str) -> bool:
    """Whether the decision `decision_id` is in the model's log (its file name ends in it)."""
    suffix = f"-{decision_id}.json"
    return any(info.path.endswith(suffix) for info in storage.list_files(decisions_dir(name)))


def read_decisions(storage: Storage, name: str) -> list[Decision]:
    """Every decision ever logged for a model, oldest first."""
    decisions = [
        Decision.from_json(storage.read_bytes(info.path), storage.url(info.path))
        for info in storage.list_files(decisions_dir(name))
        if info.path.endswith(".json")
    ]
    return sorted(decisions, key=lambda d: d.at)
