"""Fixtures of the storage tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from lungcls.config import Settings
from lungcls.io.storage import Storage


@pytest.fixture(params=["local", "s3"])
def local_or_s3(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """A fresh root on each backend whose exclusive create matters: a local folder and a
    bucket on the real moto S3 server."""
    if request.param == "local":
        return Storage(str(tmp_path / "root"))
    s3_settings: Settings = request.getfixturevalue("s3_settings")
    return Storage.from_settings(s3_settings)
