"""Each benchmark's goals, gathered into one table at the end of `make bench`.

A script records its measures once it has them:

    record_goals("ingest", [Goal("ingest vs bare pydicom decode", 0.61, ">=", 0.8)])

which writes `.lungcls-work/bench/results/<script>.json` (under the repository, wherever the
script runs from). Then

    .venv/bin/python bench/goals.py

prints every recorded measure as one Markdown table: its value, its goal, reached or not.
Whether a goal is reached is computed from the value here, never written by hand. `make
bench` empties the results folder first, so the table holds this run's figures only.
Percentages are recorded as percent (`Goal("rebuild / first build", 1.2, "<=", 3, "%")`).
"""

from __future__ import annotations

import json
import math
import operator
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / ".lungcls-work" / "bench" / "results"

_COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Goal:
    measure: str  # what is measured, in words
    value: float
    op: str  # one of >=, <=, >, <
    target: float
    unit: str = ""  # "", "%", "s", "MB", ...

    def __post_init__(self) -> None:
        # Refused here, so a typo fails in the script that measured, not in the summary.
        if self.op not in _COMPARE:
            known = ", ".join(_COMPARE)
            raise ValueError(f"{self.measure}: unknown comparison {self.op!r} (one of {known})")

    @property
    def reached(self) -> bool:
        # A NaN value (a failed measure) compares false both ways: never reached.
        return bool(_COMPARE[self.op](self.value, self.target))


def record_goals(script: str, goals: list[Goal], results: Path = RESULTS) -> Path:
    """Write this script's measures for the summary table; returns the file written."""
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"{script}.json"
    rows = [{**asdict(g), "value": float(g.value), "target": float(g.target)} for g in goals]
    path.write_text(json.dumps(rows, indent=2) + "\n")
    return path


def _number(value: float, unit: str) -> str:
    if not math.isfinite(value):
        text = str(value)
    elif abs(value) >= 100:
        text = f"{value:,.0f}"  # 578 slices/s, 1,198 samples/s: no exponent
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip()


def summary_table(results: Path = RESULTS) -> str:
    """Every recorded measure, script by script, as a Markdown table."""
    rows = ["| bench | measure | value | goal | reached |", "| --- | --- | --- | --- | --- |"]
    for path in sorted(results.glob("*.json")):
        for entry in json.loads(path.read_text()):
            goal = Goal(**entry)
            target = f"{goal.op} {_number(goal.target, goal.unit)}"
            mark = "yes" if goal.reached else "**no**"
            value = _number(goal.value, goal.unit)
            measure = goal.measure.replace("|", "\\|")
            rows.append(f"| {path.stem} | {measure} | {value} | {target} | {mark} |")
    return "\n".join(rows)


def main() -> int:
    if not RESULTS.is_dir() or not any(RESULTS.glob("*.json")):
        print(f"no benchmark results under {RESULTS}: run `make bench` first", file=sys.stderr)
        return 1
    print(summary_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
