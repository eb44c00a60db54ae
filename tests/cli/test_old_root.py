"""The commands an operator runs on a root written by lungcls 0.1.0 (before the stage
packages and typed records) still work on it: list, show, evaluate, promote, rollback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lungcls.cli import main
from tests.support import OLD_ROOT, TEST_KEY


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LUNGCLS_PSEUDONYM_KEY", TEST_KEY)
    monkeypatch.setenv("LUNGCLS_WORK_DIR", str(tmp_path / "work"))
    copy = tmp_path / "root"
    shutil.copytree(OLD_ROOT, copy)
    return copy


def lungcls(root: Path, *args: str) -> int:
    return main(["--root", str(root), "--executor", "local", *args])


def test_dataset_list_and_show_read_the_old_manifest(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert lungcls(root, "dataset", "list") == 0
    listed = capsys.readouterr().out
    assert "lung-nodules v1: 40 samples" in listed
    assert lungcls(root, "dataset", "show", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    on_disk = json.loads((root / "datasets/lung-nodules/v1/manifest.json").read_text())
    assert shown == on_disk  # the typed record writes back exactly what 0.1.0 wrote


def test_evaluate_reuses_the_old_report_and_the_gate_decides_again(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (
        root / "models/lung-nodule-cnn/v1/evaluations/lung-nodules-v1/report.json"
    ).read_bytes()
    assert lungcls(root, "evaluate", "--json") == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["model"]["version"] == 1
    after = (
        root / "models/lung-nodule-cnn/v1/evaluations/lung-nodules-v1/report.json"
    ).read_bytes()
    assert after == before  # read, not recomputed
    # The 0.1.0 root was promoted under relaxed gates; today's defaults judge it again from
    # its old report, reject it (exit 4) and log that, and the champion stays where it was.
    assert lungcls(root, "promote", "--version", "1") == 4
    assert "rejected; champion v1 -> v1" in capsys.readouterr().out
    assert len(list((root / "models/lung-nodule-cnn/decisions").glob("*.json"))) == 2
    assert lungcls(root, "rollback") == 4  # 0.1.0's pointer has no previous version
    assert "nothing_to_roll_back" in capsys.readouterr().out
