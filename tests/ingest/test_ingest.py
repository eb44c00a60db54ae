"""Ingest of synthetic batches: correctness, idempotence, crash safety, S3, and privacy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from lungcls.config import Settings
from lungcls.ingest.deid import pseudonym
from lungcls.ingest.label_table import current_labels
from lungcls.ingest.ledger import LOG_DIR, Ledger
from lungcls.ingest.run import ingest
from lungcls.ingest.series_store import iter_series, read_series_index
from lungcls.io.storage import Storage
from lungcls.sources.phantom import render_chest
from lungcls.sources.synth import SynthOptions, SynthScan, pack_zip, synth_batch
from tests.support import TEST_KEY, make_settings

SMALL = SynthOptions(
    scans=8, slices=12, rows=48, columns=48, pixel_spacing_mm=7.0, slice_spacing_mm=5.0, seed=3
)
KEY = TEST_KEY.encode()


@pytest.fixture
def batch(storage: Storage) -> list[SynthScan]:
    return synth_batch(storage, "b1", SMALL)


def _tree_digest(storage: Storage, prefix: str) -> dict[str, str]:
    return {i.path: storage.sha256(i.path) for i in storage.list_files(prefix)}


def test_series_store_matches_ground_truth(settings: Settings, batch: list[SynthScan]) -> None:
    summary = ingest(settings, progress=False)
    assert (summary.series_ingested, summary.quarantined) == (len(batch), [])
    storage = Storage.from_settings(settings)
    stored = {s.series_id: s for s in iter_series(storage)}
    labels = current_labels(storage)  # labels are their own table, applied at dataset build
    assert len(stored) == len(batch)
    for scan in batch:
        series = stored[pseudonym(KEY, "series", scan.scan.series_uid)]
        assert series.patient_id == pseudonym(KEY, "patient", scan.patient.patient_id)
        label = labels.lookup(series.batch, series.series_id, series.study_id, series.patient_id)
        assert label is not None and label.label == scan.label
        assert series.volume.shape[0] == SMALL.slices
        assert series.spacing_zyx_mm == (5.0, 7.0, 7.0)
        assert series.manufacturer == scan.scanner[0]
        assert series.slice_ids == [pseudonym(KEY, "instance", u) for u in scan.sop_uids]
        if scan.nodule is None:
            assert label.nodule_center_xyz_mm is None
        else:
            assert np.allclose(label.nodule_center_xyz_mm, scan.nodule.center_xyz_mm, atol=0.01)
        # the stored HU are the rendered phantom, through 12-bit storage and back
        rng = np.random.default_rng([SMALL.seed, 1, scan.index])
        nodules = [scan.nodule] if scan.nodule else []
        expected = np.clip(np.rint(render_chest(scan.geometry, rng, nodules)), -1024, 3071)
        assert np.array_equal(series.volume, expected.astype(np.int16))


def test_rerun_reads_no_archive_bytes_and_changes_nothing(
    settings: Settings, storage: Storage, batch: list[SynthScan]
) -> None:
    first = ingest(settings, progress=False)
    assert first.bytes_read > 0
    before = _tree_digest(storage, "series") | _tree_digest(storage, "ledger")
    again = ingest(settings, progress=False)
    assert (again.bytes_read, again.archives_ingested, again.series_ingested) == (0, 0, 0)
    assert again.archives_skipped == first.archives_seen
    assert _tree_digest(storage, "series") | _tree_digest(storage, "ledger") == before


def test_changed_archive_is_a_new_version_without_duplicates(
    settings: Settings, storage: Storage, batch: list[SynthScan]
) -> None:
    ingest(settings, progress=False)
    target = batch[0].archive
    moved = [s for s in batch if s.archive == target]
    # same bytes again (new mtime): recognised by digest, nothing re-ingested
    storage.write_atomic(target, storage.read_bytes(target))
    time.sleep(0.01)
    touched = ingest(settings, progress=False)
    assert (touched.archives_ingested, touched.series_ingested) == (0, 0)
    # new content: the archive now holds only its first series' files, plus one extra
    with storage.open(target, "rb") as f:
        import zipfile

        members = [(n, zipfile.ZipFile(f).read(n)) for n in zipfile.ZipFile(f).namelist()]
    folder = f"scan-{moved[0].index:04d}/"
    kept = [m for m in members if m[0].startswith(folder)]
    storage.write_atomic(target, pack_zip([*kept, ("notes.txt", b"not an image")]))
    changed = ingest(settings, progress=False)
    assert (changed.archives_ingested, changed.series_ingested, changed.files_quarantined) == (
        1,
        1,
        1,
    )
    index = read_series_index(storage).to_pylist()
    ids = [r["series_id"] for r in index]
    assert len(ids) == len(set(ids)) == len(batch) - (len(moved) - 1)
    entries = [e for e in Ledger.load(storage).entries if e.archive == target]
    assert [e.status for e in entries] == ["superseded", "ingested"]


def test_identifiers_never_leave_the_inbox(settings: Settings, storage: Storage) -> None:
    scans = synth_batch(storage, "b1", SMALL)
    storage.write_atomic("inbox/b1/extra.zip", pack_zip([("x/readme.txt", b"not dicom")]))
    ingest(settings, progress=False)
    secrets: set[str] = set()
    for scan in scans:
        secrets.update(scan.patient.values())
        secrets.update(scan.scan.values())
        secrets.update(scan.sop_uids)
        secrets.update(scan.patient.patient_name.split("^"))
    secrets = {s for s in secrets if len(s) >= 5}
    root = Path(settings.root)
    checked = 0
    for path in root.rglob("*"):
        if not path.is_file() or path.relative_to(root).parts[0] == "inbox":
            continue
        blobs = [path.read_bytes()]
        if path.suffix == ".parquet":  # compressed: search the decoded values too
            table = pq.read_table(path)
            blobs.append(
                str(
                    table.drop([c for c in ["volume"] if c in table.column_names]).to_pylist()
                ).encode()
            )
        leaks = [s for s in secrets for blob in blobs if s.encode() in blob]
        assert not leaks, f"{path.relative_to(root)} contains {leaks[:3]}"
        checked += 1
    assert checked >= 4  # ledger, series, key, quarantine record


def test_same_series_store_on_s3(s3_settings: Settings, settings: Settings) -> None:
    tables = []
    for config in (settings, s3_settings):
        synth_batch(Storage.from_settings(config), "b1", SMALL)
        summary = ingest(config, progress=False)
        assert summary.series_ingested == SMALL.scans
        stored = sorted(iter_series(Storage.from_settings(config)), key=lambda s: s.series_id)
        tables.append([{**s.to_row(), "ingest_run": ""} for s in stored])
    assert tables[0] == tables[1]
    again = ingest(s3_settings, progress=False)
    assert (again.bytes_read, again.series_ingested) == (0, 0)


def test_kill_9_mid_ingest_then_rerun_stores_each_series_once(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "root", tmp_path)
    storage = Storage.from_settings(settings)
    # Long enough (~27 archives of full-size phantoms) that the first ledger save, after one
    # second, comes well before the end.
    options = SynthOptions(scans=40, seed=11)
    scans = synth_batch(storage, "big", options)
    env = {**os.environ, "LUNGCLS_PSEUDONYM_KEY": TEST_KEY}
    command = [
        sys.executable,
        "-m",
        "lungcls.cli",
        "--root",
        settings.root,
        "--executor",
        "local",
        "ingest",
    ]
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    segments = Path(settings.root) / LOG_DIR  # the first ledger segment: a commit happened
    deadline = time.monotonic() + 120
    while (
        not any(segments.glob("*.parquet"))
        and process.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    partial = Ledger.load(storage)
    archives = {s.archive for s in scans}
    assert 0 < len(partial.entries) < len(archives), "the kill came too late to test anything"

    summary = ingest(settings, progress=False)
    assert summary.archives_skipped == len(partial.entries)
    index = read_series_index(storage).to_pylist()
    ids = [row["series_id"] for row in index]
    assert len(ids) == len(set(ids)) == len(scans)
    assert sorted(ids) == sorted(pseudonym(KEY, "series", s.scan.series_uid) for s in scans)


def test_series_files_from_before_the_split_column_still_read(
    storage: Storage, settings: Settings, batch: list[SynthScan]
) -> None:
    ingest(settings, progress=False)
    ledger = Ledger.load(storage)
    for rel in ledger.series_files():
        with storage.open(rel, "rb") as f:
            table = pq.read_table(f)
        with storage.open(rel, "wb") as f:  # as an older lungcls wrote it
            pq.write_table(table.drop_columns(["split"]), f)
    index = read_series_index(storage, ledger)
    assert index.num_rows == SMALL.scans
    assert index["split"].null_count == SMALL.scans
    stored = list(iter_series(storage, ledger=ledger))
    assert len(stored) == SMALL.scans and {s.split for s in stored} == {None}
