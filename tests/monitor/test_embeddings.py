"""The champion's penultimate-layer embeddings in the drift report, from a real root: a
champion trained (in process) on a version whose test split is large enough to be a
reference (half the patients: the usual 15 % of 30 phantoms is two samples, which the
domain classifier rightly calls not estimable), then a batch like its data and a shifted
one, one row per patient, compared through `monitor_ingested` and `lungcls drift`.

The shift is a low-dose one (400 HU more noise), not `synth --shift`'s defaults: the group
norm of this small network (8³ patches, 30 full-batch steps) takes out much of a sample's
HU offset and scale, so a brighter batch reaches its penultimate layer nearly unchanged
(measured, domain classifier AUC against the test split, per sample: 0.63 with the
defaults, 0.55 with +300 HU, 0.41-0.61 for normal batches) while the image statistics flag
it. What the model does see, it shows: 0.85 with 400 HU of noise, 0.75 with -300 HU (the
lung clipped at the window's floor). (The 5-fold ensemble of docs/screenshot_ui.py, on
16³ patches, does see +300 HU: AUC 0.78-0.81.)"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from lungcls.cli import main
from lungcls.config import Settings, load_settings
from lungcls.dataset.build import build_dataset
from lungcls.dataset.manifest import load_manifest
from lungcls.dataset.shards import iter_samples
from lungcls.ingest.run import ingest
from lungcls.io.storage import Storage
from lungcls.monitor.batch_evaluation import MonitoringError
from lungcls.monitor.embeddings import (
    batch_embeddings,
    drift_embeddings,
    mean_per_patient,
    reference_embeddings,
)
from lungcls.monitor.features import EMBEDDING_FEATURE
from lungcls.monitor.prospective import unseen_series
from lungcls.monitor.report import DriftReport
from lungcls.monitor.run import monitor_ingested
from lungcls.monitor.statistics import FeatureDrift
from lungcls.registry.aliases import move_alias, read_alias
from lungcls.registry.promote import CHAMPION
from lungcls.registry.records import ModelRecord
from lungcls.registry.store import load_model, load_record
from lungcls.sources.synth import AcquisitionShift, SynthOptions, synth_batch
from tests.support import TEST_KEY, train_in_process

BASE = SynthOptions(
    scans=40, slices=12, rows=40, columns=40, pixel_spacing_mm=7.0, slice_spacing_mm=2.5, seed=51
)
BATCH_SCANS = 32
LOW_DOSE = AcquisitionShift(extra_noise_hu=400.0)
NORMAL = "site-a-2021"
SHIFTED = "site-b-2021"
WIDTH = 16  # the penultimate layer of model width 8, depth 2: 8 x 2 channels
CONFIG = {
    "pseudonym_key": TEST_KEY,
    "ray": {"executor": "local"},
    "contracts": {"max_pixel_spacing_mm": 8.0},
    "dataset": {"split_fractions": [0.3, 0.2, 0.5]},
    "preprocess": {"shape": [8, 8, 8], "spacing_mm": [4.0, 4.0, 4.0]},
    "model": {"width": 8, "depth": 2},
    "evaluation": {"bootstrap_rounds": 100, "min_patients_per_class": 1},
}


@dataclass
class Root:
    config: Path
    settings: Settings
    record: ModelRecord
    ingest_runs: dict[str, str]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Root:
    tmp = tmp_path_factory.mktemp("embeddings")
    config = tmp / "lungcls.yaml"
    config.write_text(
        yaml.safe_dump({**CONFIG, "root": str(tmp / "root"), "work_dir": str(tmp / "work")})
    )
    settings = load_settings(config)
    storage = Storage.from_settings(settings)
    synth_batch(storage, "site-a-2020", BASE)
    ingest(settings, progress=False)
    build_dataset(settings, progress=False)
    version = train_in_process(settings, steps=30)
    name = settings.model.name
    assert move_alias(storage, name, read_alias(storage, name, CHAMPION), version, "test")
    runs = {}
    for batch, options in {
        NORMAL: SynthOptions(**{**BASE.__dict__, "scans": BATCH_SCANS, "seed": 70}),
        SHIFTED: SynthOptions(
            **{**BASE.__dict__, "scans": BATCH_SCANS, "seed": 81, "shift": LOW_DOSE}
        ),
    }.items():
        synth_batch(storage, batch, options)
        runs[batch] = ingest(settings, batch, progress=False).run_id
    return Root(config, settings, load_record(storage, name, version), runs)


def _new_patients(root: Root, batch: str) -> int:
    storage = Storage.from_settings(root.settings)
    return unseen_series(storage, root.record, batch).labelled["patient_id"].nunique()


def _embedding_row(report: DriftReport) -> FeatureDrift:
    (row,) = [f for f in report.features if f.name == EMBEDDING_FEATURE]
    return row


def test_embeddings_are_one_row_per_unseen_patient_as_wide_as_the_penultimate_layer(
    root: Root,
) -> None:
    storage = Storage.from_settings(root.settings)
    manifest = load_manifest(storage, root.record.dataset.name, root.record.dataset.version)
    tested = {s.patient_id for s in iter_samples(storage, manifest.shards_of("test"))}
    assert len(tested) >= root.settings.monitoring.min_values  # else not estimable
    reference, batch = drift_embeddings(root.settings, NORMAL)
    assert reference.shape == (len(tested), WIDTH)
    assert batch.shape == (_new_patients(root, NORMAL), WIDTH)
    assert reference.dtype == batch.dtype == np.float32
    assert np.isfinite(reference).all() and np.isfinite(batch).all()
    assert not np.allclose(batch[0], batch[1])  # features of each patient, not a constant
    # A larger side is sampled (patches, then their patients' means), with a fixed seed:
    # the same rows on every run.
    model = load_model(storage, root.record)
    capped = reference_embeddings(storage, root.record, model, limit=5)
    assert 2 <= len(capped) <= 5 and capped.shape[1] == WIDTH
    assert np.array_equal(capped, reference_embeddings(storage, root.record, model, limit=5))
    few = batch_embeddings(storage, root.record, model, NORMAL, limit=7)
    assert 2 <= len(few) <= 7 and len(few) < len(batch)


def test_a_patients_samples_are_one_row_their_mean() -> None:
    features = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], dtype=np.float32)
    merged = mean_per_patient(features, ["p2", "p1", "p2", "p3"])
    assert np.array_equal(merged, np.array([[3.0, 4.0], [3.0, 4.0], [7.0, 8.0]]))
    assert mean_per_patient(np.empty((0, 2), np.float32), []).shape == (0, 2)
    with pytest.raises(MonitoringError, match="3 embeddings for 2 patient ids"):
        mean_per_patient(features[:3], ["p1", "p2"])


def test_the_shifted_batch_drifts_in_the_embeddings_of_its_monitoring(root: Root) -> None:
    summary = monitor_ingested(root.settings, root.ingest_runs[SHIFTED])
    (monitored,) = summary.batches
    storage = Storage.from_settings(root.settings)
    report = DriftReport.from_json(storage.read_bytes(f"{monitored.drift}/drift.json"))
    row = _embedding_row(report)
    assert row.estimable and row.reference_n >= 5, row.detail
    assert row.current_n == _new_patients(root, SHIFTED)
    assert row.statistic is not None and row.statistic > 0.8, row.detail  # domain AUC
    assert row.effect is not None and row.effect > report.thresholds.max_drift
    assert row.drifted and EMBEDDING_FEATURE in monitored.alerts[-1]


def test_a_batch_like_the_training_data_does_not_drift_in_them(
    root: Root, capsys: pytest.CaptureFixture[str]
) -> None:
    # Through `lungcls drift`: the champion's embeddings without `lungcls monitor` first.
    assert main(["--config", str(root.config), "drift", "--batch", NORMAL, "--json"]) == 0
    report = DriftReport.from_json(json.loads(capsys.readouterr().out)["report"])
    row = _embedding_row(report)
    assert row.estimable and row.current_n == _new_patients(root, NORMAL), row.detail
    assert not row.drifted, row.detail
