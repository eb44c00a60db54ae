"""`lungcls erase`: no byte of an erased patient's series stays under the root, the next
dataset version lacks them, the models trained on their data are listed, and a re-delivery
is refused with code `erased`."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from lungcls.cli import main
from lungcls.config import Settings
from lungcls.dataset.build import build_dataset, dataset_fingerprint
from lungcls.dataset.manifest import DatasetWithdrawn, list_versions, load_manifest
from lungcls.dataset.shards import iter_samples
from lungcls.dataset.validation import series_frame
from lungcls.evaluate.evaluation import evaluate_model
from lungcls.ingest.deid import pseudonym
from lungcls.ingest.ledger import Ledger
from lungcls.ingest.run import ingest
from lungcls.ingest.series_store import iter_series, read_series_index
from lungcls.io.integrity import sha256_of
from lungcls.io.quarantine import read_quarantine
from lungcls.io.storage import Storage
from lungcls.retention.erasure import erase_archive, erase_patient
from lungcls.retention.erasure_log import (
    ErasureEntry,
    ErasureOutcome,
    append_entry,
    erasure_log,
    read_erased,
    without_erased,
)
from lungcls.sources.synth import SynthOptions, pack_zip, synth_batch
from tests.support import TEST_KEY, make_settings, train_in_process

KEY = TEST_KEY.encode()
SCANS = SynthOptions(
    scans=20, slices=10, rows=32, columns=32, pixel_spacing_mm=5.6, slice_spacing_mm=5.0, seed=3
)
TINY: dict[str, object] = {
    "contracts": {"max_pixel_spacing_mm": 6.0},
    "preprocess": {"shape": (8, 8, 8), "spacing_mm": (4.0, 4.0, 4.0)},
    "dataset": {"require_both_classes": False},
    "model": {"width": 4, "depth": 1},
    "train": {"folds": 1},
    "evaluation": {"bootstrap_rounds": 50, "min_patients_per_class": 1},
}
PIXELS = ("volume", "hu")  # raw pixels: the series store's and staging's columns
TENSORS = ("volume", "hu", "tensor")


@dataclass
class ErasedRoot:
    """A root where one patient was erased after an ingest, a dataset build, a model
    trained on it and its evaluation (the patient has a test sample: in the scores too)."""

    settings: Settings
    storage: Storage
    patient: str  # pseudonym
    raw_ids: list[str]  # the patient's identifiers as delivered
    series: set[str]
    pixel_hashes: set[str]
    archives: dict[str, bytes]  # the patient's archives as delivered, by inbox path
    outcome: ErasureOutcome


@pytest.fixture(scope="module")
def erased(tmp_path_factory: pytest.TempPathFactory) -> ErasedRoot:
    tmp = tmp_path_factory.mktemp("erase")
    settings = make_settings(tmp / "root", tmp, **TINY)
    storage = Storage.from_settings(settings)
    scans = synth_batch(storage, "b1", SCANS)
    ingest(settings, progress=False)
    build_dataset(settings, progress=False)
    assert train_in_process(settings, steps=2) == 1
    evaluation = evaluate_model(settings)
    scores = pq.read_table(io.BytesIO(storage.read_bytes(f"{evaluation.folder}/scores.parquet")))
    patient = scores["patient_id"][0].as_py()
    mine = [s for s in scans if pseudonym(KEY, "patient", s.patient.patient_id) == patient]
    stored = [s for s in iter_series(storage) if s.patient_id == patient]
    assert mine and len(stored) == len(mine)
    root = ErasedRoot(
        settings=settings,
        storage=storage,
        patient=patient,
        raw_ids=[mine[0].patient.patient_id, *(s.scan.series_uid for s in mine)],
        series={s.series_id for s in stored},
        pixel_hashes={hashlib.sha256(s.volume.tobytes()).hexdigest() for s in stored},
        archives={s.archive: storage.read_bytes(s.archive) for s in mine},
        outcome=erase_patient(settings, patient, by="dpo", reason="consent withdrawn"),
    )
    return root


def decoded_values(path: Path) -> str:
    """A Parquet file's values (pixels and tensors aside) as text: compression hides them
    from a search of the raw bytes."""
    table = pq.read_table(path)
    return str(table.drop([c for c in TENSORS if c in table.column_names]).to_pylist())


def test_no_byte_of_the_patient_remains(erased: ErasedRoot) -> None:
    root = Path(erased.settings.root)
    needles = [erased.patient, *erased.raw_ids]
    naming_series: set[str] = set()
    pixel_files = 0
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or rel.startswith("erasure/"):  # the log names the pseudonym
            continue
        texts = [path.read_bytes().decode("latin-1")]
        if path.suffix == ".parquet":
            texts.append(decoded_values(path))
            table = pq.read_table(path)
            for column in (c for c in PIXELS if c in table.column_names):
                pixel_files += 1
                hashes = {hashlib.sha256(v.as_py()).hexdigest() for v in table[column]}
                assert not hashes & erased.pixel_hashes, f"{rel} holds the patient's pixels"
        found = [n for n in needles if any(n in text for text in texts)]
        assert not found, f"{rel} still holds the patient's pseudonym or a raw identifier"
        if any(s in text for s in erased.series for text in texts):
            naming_series.add(rel)
    assert pixel_files >= 10  # the series files were searched
    # By design only the ledger's immutable log still names the series pseudonyms.
    assert naming_series and all(r.startswith("ledger/log/") for r in naming_series)
    assert erased.series.isdisjoint(read_series_index(erased.storage)["series_id"].to_pylist())
    assert not any(erased.storage.exists(a) for a in erased.archives)


def test_the_next_dataset_version_lacks_the_patient(erased: ErasedRoot) -> None:
    storage, outcome = erased.storage, erased.outcome
    assert [str(d) for d in outcome.datasets_withdrawn] == ["lung-nodules v1"]
    assert [str(d) for d in outcome.datasets_published] == ["lung-nodules v2"]
    assert list_versions(storage, "lung-nodules") == [2]
    with pytest.raises(DatasetWithdrawn, match="erasure #1"):
        load_manifest(storage, "lung-nodules", 1)
    v1 = json.loads(storage.read_bytes("datasets/lung-nodules/v1/manifest.json"))
    v2 = load_manifest(storage, "lung-nodules")
    samples = list(iter_samples(storage, v2.shards))  # verified against the manifest
    assert erased.patient not in {s.patient_id for s in samples}
    assert v2.samples == len(samples) == v1["samples"] - len(erased.series)
    again = build_dataset(erased.settings, progress=False)
    assert (again.created, again.version) == (False, 2)


def test_models_trained_on_them_are_listed_and_records_still_verify(
    erased: ErasedRoot,
) -> None:
    models = erased.outcome.models_affected
    assert [(m.name, m.version, str(m.dataset)) for m in models] == [
        ("lung-nodule-cnn", 1, "lung-nodules v1")
    ]
    assert erased.outcome.score_rows_removed >= 1
    storage, checked = erased.storage, 0
    for info in storage.list_files("models"):
        if info.path.endswith(".json"):
            record = json.loads(storage.read_bytes(info.path))
            folder = info.path.rsplit("/", 1)[0]
            for name, digest in (record.get("files") or {}).items():
                assert sha256_of(storage.read_bytes(f"{folder}/{name}")) == digest, name
                checked += 1
    assert checked >= 3  # weights, TorchScript, evaluation scores


def test_the_report_shows_the_erasure_without_phi(
    erased: ErasedRoot, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--root", erased.settings.root, "erase", "--report"]) == 0
    text = capsys.readouterr().out
    assert f"erasure #1 of patient {erased.patient}" in text and "by dpo" in text
    assert "retrain: model lung-nodule-cnn v1 (trained on lung-nodules v1)" in text
    assert "lung-nodules v2" in text and "UNFINISHED" not in text
    assert not [raw for raw in erased.raw_ids if raw in text]
    assert not [path for path in erased.archives if path in text]  # paths may name patients
    assert main(["--root", erased.settings.root, "erase", "--report", "--json"]) == 0
    (line,) = json.loads(capsys.readouterr().out)["erasures"]
    assert line["entry"]["patients"] == [erased.patient]
    assert line["outcome"]["series_removed"] == len(erased.series)


def test_a_redelivery_is_refused_with_code_erased(erased: ErasedRoot) -> None:
    storage = erased.storage
    path, data = next(iter(erased.archives.items()))
    storage.write_atomic("inbox/again/copy" + path[path.index(".") :], data)
    # The same files packed anew: other archive bytes, the same patient inside.
    storage.write_atomic("inbox/again/repacked.zip", pack_zip(members(data)))
    summary = ingest(erased.settings, progress=False)
    codes = {(item.level, item.code) for item in summary.quarantined}
    assert ("archive", "erased") in codes and ("series", "erased") in codes
    assert summary.series_ingested == 0
    assert erased.patient not in read_series_index(storage)["patient_id"].to_pylist()
    assert not [i for i in storage.list_files("staging")]


def members(archive: bytes) -> list[tuple[str, bytes]]:
    if archive.startswith(b"PK"):
        with zipfile.ZipFile(io.BytesIO(archive)) as z:
            return [(name, z.read(name)) for name in reversed(z.namelist())]
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        return [(m.name, tar.extractfile(m).read()) for m in reversed(tar.getmembers())]  # type: ignore[union-attr]


def test_pseudonym_prints_only_the_pseudonym(
    erased: ErasedRoot, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LUNGCLS_PSEUDONYM_KEY", TEST_KEY)
    assert main(["--root", erased.settings.root, "pseudonym", erased.raw_ids[0]]) == 0
    assert capsys.readouterr().out == f"{erased.patient}\n"


def test_a_raw_patient_id_is_refused_before_anything_is_logged(
    root_settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LUNGCLS_PSEUDONYM_KEY", TEST_KEY)
    assert main(["--root", root_settings.root, "erase", "--patient", "MRN0042"]) == 3
    assert "not_a_pseudonym" in capsys.readouterr().err
    assert not Storage.from_settings(root_settings).list_files("erasure")


def test_the_log_is_honoured_before_the_erasure_finishes(root_settings: Settings) -> None:
    """An erasure that died right after logging: ingest already refuses the patient, and
    running it again finishes that same entry. The archive it was refused from, and another
    one whose series were stored, are then erased by path."""
    storage = Storage.from_settings(root_settings)
    scans = synth_batch(storage, "b1", SynthOptions(**{**SCANS.__dict__, "scans": 6}))
    patient = pseudonym(KEY, "patient", scans[0].patient.patient_id)
    append_entry(storage, logged_only(patient))
    summary = ingest(root_settings, progress=False)
    refused = [i for i in summary.quarantined if i.code == "erased"]
    assert [i.level for i in refused] == ["series"]
    assert patient not in read_series_index(storage)["patient_id"].to_pylist()
    assert erasure_log(storage).erasures[0].outcome is None

    outcome = erase_patient(root_settings, patient)
    assert outcome.seq == 1 and "no stored data was found" in outcome.notes[0]
    (line,) = erasure_log(storage).erasures
    assert line.outcome == outcome

    ledger = Ledger.load(storage)
    holding = next(e for e in ledger.entries if e.archive_id == refused[0].archive_id)
    assert erase_archive(root_settings, holding.archive).quarantine_records_removed == 1
    assert not storage.exists(holding.archive)
    assert holding.archive_id not in {i.archive_id for i in read_quarantine(storage)}

    stored = next(
        e for e in Ledger.load(storage).entries if e.status == "ingested" and e.series_ids
    )
    done = erase_archive(root_settings, storage.url(stored.archive), by="dpo")
    assert (done.archives_removed, done.series_removed) == (1, len(stored.series_ids))
    assert {holding.sha256, stored.sha256} <= read_erased(storage).archives
    left = set(read_series_index(storage)["series_id"].to_pylist())
    assert left and left.isdisjoint(stored.series_ids)
    current = Ledger.load(storage).current(stored.archive)
    assert current is not None and (current.status, current.reason_code) == ("rejected", "erased")
    late = pack_zip([("late/0001.dcm", b"delivered, never ingested")])
    storage.write_atomic("inbox/late/late.zip", late)
    assert erase_archive(root_settings, "inbox/late/late.zip").archives_removed == 1
    assert sha256_of(late) in read_erased(storage).archives
    assert not storage.exists("inbox/late/late.zip")
    kinds = [line.entry.kind for line in erasure_log(storage).erasures]
    assert kinds == ["patient", "archive", "archive", "archive"]


def test_a_build_leaves_out_erased_patients_that_series_files_still_hold(
    settings: Settings,
) -> None:
    storage = Storage.from_settings(settings)
    scans = synth_batch(storage, "b1", SynthOptions(**{**SCANS.__dict__, "scans": 4}))
    ingest(settings, progress=False)
    before = dataset_fingerprint(settings)
    patient = pseudonym(KEY, "patient", scans[0].patient.patient_id)
    append_entry(storage, logged_only(patient))  # logged; the series files not yet rewritten
    frame = series_frame(storage, Ledger.load(storage))
    assert patient in set(frame["patient_id"])
    kept = without_erased(frame, read_erased(storage))
    assert patient not in set(kept["patient_id"]) and len(kept) < len(frame)
    assert dataset_fingerprint(settings) != before  # the next build makes a version


def logged_only(patient: str) -> ErasureEntry:
    """The log entry of an erasure killed before it removed anything."""
    return ErasureEntry(
        seq=0,
        run_id="erase-killed",
        requested_at="2026-01-01T00:00:00+00:00",
        by="dpo",
        reason="",
        kind="patient",
        patients=[patient],
        archives=[],
        series=[],
    )
