"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from infra.local import processes
from lungcls.config import Settings
from lungcls.io.storage import Storage

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEST_KEY = "test-pseudonym-key-0123456789"
# A root written by lungcls 0.1.0, before the stage packages and typed records: what was
# stored then must keep loading (copy it before writing to it).
OLD_ROOT = Path(__file__).resolve().parent / "fixtures" / "root-0.1.0"


# Training settings that lungcls 0.1.0 did not have, as its records read back: it trained one
# model on train and stopped on val (`folds: 1`); the others keep their defaults.
TRAIN_FIELDS_SINCE_0_1_0 = {"folds": 1, "augment_quarter_turns": False, "select_epoch": "best"}
# Model settings it did not have: it scored each input once (no test-time flips).
MODEL_FIELDS_SINCE_0_1_0 = {"test_time_flips": False}


def copy_root(source: Storage, target: Storage) -> None:
    """Every file of `source` into `target`, but its leases and probes (a root as one run
    left it: the next run starts with nobody holding a lease). Tests copy a root prepared
    once per module or session instead of ingesting the same batch again."""
    for info in source.list_files(""):
        if not info.path.startswith(("leases/", "probes/")):
            target.write_atomic(info.path, source.read_bytes(info.path))


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


def small_ct_series(index: int, n_slices: int = 4, size: int = 16, seed: int = 7) -> list:
    """A tiny but complete CT series (pydicom datasets) with fake identifiers."""
    import numpy as np

    from lungcls.sources.fake_identities import SCANNERS, fake_identity, scan_identity
    from lungcls.sources.phantom import centered_geometry
    from lungcls.sources.synth import ct_datasets

    rng = np.random.default_rng([seed, index])
    geometry = centered_geometry((n_slices, size, size), (2.0, 1.5, 1.5))
    hu = rng.normal(-800, 50, size=(n_slices, size, size))
    patient = fake_identity(rng, index)
    scan = scan_identity(rng, seed, index)
    return ct_datasets(hu, geometry, patient, scan, SCANNERS[index % len(SCANNERS)], seed)


def train_in_process(settings: Settings, steps: int, seed: int = 0) -> int:
    """Train a real model on a dataset version's train shards without Ray (full batch, AdamW,
    `lungcls.train.loop.train_epoch`) and publish it as a model version: for tests of what
    comes after training."""
    import numpy as np
    import torch

    from lungcls.dataset.manifest import load_manifest
    from lungcls.dataset.shards import iter_samples
    from lungcls.registry.records import BestEpoch
    from lungcls.registry.store import publish_model, serialise_model
    from lungcls.train.loop import train_epoch
    from lungcls.train.models import build_model
    from lungcls.train.trainer import model_record

    storage = Storage.from_settings(settings)
    manifest = load_manifest(storage, settings.dataset.name)
    samples = list(iter_samples(storage, manifest.shards_of("train")))
    x = torch.from_numpy(np.stack([s.array().astype(np.float32) for s in samples]))
    y = torch.tensor([float(s.label) for s in samples])
    torch.manual_seed(seed)
    model = build_model(settings.model, manifest.tensor_shape, seed)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    full_batch = [{"x": x, "label": y}]
    for _ in range(steps):  # one step per pass: the library's loop, without Ray
        train_epoch(model, full_batch, optimiser, loss_fn)
    best = BestEpoch(epoch=steps - 1, val_auc=None)
    record = model_record(settings, manifest, f"test-{steps}-steps", [], best)
    return publish_model(
        storage, settings.model.name, serialise_model(model, record.tensor_shape), record
    )


# A pipeline small enough for flow tests: 16³ patches, a narrow CNN, a few epochs, and gates
# that any model that learned something passes (the gates themselves are tested elsewhere).
FLOW_SCANS = {
    "slices": 20,
    "rows": 64,
    "columns": 64,
    "pixel_spacing_mm": 5.6,
    "slice_spacing_mm": 5.0,
}
FLOW_CONFIG: dict[str, object] = {
    "pseudonym_key": TEST_KEY,
    "contracts": {"max_pixel_spacing_mm": 6.0},
    "preprocess": {"shape": [16, 16, 16], "spacing_mm": [2.5, 2.5, 2.5]},
    "model": {"width": 8, "depth": 2},
    "train": {
        "epochs": 4,
        "batch_size": 8,
        "learning_rate": 0.003,
        "warmup_epochs": 1,
        "early_stopping_patience": 100,
        "folds": 1,  # cross-validation has its own tests (tests/train)
        # One rank: flows wire stages; DDP over two ranks has its own tests (tests/train),
        # and every rank is one more process importing torch on CI's two cores.
        "num_workers": 1,
        "cpus_per_worker": 1,
    },
    # The 48-scan flow batch's test split has 1 patient with cancer: intervals from one
    # patient a class are accepted here (test_split_too_small has its own tests).
    "evaluation": {"bootstrap_rounds": 200, "min_patients_per_class": 1},
    "promotion": {
        "min_sensitivity": 0.0,
        "min_auc_lower_ci": 0.0,
        "max_ece": 1.0,
        "non_inferiority_margin": 1.0,
    },
    "ray": {"executor": "local", "num_cpus": 2},
}


def write_flow_config(folder: Path, **overrides: object) -> Path:
    """A lungcls YAML config for flow runs (flows read their settings from a file)."""
    import yaml

    config = {**FLOW_CONFIG, "work_dir": str(folder / "work"), **overrides}
    path = folder / "lungcls.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def flow_run_artifacts(flow_run_id: object) -> dict[str, list[object]]:
    """Every artifact of a flow run and its subflow runs, by key, read through the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
    )

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
        runs = [flow_run_id, *(c.id for c in children)]
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=runs))
        )
    by_key: dict[str, list[object]] = {}
    for artifact in found:
        by_key.setdefault(artifact.key, []).append(artifact)
    return by_key


ARTIFACT_KEYS = {
    "ingest-summary",
    "ingest-quarantine",
    "validation-summary",
    "dataset-version",
    "training-history",
    "evaluation-report",
    "evaluation-metrics",
    "promotion-decision",
    "retrain-summary",
}


def free_port() -> int:
    return processes.free_ports(1)[0]


def start_server(
    name: str, command: list[str], url: str, log: Path, timeout_s: float, env: Mapping[str, str]
) -> processes.Service:
    """Start a server in its own session (output to `log`) and wait until `url` answers; on
    failure, stop it and raise with the end of its log. `processes.stop` stops it by PID."""
    service = processes.spawn(name, command, env, log)
    try:
        processes.wait_for(lambda: processes.http_ok(url), service, url, timeout_s)
    except RuntimeError:
        processes.stop(service)
        raise
    return service
