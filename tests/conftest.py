"""Shared fixtures: isolated settings, a real S3-compatible server, real DICOM corpora.

Every tool's state stays inside the test's temporary folders. The S3 server is a real
`moto_server` process on 127.0.0.1 at a free port, reached over HTTP by s3fs, and stopped
by PID when the session ends.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local import processes
from lungcls.config import Settings
from lungcls.io.storage import Storage
from tests.support import free_port, make_settings, start_server

_HOME: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Point every tool's state at a folder of this session's, before any test module is
    imported: Prefect resolves its home when first imported, and test modules import flows."""
    global _HOME
    _HOME = Path(tempfile.mkdtemp(prefix="lungcls-tests-"))
    # Always this process's own: pytest-xdist workers run flows at the same time, and two
    # Prefect servers on one SQLite file would lock each other out.
    os.environ["PREFECT_HOME"] = str(_HOME / "prefect")
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)  # its SQLite lives here
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("MPLCONFIGDIR", str(_HOME / "matplotlib"))
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("LUNGCLS_ROOT", "LUNGCLS_CONFIG", "LUNGCLS_PSEUDONYM_KEY", "RAY_ADDRESS"):
        os.environ.pop(name, None)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _HOME is not None:
        shutil.rmtree(_HOME, ignore_errors=True)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path / "root", tmp_path)


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return Storage.from_settings(settings)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real moto S3 server on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = shutil.which("moto_server", path=os.path.dirname(sys.executable))
    assert server, "moto_server not installed: `make setup` installs moto[server]"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    command = [server, "-H", "127.0.0.1", "-p", str(port)]
    service = start_server("moto", command, f"{endpoint}/moto-api/", log, 30, os.environ)
    os.environ["AWS_ACCESS_KEY_ID"] = "testing"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
    yield endpoint
    processes.stop(service)


@pytest.fixture
def s3_settings(s3_server: str, tmp_path: Path) -> Settings:
    """Settings whose root is a fresh bucket on the moto server."""
    import boto3

    bucket = f"lungcls-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return make_settings(f"s3://{bucket}/root", tmp_path, s3_endpoint_url=s3_server)
