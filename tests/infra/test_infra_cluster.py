"""Acceptance: `lungcls train` on a real two-node Ray cluster, storage root on S3.

The local stack (`infra/local/stack.py`) starts, under the test's tmp: a moto S3 server, a
Prefect server, a Ray head and a worker node, each with `ray start` and token auth. A
dataset is built on the stack's S3, and the `lungcls train` command runs with the
variables the stack prints (`RAY_ADDRESS`, `LUNGCLS_ROOT=s3://…`, endpoint, credentials).
Each node offers 2 CPUs and each training worker takes 1.5: one fits a node, two do not, so
a run that finishes must have used both nodes. Ray's state API says where the workers ran;
the bucket must hold the run's checkpoints. `stack down` stops everything by PID (never
`ray stop`), and no process of the stack may be left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.local import processes, stack
from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.ingest.run import ingest
from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, synth_batch
from lungcls.train.trainer import CHECKPOINT_FILE
from tests.support import TEST_KEY, make_settings

# Small on purpose: what is tested is where training runs and where its files go.
SCANS = SynthOptions(
    scans=20, slices=12, rows=48, columns=48, pixel_spacing_mm=7.0, slice_spacing_mm=5.0, seed=21
)
NODE_CPUS = 2
CONFIG: dict[str, Any] = {
    "contracts": {"max_pixel_spacing_mm": 8.0},
    "dataset": {"require_both_classes": False},
    "preprocess": {"shape": [16, 16, 16], "spacing_mm": [2.5, 2.5, 2.5]},
    "model": {"width": 8, "depth": 2},
    "train": {
        "num_workers": 2,
        "cpus_per_worker": 1.5,
        "epochs": 2,
        "batch_size": 8,
        "warmup_epochs": 1,
        "folds": 1,
    },
}

# Runs as a driver of the cluster: Ray's state API, as an operator would query it.
STATE_PROBE = """
import json, os, sys
from ray.util.state import list_actors, list_nodes
address = os.environ["RAY_ADDRESS"]
nodes = {n.node_id: n.node_ip for n in list_nodes(address=address)}
workers = list_actors(
    address=address, filters=[("class_name", "=", "RayTrainWorker")], detail=True, limit=1000
)
json.dump({"nodes": nodes, "workers": [{"node_id": a.node_id, "pid": a.pid} for a in workers]},
          sys.stdout)
"""


@pytest.fixture
def local_stack(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The stack, up; stopped by `stack.down` (which fails if any process is left)."""
    folder = tmp_path / "stack"
    state = stack.up(folder, cpus_per_node=NODE_CPUS, worker_nodes=1, die_with_parent=True)
    try:
        yield state
    finally:
        if (folder / stack.STATE_FILE).exists():
            stack.down(folder)


@pytest.mark.slow
def test_train_runs_on_both_nodes_of_a_ray_cluster_and_checkpoints_to_s3(
    local_stack: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exports = local_stack["exports"]
    assert Path(local_stack["pseudonym_key_file"]).read_text()  # the stack made one
    # The test's own key instead of the stack's random one: the split comes from the key, and
    # 20 scans need this one's (train 14 / val 2 / test 4) to have val shards every time.
    key = TEST_KEY
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}  # the file wins
    env.update(exports, LUNGCLS_PSEUDONYM_KEY=key)
    with urllib.request.urlopen(f"{exports['PREFECT_API_URL']}/health", timeout=10) as reply:
        assert json.load(reply) is True

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(name, exports[name])
    settings = make_settings(
        exports["LUNGCLS_ROOT"],
        tmp_path,
        s3_endpoint_url=exports["LUNGCLS_S3_ENDPOINT_URL"],
        pseudonym_key=key,
        **CONFIG,
    )
    _build_dataset(settings)

    result = _lungcls_train(env, tmp_path)
    state = json.loads(_run([sys.executable, "-c", STATE_PROBE], env).stdout)
    services = [processes.Service(**s) for s in local_stack["services"]]
    stack.down(tmp_path / "stack")
    assert not any(processes.session_members(s) for s in services)

    assert len(state["nodes"]) == 2
    nodes_used = {w["node_id"] for w in state["workers"]}
    assert nodes_used == set(state["nodes"]), state
    # The processes that trained (they report their PIDs every epoch) are those workers.
    assert set(result["history"][-1]["worker_pids"]) <= {w["pid"] for w in state["workers"]}
    assert result["history"][-1]["workers"] == 2 and result["epochs_run"] == 2
    # Ray Train's checkpoints of this run, in the bucket: one per epoch, the best two kept.
    folders = [path.split("/")[2] for path in result["checkpoints"]]
    assert len(folders) == 2 and all(f.startswith("checkpoint_") for f in folders), folders


def _build_dataset(settings: Settings) -> None:
    """A dataset version on the stack's S3 (in-process: training is what runs remotely)."""
    synth_batch(Storage.from_settings(settings), "b1", SCANS)
    ingest(settings, progress=False)
    assert build_dataset(settings, progress=False).created


def _lungcls_train(env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    """`lungcls train --json` as a user runs it, then what it left in the bucket."""
    config = tmp_path / "lungcls.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    cli_env = {**env, "LUNGCLS_WORK_DIR": str(tmp_path / "work")}
    lungcls = str(Path(sys.executable).parent / "lungcls")
    out = _run([lungcls, "--config", str(config), "train", "--json"], cli_env).stdout
    result = json.loads(out[out.index("{\n") :])  # after the epoch lines

    storage = Storage(env["LUNGCLS_ROOT"], env["LUNGCLS_S3_ENDPOINT_URL"])
    files = storage.list_files(f"ray-train/{result['run_id']}")
    result["checkpoints"] = [f.path for f in files if f.path.endswith(f"/{CHECKPOINT_FILE}")]
    model = f"models/{result['model_name']}/v{result['model_version']}/model.json"
    assert storage.exists(model)
    return result


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{argv[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return done
