"""Fixtures of the retention tests."""

from __future__ import annotations

import pytest

from lungcls.config import Settings


@pytest.fixture(params=["local", "s3"])
def root_settings(request: pytest.FixtureRequest) -> Settings:
    """Settings of a fresh root on each backend gc must work on: a local folder and a bucket
    on the real moto S3 server."""
    return request.getfixturevalue("settings" if request.param == "local" else "s3_settings")
