"""The Ray path of ingest: archives fan out as Ray tasks on a real local Ray."""

from __future__ import annotations

from pathlib import Path

import pytest

from lungcls.ingest.run import ingest
from lungcls.ingest.series_store import iter_series
from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, synth_batch
from tests.support import make_settings


@pytest.fixture
def ray_session(tmp_path_factory: pytest.TempPathFactory):
    import ray

    yield
    if ray.is_initialized():
        ray.shutdown()


def test_ray_ingest_equals_local_ingest(tmp_path: Path, ray_session: None) -> None:
    options = SynthOptions(
        scans=6, slices=10, rows=40, columns=40, pixel_spacing_mm=8.0, slice_spacing_mm=6.0, seed=9
    )
    results = []
    for executor in ("local", "ray"):
        settings = make_settings(
            tmp_path / executor, tmp_path, ray={"executor": executor, "num_cpus": 2}
        )
        storage = Storage.from_settings(settings)
        synth_batch(storage, "b", options)
        summary = ingest(settings, progress=False)
        assert summary.series_ingested == 6
        stored = sorted(iter_series(storage), key=lambda s: s.series_id)
        results.append([{**s.to_row(), "ingest_run": ""} for s in stored])
    assert results[0] == results[1]
