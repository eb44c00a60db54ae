"""Flow `build_dataset`: series store -> contracts -> preprocessing -> a dataset version."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger

from flows.artifacts import dataset_artifacts
from flows.common import content_key, run_stage, stage_task
from flows.parameters import RunParameters
from lungcls.config import Settings
from lungcls.dataset.build import build_dataset, dataset_fingerprint
from lungcls.io.storage import Storage


def _dataset_key(settings: Settings) -> str:
    return content_key("dataset", settings.dataset.name, dataset_fingerprint(settings))


@stage_task("build-dataset-version", _dataset_key)
def build_version(settings: Settings) -> dict[str, Any]:
    return asdict(build_dataset(settings, progress=False))


@flow(name="build_dataset", log_prints=True)
def build_dataset_flow(params: RunParameters = RunParameters()) -> dict[str, Any]:
    """Validate the series store against the data contracts and build the next dataset
    version (shards + manifest) if any series or setting changed."""
    settings = params.settings()
    built, cached = run_stage(build_version, settings)
    if cached:
        built = {**built, "created": False, "preprocessed": 0, "quarantined": []}
    dataset_artifacts(built, Storage.from_settings(settings))
    splits = ", ".join(f"{s} {sum(c.values())}" for s, c in built["counts"].items())
    get_run_logger().info(
        "dataset %s v%d %s (%s), %d series preprocessed, %d shards reused",
        built["name"],
        built["version"],
        "built" if built["created"] else "up to date",
        splits,
        built["preprocessed"],
        built["reused_shards"],
    )
    return built
