"""The labels table: labels.csv versions read whenever a file changes, with a history, each
problem quarantined once, and nothing identifying outside the ledger."""

from __future__ import annotations

import codecs
import time
from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq

from lungcls.config import Settings
from lungcls.ingest.archive import discover_archives
from lungcls.ingest.deid import pseudonym
from lungcls.ingest.label_matching import unmatched_labels
from lungcls.ingest.label_table import (
    HISTORY_PATH,
    LabelsHistory,
    LabelsRefresh,
    batch_pseudonym,
    current_labels,
    labels_fingerprint,
    refresh_labels,
)
from lungcls.ingest.ledger import LOG_DIR, Ledger
from lungcls.ingest.run import ingest
from lungcls.ingest.series_store import read_series_index
from lungcls.io.quarantine import read_quarantine
from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, synth_batch
from tests.support import TEST_KEY

KEY = TEST_KEY.encode()
LABELS = "inbox/b1/labels.csv"
PLAIN = (
    "series_uid,patient_id,label,nodule_x_mm,nodule_y_mm,nodule_z_mm\n"  # the header is row 0
    "1.1,,1,1.5,2,3\n"
    ",P7,0,,,\n"
)
SMALL = SynthOptions(
    scans=4, slices=12, rows=48, columns=48, pixel_spacing_mm=7.0, slice_spacing_mm=5.0, seed=3
)


def _refresh(storage: Storage, run_id: str) -> LabelsRefresh:
    _, label_files = discover_archives(storage, "inbox")
    return refresh_labels(storage, KEY, label_files, run_id)


def _deliver(storage: Storage, rel: str, data: bytes) -> None:
    time.sleep(0.01)  # a new mtime, as a second delivery has
    storage.write_atomic(rel, data)


def test_each_changed_file_is_the_next_version(storage: Storage) -> None:
    series, patient = pseudonym(KEY, "series", "1.1"), pseudonym(KEY, "patient", "P7")
    storage.write_atomic(LABELS, PLAIN.encode())
    first = _refresh(storage, "r1")
    assert [(v.batch, v.version, v.rows) for v in first.versions] == [("b1", 1, 2)]
    assert first.batches == ["b1"] and first.quarantined == []
    labels = current_labels(storage)
    assert labels.lookup("b1", series, "s", "p").label == 1
    assert labels.lookup(batch_pseudonym(KEY, "b1"), "x", "s", patient).label == 0
    assert labels.lookup("b2", series, "s", "p") is None and not labels.covers("b2")
    fingerprint = labels_fingerprint(storage)
    history = storage.read_bytes(HISTORY_PATH)

    assert _refresh(storage, "r2").versions == []  # unchanged: not even read
    assert storage.read_bytes(HISTORY_PATH) == history
    _deliver(storage, LABELS, PLAIN.encode())  # the same bytes again: a new tag, no version
    assert _refresh(storage, "r3").versions == []
    assert len(LabelsHistory.load(storage).entries) == 1

    # The same labels as Excel saves them: a version (other bytes), but the same labels.
    excel = codecs.BOM_UTF8 + PLAIN.replace(",", ";").replace("\n", "\r\n").encode()
    _deliver(storage, LABELS, excel)
    assert [v.version for v in _refresh(storage, "r4").versions] == [2]
    assert labels_fingerprint(storage) == fingerprint

    _deliver(storage, LABELS, PLAIN.replace("1.1,,1", "1.1,,0").encode())  # a corrected label
    assert [v.version for v in _refresh(storage, "r5").versions] == [3]
    assert current_labels(storage).lookup("b1", series, "s", "p").label == 0
    assert labels_fingerprint(storage) not in ("", fingerprint)
    assert labels_fingerprint(storage, batches=["b2"]) == ""

    storage.remove(LABELS)  # deleted: the last version stays current
    assert _refresh(storage, "r6").versions == []
    assert current_labels(storage).lookup("b1", series, "s", "p").label == 0

    _deliver(storage, LABELS, PLAIN.splitlines()[0].encode())  # header only: labels withdrawn
    assert [(v.version, v.rows) for v in _refresh(storage, "r7").versions] == [(4, 0)]
    assert current_labels(storage).lookup("b1", series, "s", "p") is None
    history = LabelsHistory.load(storage)
    assert [e.version for e in history.entries] == [1, 2, 3, 4]
    assert [e.run_id for e in history.entries] == ["r1", "r4", "r5", "r7"]
    assert all(storage.exists(e.table) for e in history.entries)


def test_an_unchanged_bad_file_is_quarantined_once(storage: Storage) -> None:
    storage.write_atomic(LABELS, b"series_uid,label\n1.1,maybe\n1.2,1\n1.2,0\n")
    first = _refresh(storage, "r1")
    assert sorted((i.code, i.row) for i in first.quarantined) == [
        ("labels_bad_value", 1),
        ("labels_duplicate", 3),
    ]
    assert all(i.source_url == storage.url(LABELS) for i in first.quarantined)
    assert first.versions[0].rows == 1  # the good row counts
    for run in ("r2", "r3"):
        assert _refresh(storage, run).quarantined == []
    assert {i.run for i in read_quarantine(storage)} == {"r1"}

    # A file that cannot be read at all is reported once, and does not unlabel the batch.
    _deliver(storage, LABELS, "series_uid,label\nMüller,1\n".encode("latin-1"))
    refused = _refresh(storage, "r4")
    assert [(i.code, i.row) for i in refused.quarantined] == [("labels_unreadable", 1)]
    assert refused.batches == []
    assert _refresh(storage, "r5").quarantined == []
    labels = current_labels(storage)
    assert labels.versions[batch_pseudonym(KEY, "b1")].version == 1
    assert labels.lookup("b1", pseudonym(KEY, "series", "1.2"), "s", "p").label == 1


def test_nothing_identifying_leaves_the_ledger(storage: Storage, tmp_path: Path) -> None:
    folder = "inbox/DOE^JANE_MRN4711"
    storage.write_atomic(
        f"{folder}/labels.csv",
        b"series_uid,patient_id,label\n1.2.840.99.4711,,1\n,MRN4711,0\n,MRN4711,1\n",
    )
    refresh = _refresh(storage, "r1")
    assert [i.row for i in refresh.quarantined] == [3]  # the duplicate, by row number only
    secrets = ["DOE", "JANE", "MRN4711", "1.2.840.99.4711"]
    assert not [s for s in secrets for i in refresh.quarantined if s in i.message]
    root = Path(storage.root_path)
    checked = 0
    for path in root.rglob("*"):
        top = path.relative_to(root).parts[0]
        if not path.is_file() or top in ("inbox", "ledger", "quarantine"):
            continue
        blobs = [path.read_bytes(), str(path.relative_to(root)).encode()]
        if path.suffix == ".parquet":
            blobs.append(str(pq.read_table(path).to_pylist()).encode())
        assert not [s for s in secrets for b in blobs if s.encode() in b], path
        checked += 1
    assert checked >= 1  # the table itself
    # The operator's view maps the pseudonym back to the folder.
    (entry,) = LabelsHistory.load(storage).entries
    assert (entry.batch, entry.batch_id) == ("DOE^JANE_MRN4711", batch_pseudonym(KEY, entry.batch))


def test_rows_that_match_no_series_are_reported_by_batch(settings: Settings) -> None:
    storage = Storage.from_settings(settings)
    scans = synth_batch(storage, "b1", SMALL)
    ingest(settings, progress=False)
    rows = storage.read_bytes(LABELS) + b"9.9.9,,,1,,,,\n"
    _deliver(storage, LABELS, rows)
    storage.write_atomic("inbox/b2/labels.csv", b"series_uid,label\n8.8.8,1\n")  # no series yet
    refresh = _refresh(storage, "r1")
    assert refresh.batches == ["b1", "b2"]
    items = unmatched_labels(
        storage, Ledger.load(storage), current_labels(storage), "r1", refresh.batches
    )
    assert [(i.code, i.row) for i in items] == [("labels_unmatched", len(scans) + 1)]
    assert items[0].source_url == storage.url(LABELS) and "b1" not in items[0].message


def test_only_the_batches_that_changed_are_matched(settings: Settings) -> None:
    """Matching reads the series of the changed batches only: a rerun on an unchanged inbox
    reads no series file, however many the store holds."""
    storage = Storage.from_settings(settings)
    synth_batch(storage, "b1", SMALL)
    synth_batch(storage, "b2", replace(SMALL, seed=5))
    ingest(settings, progress=False)
    ledger = Ledger.load(storage)
    everything = read_series_index(storage, ledger)
    b2 = read_series_index(storage, ledger, ["b2"])
    b2_id = batch_pseudonym(KEY, "b2")
    assert 0 < b2.num_rows < everything.num_rows
    assert set(b2["batch"].to_pylist()) == {b2_id}
    assert sorted(b2["series_id"].to_pylist()) == sorted(
        r["series_id"] for r in everything.to_pylist() if r["batch"] == b2_id
    )
    labels = current_labels(storage)
    assert unmatched_labels(storage, ledger, labels, "r1", []) == []
    for rel in ledger.series_files():  # nothing left to read: matching must not need it
        storage.remove(rel)
    assert unmatched_labels(storage, ledger, labels, "r1", []) == []


def test_ingest_reads_a_late_labels_csv_without_reading_archives(settings: Settings) -> None:
    """Needs `lungcls.ingest.run` to refresh the labels table at every ingest."""
    storage = Storage.from_settings(settings)
    synth_batch(storage, "b1", SMALL)
    labels = storage.read_bytes(LABELS)
    storage.remove(LABELS)
    ingest(settings, progress=False)
    assert LabelsHistory.load(storage).entries == []
    ledger = storage.list_files(LOG_DIR)
    _deliver(storage, LABELS, labels + b"9.9.9,,,1,,,,\n")
    late = ingest(settings, progress=False)
    assert (late.bytes_read, late.archives_ingested) == (0, 0)
    assert storage.list_files(LOG_DIR) == ledger  # no archive was ingested again
    (version,) = LabelsHistory.load(storage).entries
    assert (version.batch, version.version, version.run_id) == ("b1", 1, late.run_id)
    assert [i.code for i in late.quarantined] == ["labels_unmatched"]
    again = ingest(settings, progress=False)
    assert again.quarantined == []  # the same file is not reported again
