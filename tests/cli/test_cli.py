"""The `lungcls` command: help, config, synth, ingest --json, and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lungcls.cli import main
from tests.support import TEST_KEY


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "lungcls.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=300,
    )


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("config", "synth", "ingest", "demo"):
        assert command in out


def test_config_prints_resolved_settings_without_secrets(tmp_path: Path) -> None:
    result = run("--root", str(tmp_path), "config", env={"LUNGCLS_PSEUDONYM_KEY": TEST_KEY})
    assert result.returncode == 0, result.stderr
    assert f"root: {tmp_path}" in result.stdout
    assert TEST_KEY not in result.stdout + result.stderr


def test_synth_then_ingest_json(tmp_path: Path) -> None:
    env = {"LUNGCLS_PSEUDONYM_KEY": TEST_KEY}
    root = str(tmp_path / "root")
    made = run(
        "--root",
        root,
        "synth",
        "--batch",
        "b",
        "--scans",
        "3",
        "--slices",
        "10",
        "--slice-spacing",
        "6",
        "--rows",
        "32",
        "--columns",
        "32",
        "--pixel-spacing",
        "10",
        env=env,
    )
    assert made.returncode == 0, made.stderr
    assert "3 synthetic scans" in made.stdout
    (tmp_path / "root" / "inbox" / "b" / "junk.zip").write_bytes(b"not a zip at all")
    result = run("--root", root, "--executor", "local", "ingest", "--json", env=env)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["series_ingested"] == 3
    assert summary["archives_rejected"] == 1
    assert [q["code"] for q in summary["quarantined"]] == ["corrupt_archive"]
    assert TEST_KEY not in result.stdout + result.stderr


def test_bad_configuration_exits_2_with_a_message(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("ingest:\n  limits:\n    max_members: many\n")
    result = run("--config", str(config), "config")
    assert result.returncode == 2
    assert "max_members" in result.stderr and "Traceback" not in result.stderr


def test_s3_root_without_key_exits_2(s3_settings) -> None:
    result = run(
        "--root",
        s3_settings.root,
        "ingest",
        env={"LUNGCLS_S3_ENDPOINT_URL": s3_settings.s3_endpoint_url},
    )
    assert result.returncode == 2
    assert "LUNGCLS_PSEUDONYM_KEY" in result.stderr


def test_unreachable_storage_exits_1(tmp_path: Path) -> None:
    result = run(
        "--root",
        "s3://no-such-bucket/x",
        "--executor",
        "local",
        "ingest",
        env={"LUNGCLS_PSEUDONYM_KEY": TEST_KEY, "LUNGCLS_S3_ENDPOINT_URL": "http://127.0.0.1:9"},
    )
    assert result.returncode == 1, result.stderr
    assert "storage error" in result.stderr and "Traceback" not in result.stderr
