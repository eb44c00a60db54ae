"""A corpus with every kind of bad input: each item is quarantined with its code, the good
series in the same archives go through, and no exception escapes."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000MCLossless

from lungcls.config import Settings
from lungcls.ingest.label_table import current_labels
from lungcls.ingest.ledger import Ledger
from lungcls.ingest.run import ingest
from lungcls.ingest.series_store import read_series_index
from lungcls.ingest.summary import IngestSummary
from lungcls.io.quarantine import read_quarantine
from lungcls.io.storage import Storage
from lungcls.sources.synth import dicom_bytes, pack_tar_gz, pack_zip
from tests.support import small_ct_series


def _files(datasets: list, prefix: str) -> list[tuple[str, bytes]]:
    return [(f"{prefix}/{k:03d}.dcm", dicom_bytes(ds)) for k, ds in enumerate(datasets)]


def build_bad_corpus(storage: Storage) -> dict[str, str]:
    """Writes inbox/bad/; returns series UID -> what should happen to it."""
    good_zip, good_tar = small_ct_series(1), small_ct_series(2)
    members = _files(good_zip, "good")
    members.append(("good/again.dcm", dicom_bytes(good_zip[2])))  # identical duplicate
    members.append(("notes/readme.txt", b"scanned on the night shift, see the paper chart"))

    gap = small_ct_series(3, n_slices=5)
    cut = dicom_bytes(gap[2])
    members += [m for m in _files(gap, "gap") if not m[0].endswith("002.dcm")]
    members.append(("gap/002.dcm", cut[: len(cut) - 300]))  # truncated inside the pixels

    lone = small_ct_series(4, n_slices=6)
    del lone[0].PixelData
    del lone[1].ImagePositionPatient
    del lone[2].RescaleSlope
    lone[3].Modality, lone[3].SOPClassUID = "CT", "1.2.840.10008.5.1.4.1.1.4"  # contradicts
    lone[4].file_meta.TransferSyntaxUID = JPEG2000MCLossless
    lone[4].PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])
    members += _files(lone[:5], "lone")

    conflict = small_ct_series(5)
    twin = copy.deepcopy(conflict[1])
    twin.PixelData = np.zeros((16, 16), "<u2").tobytes()
    members += [*_files(conflict, "conflict"), ("conflict/twin.dcm", dicom_bytes(twin))]

    spacing = small_ct_series(6)
    spacing[1].PixelSpacing = [0.9, 0.9]
    orientation = small_ct_series(7)
    orientation[2].ImageOrientationPatient = [1, 0, 0, 0, 0.9, -0.436]  # tilted, still axial
    members += _files(spacing, "spacing") + _files(orientation, "orientation")
    members.append(("../../../etc/cron.d/escape.dcm", dicom_bytes(small_ct_series(8)[0])))

    inbox = "inbox/bad"
    storage.write_atomic(f"{inbox}/mixed.zip", pack_zip(members))
    storage.write_atomic(f"{inbox}/good.tar.gz", pack_tar_gz(_files(good_tar, "scan")))
    storage.write_atomic(f"{inbox}/bomb.zip", pack_zip([("zeros.dcm", bytes(4_000_000))]))
    storage.write_atomic(f"{inbox}/empty.tar.gz", pack_tar_gz([]))
    flood = [(f"f/{i}.dcm", b"x") for i in range(60)]
    storage.write_atomic(f"{inbox}/flood.zip", pack_zip(flood))
    storage.write_atomic(f"{inbox}/corrupt.zip", b"PK\x03\x04" + bytes(200))
    labels = [
        "series_uid,patient_id,label,comment",
        f"{good_zip[0].SeriesInstanceUID},,1,",
        f",{good_tar[0].PatientID},negative,",
        "2.25.999999999,,1,",
        f"{gap[0].SeriesInstanceUID},,maybe,",
    ]
    storage.write_atomic(f"{inbox}/labels.csv", ("\n".join(labels) + "\n").encode())
    return {
        str(good_zip[0].SeriesInstanceUID): "ingested",
        str(good_tar[0].SeriesInstanceUID): "ingested",
    }


EXPECTED = {
    ("file", "not_dicom"),
    ("file", "truncated"),
    ("file", "missing_pixel_data"),
    ("file", "missing_geometry"),
    ("file", "missing_rescale"),
    ("file", "not_ct"),
    ("file", "no_decoder"),
    ("file", "unsafe_path"),
    ("series", "incomplete_series"),  # gap/002.dcm is truncated: never stored short
    ("series", "conflicting_duplicate_sop"),
    ("series", "inconsistent_spacing"),
    ("series", "inconsistent_orientation"),
    ("archive", "archive_bomb"),
    ("archive", "empty_archive"),
    ("archive", "too_many_members"),
    ("archive", "corrupt_archive"),
    ("labels", "labels_unknown_column"),
    ("labels", "labels_bad_value"),
    ("labels", "labels_unmatched"),
}


@pytest.fixture
def bad_settings(settings: Settings) -> Settings:
    limits = settings.ingest.limits.model_copy(
        update={"max_members": 50, "ratio_check_after_bytes": 1_000_000}
    )
    return settings.model_copy(
        update={"ingest": settings.ingest.model_copy(update={"limits": limits})}
    )


def test_every_bad_input_is_quarantined_with_its_code(bad_settings: Settings) -> None:
    storage = Storage.from_settings(bad_settings)
    build_bad_corpus(storage)
    summary: IngestSummary = ingest(bad_settings, progress=False)

    found = {(item.level, item.code) for item in summary.quarantined}
    assert found == EXPECTED
    assert summary.series_ingested == 2
    assert summary.duplicate_files_dropped == 1
    assert (summary.archives_ingested, summary.archives_rejected) == (2, 4)

    # the records on storage say the same, with pointers to the originals
    records = read_quarantine(storage, summary.run_id)
    assert {(r.level, r.code) for r in records} == EXPECTED
    # the summary travels to Prefect: the same items without inbox paths
    assert sorted(r.redacted().to_json() for r in records) == sorted(
        r.to_json() for r in summary.quarantined
    )
    for record in records:
        assert record.source_url.startswith(storage.url("inbox/bad"))
        assert record.message and record.run == summary.run_id
    truncated = next(r for r in records if r.code == "truncated")
    assert truncated.member == "gap/002.dcm" and truncated.sha256 and len(truncated.sha256) == 64
    unmatched = next(r for r in records if r.code == "labels_unmatched")
    assert unmatched.row == 3 and b"2.25.999999999" not in unmatched.to_json()

    index = read_series_index(storage).to_pylist()
    labels = current_labels(storage)
    found = [
        labels.lookup(r["batch"], r["series_id"], r["study_id"], r["patient_id"]) for r in index
    ]
    assert sorted((x.label, x.level) for x in found if x) == [(0, "patient"), (1, "series")]
    rejected = {e.archive.rsplit("/", 1)[-1]: e.reason_code for e in Ledger.load(storage).entries}
    assert rejected == {
        "bomb.zip": "archive_bomb",
        "corrupt.zip": "corrupt_archive",
        "empty.tar.gz": "empty_archive",
        "flood.zip": "too_many_members",
        "good.tar.gz": "",
        "mixed.zip": "",
    }


def test_rejected_archives_are_not_retried(bad_settings: Settings, tmp_path: Path) -> None:
    storage = Storage.from_settings(bad_settings)
    build_bad_corpus(storage)
    ingest(bad_settings, progress=False)
    again = ingest(bad_settings, progress=False)
    assert (again.archives_skipped, again.bytes_read, again.quarantined) == (6, 0, [])


def test_rejections_are_read_again_on_request_or_when_the_settings_change(
    bad_settings: Settings,
) -> None:
    storage = Storage.from_settings(bad_settings)
    build_bad_corpus(storage)
    first = ingest(bad_settings, progress=False)

    # --retry-rejected: the refused archives and the one with refused files are read again
    # (same verdicts, new ledger rows); good.tar.gz, which refused nothing, is not.
    retried = ingest(bad_settings, progress=False, retry_rejected=True)
    assert (retried.archives_skipped, retried.archives_rejected) == (1, 4)
    assert retried.archives_ingested == 1 and retried.series_ingested == 1
    current = {
        e.archive.rsplit("/", 1)[-1]: e
        for e in Ledger.load(storage).entries
        if e.status != "superseded"
    }
    assert current["good.tar.gz"].run_id == first.run_id
    assert current["flood.zip"].run_id == retried.run_id
    assert current["flood.zip"].reason_code == "too_many_members"

    # A limit raised in the settings: what it refused is judged again without being asked.
    limits = bad_settings.ingest.limits.model_copy(update={"max_members": 100})
    relaxed = bad_settings.model_copy(
        update={"ingest": bad_settings.ingest.model_copy(update={"limits": limits})}
    )
    judged_again = ingest(relaxed, progress=False)
    assert judged_again.archives_skipped == 1
    flood = next(
        e
        for e in Ledger.load(storage).entries
        if e.archive.endswith("flood.zip") and e.status != "superseded"
    )
    assert (flood.status, flood.n_quarantined) == ("ingested", 60)  # 60 files, none DICOM
    assert ingest(relaxed, progress=False).archives_skipped == 6  # and then it is done
