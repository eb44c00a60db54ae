"""The registry and evaluation records: a root written by lungcls 0.1.0 still loads, typed;
unknown schema versions are refused naming the file; NaN is written as null."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lungcls.dataset.manifest import load_manifest
from lungcls.dataset.shards import iter_samples
from lungcls.evaluate.evaluation import evaluate_model, load_scores, resolve_version
from lungcls.evaluate.render import render_markdown
from lungcls.evaluate.report import EvaluationReport
from lungcls.io.records import RecordError
from lungcls.io.storage import Storage
from lungcls.predict.batch import Scorer
from lungcls.registry.aliases import AliasPointer, read_alias
from lungcls.registry.decisions import Decision, read_decisions
from lungcls.registry.records import ModelRecord
from lungcls.registry.store import load_model, load_record, versions_trained_on
from tests.support import (
    MODEL_FIELDS_SINCE_0_1_0,
    OLD_ROOT,
    TRAIN_FIELDS_SINCE_0_1_0,
    make_settings,
)

MODEL = "lung-nodule-cnn"
MODEL_JSON = f"models/{MODEL}/v1/model.json"
EVALUATION = f"models/{MODEL}/v1/evaluations/lung-nodules-v1"
REPORT_JSON = f"{EVALUATION}/report.json"
ALIAS_JSON = f"models/{MODEL}/aliases/champion/00000001.json"
DECISION_JSON = f"models/{MODEL}/decisions/20261130T202150.225142Z-2e52ffdc.json"


@pytest.fixture
def old_root(tmp_path: Path) -> Path:
    """A copy of the 0.1.0 root (tests may write to it)."""
    root = tmp_path / "root"
    shutil.copytree(OLD_ROOT, root)
    return root


def test_model_record_of_0_1_0_loads_typed(old_root: Path) -> None:
    storage = Storage(str(old_root))
    record = load_record(storage, MODEL)
    assert isinstance(record, ModelRecord)
    assert (record.name, record.version, record.train_run) == (
        MODEL,
        1,
        "train-20261130T202053Z-dfd1f3",
    )
    assert (record.dataset.name, record.dataset.version) == ("lung-nodules", 1)
    assert record.preprocess.config.shape == (16, 16, 16)
    assert record.tensor_shape == [1, 16, 16, 16] and record.model.width == 4
    assert [e.epoch for e in record.history] == [0, 1] and record.tune is None
    manifest = load_manifest(storage, "lung-nodules", 1)
    assert versions_trained_on(storage, MODEL, manifest.ref) == [1]
    # Rewritten, the record keeps 0.1.0's keys, in 0.1.0's order, without a `tune` key; its
    # training settings say what 0.1.0 did: one model, stopped on val (`folds: 1`).
    assert record.train.folds == 1 and record.members == 1
    old = json.loads(storage.read_bytes(MODEL_JSON))
    assert json.loads(record.to_json()) == {
        **old,
        "train": {**old["train"], **TRAIN_FIELDS_SINCE_0_1_0},
        "model": {**old["model"], **MODEL_FIELDS_SINCE_0_1_0},
    }


def test_report_decision_and_alias_of_0_1_0_load_typed(old_root: Path) -> None:
    storage = Storage(str(old_root))
    report = EvaluationReport.load(storage, REPORT_JSON)
    assert report.folder == EVALUATION and report.external is None
    assert report.operating_point.chosen_on == "val"
    assert report.metrics.at_operating_point.values["tn"] == 2
    assert report.metrics.at_half.ci95["ppv"] == (None, None)  # NaN in 0.1.0's file
    assert report.subgroups[1].sensitivity is None
    assert report.contracts["tensor"].evaluated_expectations == 8
    assert "Evaluation of lung-nodule-cnn v1 on lung-nodules v1" in render_markdown(report)

    (decision,) = read_decisions(storage, MODEL)
    assert isinstance(decision, Decision)
    assert (decision.action, decision.outcome, decision.champion_after) == (
        "promote",
        "promoted",
        1,
    )
    assert [g.name for g in decision.gates][:2] == ["min_sensitivity", "min_auc_lower_ci"]
    assert decision.evaluation == EVALUATION
    assert decision.summary_lines()[1].startswith("  [pass] min_sensitivity:")

    state = read_alias(storage, MODEL, "champion")
    assert (state.sequence, state.version, state.previous_version) == (1, 1, None)
    pointer = AliasPointer.load(storage, ALIAS_JSON)
    assert pointer.decision == decision.id


def test_evaluation_and_scorer_reuse_the_0_1_0_report(old_root: Path, tmp_path: Path) -> None:
    settings = make_settings(old_root, tmp_path)
    before = (old_root / REPORT_JSON).read_bytes()
    evaluation = evaluate_model(settings, MODEL, "champion")
    assert (old_root / REPORT_JSON).read_bytes() == before  # reused, not recomputed
    assert evaluation.report.model.version == 1 and len(evaluation.scores) == 11
    scorer = Scorer.load(settings, None)
    assert scorer.record.version == 1
    assert scorer.threshold == evaluation.report.operating_point.threshold
    assert scorer.calibration == evaluation.report.calibration
    assert resolve_version(Storage(str(old_root)), MODEL, None).version == 1


def test_model_of_0_1_0_reproduces_its_stored_scores(old_root: Path) -> None:
    storage = Storage(str(old_root))
    model = load_model(storage, load_record(storage, MODEL, 1))
    manifest = load_manifest(storage, "lung-nodules", 1)
    samples = list(iter_samples(storage, manifest.shards_of("test")))
    with torch.no_grad():
        x = torch.from_numpy(np.stack([s.array().astype(np.float32) for s in samples]))
        raw = torch.sigmoid(model(x)).numpy()
    stored = EvaluationReport.load(storage, REPORT_JSON)
    scores = load_scores(storage, stored)
    test = scores[scores["split"] == "test"].set_index("sample_id")
    assert len(samples) == stored.splits["test"].samples == len(test)
    expected = test.loc[[s.sample_id for s in samples], "raw_score"].to_numpy()
    assert np.allclose(raw, expected, atol=1e-5)


def _retagged(storage: Storage, rel: str, schema: str) -> None:
    data = json.loads(storage.read_bytes(rel))
    data["schema"] = schema
    storage.write_atomic(rel, json.dumps(data).encode())


@pytest.mark.parametrize(
    ("rel", "expected", "load"),
    [
        (MODEL_JSON, "lungcls.model/1", lambda s: load_record(s, MODEL, 1)),
        (REPORT_JSON, "lungcls.evaluation/1", lambda s: EvaluationReport.load(s, REPORT_JSON)),
        (DECISION_JSON, "lungcls.decision/1", lambda s: read_decisions(s, MODEL)),
        (ALIAS_JSON, "lungcls.alias/1", lambda s: read_alias(s, MODEL, "champion")),
    ],
)
def test_unknown_schema_version_is_refused_naming_the_file(
    old_root: Path, rel: str, expected: str, load: object
) -> None:
    storage = Storage(str(old_root))
    found = expected.replace("/1", "/9")
    _retagged(storage, rel, found)
    with pytest.raises(RecordError) as error:
        load(storage)  # type: ignore[operator]
    message = str(error.value)
    assert rel in message and repr(found) in message and repr(expected) in message


def test_report_with_nan_metric_round_trips_as_null() -> None:
    report = EvaluationReport.from_json((OLD_ROOT / REPORT_JSON).read_text(), REPORT_JSON)
    values = {**report.metrics.at_operating_point.values, "roc_auc": math.nan}
    block = report.metrics.at_operating_point.model_validate(
        {**report.metrics.at_operating_point.model_dump(), "values": values}
    )
    report = report.model_copy(
        update={"metrics": report.metrics.model_copy(update={"at_operating_point": block})}
    )
    text = report.to_json().decode()
    assert "NaN" not in text
    written = json.loads(text)
    assert written["metrics"]["at_operating_point"]["values"]["roc_auc"] is None
    assert written["metrics"]["at_0.5"]["ci95"]["ppv"] == [None, None]
    assert written["subgroups"][1]["roc_auc"] is None
    again = EvaluationReport.from_json(text)
    assert again == report and again.metrics.at_operating_point.values["roc_auc"] is None
