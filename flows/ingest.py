"""Flow `ingest`: new or changed archives in the inbox -> series store (one task)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow, get_run_logger

from flows.artifacts import ingest_artifacts
from flows.common import content_key, run_stage, stage_task
from flows.parameters import IngestParameters
from lungcls.config import Settings
from lungcls.ingest.run import inbox_fingerprint, ingest
from lungcls.io.storage import Storage


def _ingest_key(settings: Settings, batch: str | None) -> str:
    return content_key("ingest", inbox_fingerprint(settings, batch))


@stage_task("ingest-archives", _ingest_key)
def ingest_archives(settings: Settings, batch: str | None) -> dict[str, Any]:
    return asdict(ingest(settings, batch, progress=False))


@flow(name="ingest", log_prints=True)
def ingest_flow(params: IngestParameters = IngestParameters()) -> dict[str, Any]:
    """Ingest every new or changed DICOM archive under the inbox; quarantine what is bad."""
    settings = params.settings()
    storage = Storage.from_settings(settings)
    summary, cached = run_stage(ingest_archives, settings, params.batch)
    if cached:  # the inbox is as an earlier run left it: nothing was opened or ingested
        summary = {**summary, "archives_ingested": 0, "series_ingested": 0, "quarantined": []}
        summary.update(archives_skipped=summary["archives_seen"], bytes_read=0, seconds=0.0)
    ingest_artifacts({**summary, "cached": cached}, storage)
    get_run_logger().info(
        "ingest %s%s: %d archives seen, %d ingested, %d already done, %d new series, "
        "%d quarantined items",
        summary["run_id"],
        " (inbox unchanged: cached)" if cached else "",
        summary["archives_seen"],
        summary["archives_ingested"],
        summary["archives_skipped"],
        summary["series_ingested"],
        len(summary["quarantined"]),
    )
    return summary
