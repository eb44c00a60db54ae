"""Drift reports from a real root: synthetic batches ingested and built into a dataset
version, then a batch like it, a `synth --shift` batch and a tiny one compared with its
training split."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.dataset.manifest import DatasetRef
from lungcls.dataset.validation import series_frame
from lungcls.ingest.ledger import Ledger
from lungcls.ingest.run import ingest
from lungcls.io.storage import Storage
from lungcls.monitor.gather import drift_report, gather_drift_tables
from lungcls.monitor.report import DriftReport, drift_folder, write_drift_report
from lungcls.monitor.statistics import DriftError
from lungcls.registry.aliases import move_alias, read_alias
from lungcls.registry.promote import CHAMPION
from lungcls.sources.synth import AcquisitionShift, SynthOptions, SynthScan, synth_batch
from tests.support import make_settings, train_in_process

BASE = SynthOptions(
    scans=30, slices=12, rows=40, columns=40, pixel_spacing_mm=7.0, slice_spacing_mm=2.5, seed=31
)
SHIFTED_BATCH = "later-site-b"  # a folder name the report must not carry
ACQUISITION_SHIFT = {
    "manufacturer",
    "manufacturer_model",
    "convolution_kernel",
    "kvp",
    "slice_thickness_mm",
    "slice_spacing_mm",
}


@dataclass
class Root:
    settings: Settings
    dataset: DatasetRef
    scans: dict[str, list[SynthScan]]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Root:
    """A dataset version built from one batch; three more batches ingested after it."""
    tmp = tmp_path_factory.mktemp("drift")
    settings = make_settings(
        tmp / "root",
        tmp,
        contracts={"max_pixel_spacing_mm": 8.0},
        preprocess={"shape": (8, 8, 8), "spacing_mm": (4.0, 4.0, 4.0)},
    )
    storage = Storage.from_settings(settings)
    scans = {"first": synth_batch(storage, "first", BASE)}
    ingest(settings, progress=False)
    built = build_dataset(settings, progress=False)
    later = {
        "normal": SynthOptions(**{**BASE.__dict__, "scans": 16, "seed": 32}),
        SHIFTED_BATCH: SynthOptions(
            **{**BASE.__dict__, "scans": 16, "seed": 33, "shift": AcquisitionShift()}
        ),
        "tiny": SynthOptions(**{**BASE.__dict__, "scans": 3, "seed": 34}),
    }
    for batch, options in later.items():
        scans[batch] = synth_batch(storage, batch, options)
    ingest(settings, progress=False)
    return Root(settings, DatasetRef(name=built.name, version=built.version), scans)


def test_a_batch_like_the_training_data_shows_no_drift(root: Root) -> None:
    report = drift_report(root.settings, "normal", dataset=root.dataset)
    assert not report.drifted, report.verdict()
    assert report.counts.current_series == report.counts.current_samples == 16
    assert report.counts.reference_series == report.counts.reference_samples > 10
    assert report.reference_splits == ["train"] and report.model is None
    assert all(f.estimable for f in report.features)
    assert len(report.features) == 17  # 7 acquisition features, 10 image statistics


def test_a_shifted_acquisition_is_flagged_and_written_without_identifiers(root: Root) -> None:
    report = drift_report(root.settings, SHIFTED_BATCH, dataset=root.dataset)
    drifted = {f.name: f for f in report.drifted_features}
    assert set(drifted) >= ACQUISITION_SHIFT, report.verdict()
    assert "lung_hu_p50" in drifted  # +60 HU: the lung is denser
    assert "pixel_spacing_mm" not in drifted  # unchanged by the shift
    assert drifted["convolution_kernel"].effect_name == "PSI"
    assert "new in the batch: FC52" in drifted["convolution_kernel"].detail
    assert drifted["slice_thickness_mm"].effect_name == "Wasserstein / reference SD"
    assert "median 2.5 → 5" in drifted["slice_thickness_mm"].detail
    assert "kvp (PSI" in report.verdict() and "lung_hu_p50 (Wasserstein" in report.verdict()

    storage = Storage.from_settings(root.settings)
    urls = write_drift_report(storage, report, drift_folder("run-test"))
    assert set(urls) == {"drift.json", "drift.md", "drift.html"}
    folder = drift_folder("run-test")
    assert DriftReport.load(storage, f"{folder}/drift.json") == report
    html = storage.read_text(f"{folder}/drift.html")
    assert html.startswith("<!DOCTYPE html>") and "DRIFT" in html and "<script" not in html
    artifact, table = report.artifacts(storage.url(f"{folder}/drift.html"))
    assert artifact.key == "drift-report" and "| convolution_kernel |" in artifact.markdown
    assert table.table is not None and len(table.table) == len(report.features)
    kernel = next(row for row in table.table if row["feature"] == "convolution_kernel")
    assert kernel["drifted"] == "yes" and kernel["effect size"] == "PSI"

    # Patient-safe: no pseudonym, UID, identifier, date or inbox folder name anywhere.
    frame = series_frame(storage, Ledger.load(storage))
    secrets = {SHIFTED_BATCH, *frame["series_id"], *frame["patient_id"], *frame["study_id"]}
    for scan in root.scans[SHIFTED_BATCH]:
        secrets |= {*scan.patient.values(), *scan.scan.values(), *scan.sop_uids}
    texts = [storage.read_text(f"{folder}/{name}") for name in urls]
    texts += [artifact.markdown or "", str(table.table), *report.summary_lines()]
    leaked = {s for s in secrets if any(s in text for text in texts)}
    assert not leaked
    assert report.batch.startswith("batch-")  # named by its pseudonym


def test_a_tiny_batch_is_not_estimable_and_says_so(root: Root) -> None:
    report = drift_report(root.settings, "tiny", dataset=root.dataset)
    assert report.counts.current_series == 3 and not report.drifted
    assert report.not_estimable == report.features
    assert all("3 values in the batch" in f.detail for f in report.features)
    assert any("not estimable (fewer than 5)" in line for line in report.summary_lines())


def test_what_the_reference_holds_is_not_compared_with_itself(root: Root) -> None:
    report = drift_report(root.settings, "first", dataset=root.dataset)
    counts = report.counts
    assert counts.current_in_reference == counts.reference_series  # its train split, left out
    assert counts.current_series == 30 - counts.reference_series  # its val and test series
    with pytest.raises(DriftError, match="batch 'nowhere' has no ingested series"):
        drift_report(root.settings, "nowhere", dataset=root.dataset)


def test_both_sides_carry_their_patients_for_the_statistics(root: Root) -> None:
    """The statistics compare one value per patient, so every row names its patient: the
    batch's rows its own patients, none of them in the reference."""
    tables = gather_drift_tables(root.settings, "normal", root.dataset)
    reference = set(tables.reference_samples["patient_id"])
    batch = set(tables.current_samples["patient_id"])
    assert set(tables.reference_series["patient_id"]) == reference
    assert set(tables.current_series["patient_id"]) == batch
    patients = {scan.patient.patient_id for scan in root.scans["normal"]}  # some have 2 scans
    assert len(batch) == len(patients) and reference and not batch & reference


def test_without_a_dataset_the_reference_is_the_champions_training_data(root: Root) -> None:
    storage = Storage.from_settings(root.settings)
    name = root.settings.model.name
    with pytest.raises(DriftError, match="has no champion yet"):
        drift_report(root.settings, "normal")
    version = train_in_process(root.settings, steps=1)
    assert move_alias(storage, name, read_alias(storage, name, CHAMPION), version, "test")
    report = drift_report(root.settings, "normal")
    assert report.model == f"{name} v{version}" and report.reference == root.dataset
    assert report.reference_splits == ["train"]  # one model on train (no folds)
    assert not report.drifted
