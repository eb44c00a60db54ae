"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from lungcls.config import Settings

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEST_KEY = "test-pseudonym-key-0123456789"


def make_settings(root: str | Path, tmp_path: Path, **overrides: object) -> Settings:
    """Settings for one test: its own root and work dir, in-process execution by default."""
    values: dict[str, object] = {
        "root": str(root),
        "pseudonym_key": TEST_KEY,
        "work_dir": str(tmp_path / "work"),
        "ray": {"executor": "local"},
    }
    values.update(overrides)
    return Settings(**values)
