"""Training run records: 0.1.0 files still read, new runs, resume, the result's rendering."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from lungcls.config import Settings
from lungcls.dataset.manifest import DatasetRef
from lungcls.io.records import RecordError
from lungcls.io.storage import Storage
from lungcls.train.runs import (
    History,
    TrainError,
    TrainResult,
    TrainRun,
    finish_run,
    history_path,
    load_run,
    read_history,
    resumable_run,
    run_path,
    start_or_resume_run,
    unfinished_runs,
    write_history,
)
from tests.support import (
    MODEL_FIELDS_SINCE_0_1_0,
    OLD_ROOT,
    TRAIN_FIELDS_SINCE_0_1_0,
    make_settings,
)

OLD_RUN = "train-20261130T202053Z-dfd1f3"
DATASET = DatasetRef(name="lung-nodules", version=1)


@pytest.fixture
def old_root(tmp_path: Path) -> Storage:
    shutil.copytree(OLD_ROOT / "runs", tmp_path / "root" / "runs")
    return Storage.from_settings(make_settings(tmp_path / "root", tmp_path))


def test_runs_written_by_0_1_0_still_read(old_root: Storage) -> None:
    run = load_run(old_root, OLD_RUN)
    assert run.status == "finished" and run.model_version == 1 and run.dataset == DATASET
    assert run.train.epochs == 2 and run.model.width == 4
    history = read_history(old_root, OLD_RUN)  # a bare list, without a tag
    assert [e.epoch for e in history] == [0, 1] and history[0].worker_pids == [4015]


def test_rewritten_records_keep_the_old_keys_and_gain_a_tag(old_root: Storage) -> None:
    old = json.loads(old_root.read_bytes(run_path(OLD_RUN)))
    run = json.loads(load_run(old_root, OLD_RUN).to_json())
    assert run.pop("schema") == TrainRun.SCHEMA
    assert run == {
        **old,
        "train": {**old["train"], **TRAIN_FIELDS_SINCE_0_1_0},
        "model": {**old["model"], **MODEL_FIELDS_SINCE_0_1_0},
    }
    write_history(old_root, OLD_RUN, read_history(old_root, OLD_RUN))
    written = json.loads(old_root.read_bytes(history_path(OLD_RUN)))
    assert written["schema"] == History.SCHEMA and len(written["epochs"]) == 2


def test_another_records_file_is_refused(old_root: Storage) -> None:
    load_run(old_root, OLD_RUN).save(old_root, run_path(OLD_RUN))  # now tagged
    with pytest.raises(RecordError, match=re.escape("'lungcls.train-run/1' is not")):
        History.load(old_root, run_path(OLD_RUN))


def _settings(tmp_path: Path, epochs: int = 3) -> Settings:
    return make_settings(tmp_path / "root", tmp_path, train={"epochs": epochs})


def test_an_unfinished_run_is_resumed_with_its_own_settings(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    storage = Storage.from_settings(settings)
    run = start_or_resume_run(storage, settings, DATASET, resume=False)
    assert "model_version" not in json.loads(storage.read_bytes(run_path(run.run_id)))
    assert unfinished_runs(storage) == unfinished_runs(storage, DATASET) == [run.run_id]
    assert unfinished_runs(storage, DatasetRef(name="lung-nodules", version=2)) == []
    assert resumable_run(storage, settings, DATASET) == run.run_id
    assert resumable_run(storage, _settings(tmp_path, epochs=4), DATASET) is None

    other = _settings(tmp_path, epochs=9)
    resumed = start_or_resume_run(storage, other, DATASET, resume=True)
    assert resumed.run_id == run.run_id
    assert resumed.settings_over(other).train.epochs == 3  # the run's settings win

    finish_run(storage, run.run_id, model_version=4)
    assert load_run(storage, run.run_id).model_version == 4
    assert unfinished_runs(storage) == []
    with pytest.raises(TrainError, match="no unfinished training run"):
        start_or_resume_run(storage, settings, DATASET, resume=run.run_id)


def test_the_result_renders_one_table_for_the_terminal_and_the_ui(old_root: Storage) -> None:
    result = TrainResult(
        run_id=OLD_RUN,
        model_name="lung-nodule-cnn",
        model_version=1,
        best_epoch=1,
        best_val_auc=float("nan"),
        epochs_run=2,
        seconds=12.3,
        history=read_history(old_root, OLD_RUN),
    )
    assert result.best_val_auc is None  # not estimable: null in JSON
    rows = result.history_rows()
    assert [r["epoch"] for r in rows] == [1, 2] and [r["best"] for r in rows] == ["", "*"]
    assert rows[0]["train loss"] == 0.5326 and rows[0]["seconds"] == 4.4
    lines = result.summary_lines()
    assert lines[0] == result.headline()
    assert "best val AUC n/a at epoch 2 of 2, 12 s" in lines[0]
    assert lines[1].split("  ")[0] == "epoch" and "val AUC" in lines[1]
    assert lines[2].split()[:2] == ["1", "0.5326"] and lines[3].split()[-1] == "*"
    assert TrainResult.from_json(result.to_json()) == result
