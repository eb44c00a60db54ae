"""deployments/prefect.yaml against a real Prefect server: deploy, a worker, a run through
the API with parameters, its artifacts read back. Every process is stopped by PID."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from infra.local import processes
from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, synth_batch
from tests.support import (
    ARTIFACT_KEYS,
    FLOW_SCANS,
    flow_run_artifacts,
    free_port,
    make_settings,
    start_server,
    write_flow_config,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`prefect server start` on 127.0.0.1 at a free port, its home in a temporary folder;
    yields the environment that points clients and workers at it."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # No scheduled runs while the test runs: the deployments' cron schedules are checked
        # as data, and only the run the test starts may reach the worker.
        "PREFECT_API_SERVICES_SCHEDULER_ENABLED": "false",
    }
    command = [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    health = f"http://127.0.0.1:{port}/api/health"
    server = start_server("prefect-server", command, health, home / "server.log", 120, env)
    yield env
    processes.stop(server)


def test_deploy_from_prefect_yaml_and_run_retrain_through_a_worker(
    prefect_server: dict[str, str], tmp_path: Path
) -> None:
    env = prefect_server
    config, root = write_flow_config(tmp_path), tmp_path / "root"
    synth_batch(
        Storage.from_settings(make_settings(root, tmp_path)),
        "b1",
        SynthOptions(scans=48, seed=21, **FLOW_SCANS),
    )

    def prefect(*args: str) -> str:
        done = subprocess.run(
            [PREFECT, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    prefect("work-pool", "create", "lungcls-process", "--type", "process")
    prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml")

    stack = contextlib.ExitStack()
    worker_command = [PREFECT, "worker", "start", "--pool", "lungcls-process"]
    worker = processes.spawn(
        "prefect-worker", worker_command, env, tmp_path / "worker.log", cwd=REPO
    )
    try:
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        # This process's client talks to the same server from here on.
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}))
        with get_client(sync_client=True) as client:
            nightly = client.read_deployment_by_name("retrain/nightly")
            frequent = client.read_deployment_by_name("ingest/frequent")
            manual = client.read_deployment_by_name("evaluate_and_promote/manual")
        expected = yaml.safe_load((REPO / "deployments/prefect.yaml").read_text())
        crons = {d["name"]: d["schedules"][0]["cron"] for d in expected["deployments"][:2]}
        assert nightly.schedules[0].schedule.cron == crons["nightly"]
        assert frequent.schedules[0].schedule.cron == crons["frequent"]
        assert manual.schedules == []
        schema = nightly.parameter_openapi_schema
        assert "force" in schema["definitions"]["RetrainParameters"]["properties"]

        params = {"params": {"config_file": str(config), "root": str(root)}}
        run = run_deployment("retrain/nightly", parameters=params, timeout=600)
        assert run.state is not None and run.state.is_completed(), (
            tmp_path / "worker.log"
        ).read_text()[-4000:]
        assert run.parameters["params"]["root"] == str(root)

        artifacts = flow_run_artifacts(run.id)
        assert set(artifacts) >= ARTIFACT_KEYS, sorted(artifacts)
        assert "promoted" in artifacts["retrain-summary"][0].data
    finally:
        stack.close()
        processes.stop(worker)  # the worker before the server, as Prefect wants
    assert (root / "models" / "lung-nodule-cnn" / "v1" / "model.json").is_file()
