"""Issue 17's synthetic acceptance, through the `monitor` flow (a real Prefect flow; the
champion is trained in process, without Ray, to keep it quick): a champion trained on one
normal batch; a second normal batch raises no alert; a `synth --shift` batch is flagged by
the drift report, with the drifted features and their effect sizes named, the champion's
row on it shows what the shift did to its operating point, and an alert is raised. Each
ingest run is monitored once: running the flow again returns the same summary."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flows.monitor import monitor_flow
from lungcls.config import Settings, load_settings
from lungcls.dataset.build import build_dataset
from lungcls.flow_parameters import MonitorParameters
from lungcls.ingest.run import ingest
from lungcls.io.storage import Storage
from lungcls.monitor.batch_evaluation import BatchEvaluation, read_batch_history
from lungcls.monitor.report import DriftReport
from lungcls.monitor.run import MonitoringSummary, monitor_ingested
from lungcls.monitor.subgroups import new_manufacturers
from lungcls.registry.aliases import move_alias, read_alias
from lungcls.registry.promote import CHAMPION
from lungcls.sources.synth import AcquisitionShift, SynthOptions, synth_batch
from tests.support import TEST_KEY, flow_run_artifacts, train_in_process

BASE = SynthOptions(
    scans=30, slices=12, rows=40, columns=40, pixel_spacing_mm=7.0, slice_spacing_mm=2.5, seed=41
)
CONFIG = {
    "pseudonym_key": TEST_KEY,
    "ray": {"executor": "local"},
    "contracts": {"max_pixel_spacing_mm": 8.0},
    "preprocess": {"shape": [8, 8, 8], "spacing_mm": [4.0, 4.0, 4.0]},
    "model": {"width": 8, "depth": 2},
    "evaluation": {"bootstrap_rounds": 200},
}
# A miscalibrated scanner among the other changes: +300 HU moves every tissue, so the
# champion's fixed operating point no longer means what it meant (measured: sensitivity
# 0.58 on the normal batch, 0.42 on this one, specificity 1.0 on both).
SHIFT = AcquisitionShift(hu_offset=300.0)


def _ingest(settings: Settings, batch: str, options: SynthOptions) -> str:
    synth_batch(Storage.from_settings(settings), batch, options)
    return ingest(settings, batch, progress=False).run_id


def _monitor(config: Path, ingest_run: str) -> tuple[MonitoringSummary, dict[str, list[object]]]:
    state = monitor_flow(
        MonitorParameters(config_file=str(config), ingest_run=ingest_run), return_state=True
    )
    assert state.is_completed(), state.message  # alerts never fail the run
    return state.result(), flow_run_artifacts(state.state_details.flow_run_id)


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Settings]:
    tmp = tmp_path_factory.mktemp("monitor-flow")
    config = tmp / "lungcls.yaml"
    config.write_text(
        yaml.safe_dump({**CONFIG, "root": str(tmp / "root"), "work_dir": str(tmp / "work")})
    )
    settings = load_settings(config)
    first = _ingest(settings, "site-a-2019", BASE)
    assert monitor_ingested(settings, first).note.startswith("no champion yet")
    build_dataset(settings, progress=False)
    version = train_in_process(settings, steps=30)
    storage, name = Storage.from_settings(settings), settings.model.name
    assert move_alias(storage, name, read_alias(storage, name, CHAMPION), version, "test")
    return config, settings


def test_a_normal_batch_raises_nothing_and_a_shifted_one_is_flagged(
    champion: tuple[Path, Settings],
) -> None:
    config, settings = champion
    storage = Storage.from_settings(settings)

    normal_run = _ingest(
        settings, "site-a-2020", SynthOptions(**{**BASE.__dict__, "scans": 24, "seed": 42})
    )
    normal, artifacts = _monitor(config, normal_run)
    assert normal.alerts == [] and len(normal.batches) == 1, normal.summary_lines()
    assert {"batch-evaluation", "batch-history", "drift-report", "drift-features"} <= set(artifacts)
    assert "monitoring-alert" not in artifacts
    normal_row = read_batch_history(storage, settings.model.name)[-1]
    assert normal_row.roc_auc.value is not None and normal_row.roc_auc.value >= 0.8

    options = SynthOptions(**{**BASE.__dict__, "scans": 24, "seed": 43, "shift": SHIFT})
    shifted_run = _ingest(settings, "site-b-2020", options)
    shifted, artifacts = _monitor(config, shifted_run)
    (batch,) = shifted.batches
    assert batch.alerts and "monitoring-alert" in artifacts, shifted.summary_lines()
    report = DriftReport.from_json(storage.read_bytes(f"{batch.drift}/drift.json"))
    drifted = {f.name for f in report.drifted_features}
    assert {"manufacturer", "convolution_kernel"} <= drifted, drifted
    assert any(name.startswith("lung_") or name.startswith("patch_") for name in drifted), drifted
    assert all(
        f.effect is not None and f.effect > report.thresholds.max_drift
        for f in report.drifted_features
    )
    assert "drift in" in batch.alerts[-1] and "PSI" in batch.alerts[-1]
    # What the gate asks of a candidate (promotion.require_drifted_subgroups): the new maker.
    assert new_manufacturers(storage, settings.model.name) == [SHIFT.scanner.manufacturer]

    # The champion's fixed operating point on the shifted batch: the cancers it misses.
    row = BatchEvaluation.from_json(storage.read_bytes(str(batch.evaluation)))
    assert row.batch == batch.batch and row.model_version == normal_row.model_version
    before, after = normal_row.sensitivity.value, row.sensitivity.value
    assert before is not None and after is not None and after < before, (before, after)

    # Monitored once: the flow run again returns the same summary, and no row is added.
    rows = len(read_batch_history(storage, settings.model.name))
    again, _ = _monitor(config, shifted_run)
    assert again == shifted and len(read_batch_history(storage, settings.model.name)) == rows
