"""Fixtures of the overlap and kill tests: a backend per test (a local folder or a bucket on
the moto S3 server), and roots prepared once per session, copied into each test's backend:
ingested series, a dataset version, and models on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.evaluate.evaluation import evaluate_model
from lungcls.ingest.run import ingest
from lungcls.io.storage import Storage
from lungcls.registry.promote import promote
from lungcls.sources.synth import SynthOptions, synth_batch
from tests.overlap.harness import Backend, stop_all_started
from tests.support import copy_root, make_settings, train_in_process

# The smallest pipeline whose every split holds both classes: 16 scans (train 8, val 3,
# test 5), 16³ patches in shards of 2-3 samples, a width-4 ResNet, one epoch on one worker,
# and gates that any model passes (the gates have their own tests).
PIPELINE_SCANS = SynthOptions(
    scans=16, slices=20, rows=64, columns=64, pixel_spacing_mm=5.6, slice_spacing_mm=5.0, seed=5
)
PIPELINE: dict[str, object] = {
    "contracts": {"max_pixel_spacing_mm": 6.0},
    "dataset": {"split_fractions": (0.5, 0.25, 0.25), "shard_target_mb": 0.02},
    "preprocess": {"shape": (16, 16, 16), "spacing_mm": (2.5, 2.5, 2.5)},
    "model": {"width": 4, "depth": 2},
    "train": {
        "epochs": 1,
        "num_workers": 1,
        "cpus_per_worker": 1,
        "batch_size": 8,
        "warmup_epochs": 0,
        "folds": 1,
    },
    "evaluation": {"bootstrap_rounds": 50, "min_patients_per_class": 1},
    "promotion": {
        "min_sensitivity": 0.0,
        "min_auc_lower_ci": 0.0,
        "max_ece": 1.0,
        "non_inferiority_margin": 1.0,
    },
    "ray": {"executor": "local", "num_cpus": 2},
}


@pytest.fixture(autouse=True)
def _stop_leftover_processes() -> Iterator[None]:
    yield
    stop_all_started()


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Where the test's roots live: folders of tmp_path, or a fresh bucket on moto."""
    if request.param == "local":
        return Backend("local", str(tmp_path / "roots"), None, tmp_path)
    import boto3

    endpoint = request.getfixturevalue("s3_server")
    bucket = f"overlap-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return Backend("s3", f"s3://{bucket}", endpoint, tmp_path)


def _template(
    tmp_path_factory: pytest.TempPathFactory, name: str, source: Storage | None
) -> Settings:
    folder = tmp_path_factory.mktemp(name)
    settings = make_settings(folder / "root", folder, **PIPELINE)
    if source is not None:
        copy_root(source, Storage.from_settings(settings))
    return settings


@pytest.fixture(scope="session")
def ingested_template(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A local root with the pipeline's batch ingested (read-only: copy it)."""
    settings = _template(tmp_path_factory, "ingested", None)
    synth_batch(Storage.from_settings(settings), "b1", PIPELINE_SCANS)
    ingest(settings, progress=False)
    return settings


@pytest.fixture(scope="session")
def dataset_template(
    tmp_path_factory: pytest.TempPathFactory, ingested_template: Settings
) -> Settings:
    """`ingested_template` with dataset version 1 built."""
    settings = _template(tmp_path_factory, "dataset", Storage.from_settings(ingested_template))
    assert build_dataset(settings, progress=False).created
    return settings


@pytest.fixture(scope="session")
def model_template(
    tmp_path_factory: pytest.TempPathFactory, dataset_template: Settings
) -> Settings:
    """`dataset_template` with model v1 (trained without Ray, deterministic)."""
    settings = _template(tmp_path_factory, "model", Storage.from_settings(dataset_template))
    assert train_in_process(settings, steps=3) == 1
    return settings


@pytest.fixture(scope="session")
def promotion_template(
    tmp_path_factory: pytest.TempPathFactory, model_template: Settings
) -> Settings:
    """`model_template` with v1 evaluated and champion, and a candidate v2 not evaluated."""
    settings = _template(tmp_path_factory, "promotion", Storage.from_settings(model_template))
    evaluate_model(settings)
    assert promote(settings).outcome == "promoted"
    assert train_in_process(settings, steps=4, seed=1) == 2
    return settings
