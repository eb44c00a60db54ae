"""bench/goals.py: whether a goal is reached is computed, and the summary table of `make bench`."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

# The bench scripts import `goals` from their own folder (it is sys.path[0] when they run).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
goals = importlib.import_module("goals")


@pytest.mark.parametrize(
    ("value", "op", "target", "reached"),
    [
        (0.9, ">=", 0.8, True),
        (0.61, ">=", 0.8, False),
        (0.8, ">=", 0.8, True),
        (2.5, "<=", 3, True),
        (3.5, "<=", 3, False),
        (5.0, "<", 5, False),
        (4.9, "<", 5, True),
        (1.0, ">", 1, False),
        (float("nan"), ">=", 0.8, False),
        (float("nan"), "<=", 3, False),
    ],
)
def test_reached_is_computed_from_value_and_target(value, op, target, reached):
    assert goals.Goal("measure", value, op, target).reached is reached


def test_unknown_comparison_is_refused():
    with pytest.raises(ValueError, match="unknown comparison '=>'"):
        goals.Goal("ingest / bare decode", 0.9, "=>", 0.8)


def test_table_has_one_row_per_recorded_goal(tmp_path):
    Goal = goals.Goal
    ingest = [
        Goal("slices/s, lungcls / bare", 0.61, ">=", 0.8),
        Goal("peak RSS, 20 / 2 series", 1.09, "<=", 1.2),
    ]
    written = goals.record_goals("ingest", ingest, results=tmp_path)
    goals.record_goals("datasets", [Goal("rebuild / first", 1.5, "<=", 3, "%")], tmp_path)

    assert written == tmp_path / "ingest.json"
    assert json.loads(written.read_text())[0] == {
        "measure": "slices/s, lungcls / bare",
        "value": 0.61,
        "op": ">=",
        "target": 0.8,
        "unit": "",
    }
    lines = goals.summary_table(tmp_path).splitlines()
    assert lines[0] == "| bench | measure | value | goal | reached |"
    assert lines[2:] == [  # scripts in name order, goals in recorded order
        "| datasets | rebuild / first | 1.5 % | <= 3 % | yes |",
        "| ingest | slices/s, lungcls / bare | 0.61 | >= 0.8 | **no** |",
        "| ingest | peak RSS, 20 / 2 series | 1.09 | <= 1.2 | yes |",
    ]


def test_recording_again_replaces_the_scripts_rows(tmp_path):
    goals.record_goals("flows", [goals.Goal("rerun / first", 5.0, "<=", 3, "%")], tmp_path)
    goals.record_goals("flows", [goals.Goal("rerun / first", 1.4, "<=", 3, "%")], tmp_path)
    rows = goals.summary_table(tmp_path).splitlines()[2:]
    assert rows == ["| flows | rerun / first | 1.4 % | <= 3 % | yes |"]
