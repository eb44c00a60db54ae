"""No patient identifier leaves the inbox, end to end.

An inbox as hospitals fill it: a batch folder named after a patient, archives and member
files named after patients, names, IDs and birth dates in the headers (all fake). It runs
through the real pipeline (the Prefect ingest flow, a dataset build, a small model, `predict
--batch` and a single-input predict), and then every file under the root except `inbox/`,
`ledger/` and `quarantine/` (the operator's view), Parquet values, Prefect's database and
the captured logs are searched for each identifier.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydicom.dataset import Dataset

from flows.ingest import ingest_flow
from lungcls.config import Settings, load_settings
from lungcls.dataset.build import build_dataset
from lungcls.dataset.shards import read_shard_metadata
from lungcls.flow_parameters import IngestParameters
from lungcls.ingest.series_store import iter_series, load_series, read_series_index
from lungcls.io.storage import Storage
from lungcls.predict.batch import predict_batch, predict_source
from lungcls.sources.dicom_writer import dicom_bytes, pack_tar_gz, pack_zip
from tests.support import OLD_ROOT, small_ct_series, train_in_process, write_flow_config

pytestmark = pytest.mark.slow

# The operator's view: inbox paths may appear here and nowhere else.
OPERATOR_ONLY = ("inbox", "ledger", "quarantine")
# Parquet columns of pixels: searched for identifier text, never for numbers.
BINARY_COLUMNS = {"volume", "tensor"}


# -- searching outputs ----------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """Something an output holds: decoded text, or raw bytes (searched as Latin-1)."""

    where: str
    text: str
    binary: bool = False  # raw bytes or pixels: numbers found in them mean nothing


def _stringify(value: object) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("latin-1")
    if isinstance(value, dict):
        return "\n".join(f"{k}={_stringify(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "\n".join(_stringify(v) for v in value)
    return "" if value is None else str(value)


def parquet_pieces(where: str, data: bytes) -> Iterator[Piece]:
    """Every column of a Parquet file, every value stringified (lists and structs too)."""
    table = pq.read_table(io.BytesIO(data))
    for name in table.column_names:
        column = table.column(name)
        binary = name in BINARY_COLUMNS or pa.types.is_binary(column.type)
        binary = binary or pa.types.is_large_binary(column.type)
        yield Piece(f"{where}[{name}]", _stringify(column.to_pylist()), binary)
    for key, value in (table.schema.metadata or {}).items():  # pandas metadata and the like
        yield Piece(f"{where}[schema metadata {key.decode()}]", value.decode("latin-1"))


def sqlite_pieces(path: Path, where: str) -> Iterator[Piece]:
    """Every text and blob value of every table of a SQLite database (Prefect's)."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in connection.execute("SELECT name FROM sqlite_master")]
        for table in tables:
            try:
                cursor = connection.execute(f'SELECT * FROM "{table}"')
            except sqlite3.Error:
                continue  # an index or trigger, not a table
            names = [d[0] for d in cursor.description]
            for row in cursor:
                for name, value in zip(names, row, strict=True):
                    if isinstance(value, bytes):
                        yield Piece(f"{where}:{table}.{name}", value.decode("latin-1"), True)
                    elif isinstance(value, str):
                        yield Piece(f"{where}:{table}.{name}", value)
    finally:
        connection.close()


def file_pieces(path: Path, where: str) -> Iterator[Piece]:
    """A file's raw bytes, and its values decoded as what it is."""
    data = path.read_bytes()
    yield Piece(f"{where} (bytes)", data.decode("latin-1"), binary=True)
    yield Piece(f"{where} (name)", where)
    if path.suffix == ".parquet":
        yield from parquet_pieces(where, data)
    elif path.suffix in {".db", ".sqlite"}:
        yield from sqlite_pieces(path, where)
    else:
        yield Piece(where, data.decode("utf-8", errors="replace"))


def tree_pieces(top: Path, skip: Iterable[str] = ()) -> Iterator[Piece]:
    """Every file under `top` but the top-level folders in `skip`."""
    for path in sorted(top.rglob("*")):
        rel = path.relative_to(top)
        if path.is_file() and rel.parts[0] not in skip:
            yield from file_pieces(path, f"{top.name}/{rel.as_posix()}")


@dataclass(frozen=True)
class Secret:
    """A value that must not reach an output. Numbers are matched as whole numbers in
    decoded text only: digits alone turn up by chance inside compressed bytes."""

    value: str
    what: str
    numeric: bool = False


def leaks(secrets: Iterable[Secret], pieces: Iterable[Piece]) -> list[str]:
    """`what (value) in where` for every secret found in a piece (each once per place).

    Hundreds of secrets over tens of MB: literal values are looked for by their first four
    characters (one `str.find` pass per prefix), numbers with one regular expression."""
    literal: dict[str, list[Secret]] = defaultdict(list)
    numbers: dict[str, list[Secret]] = defaultdict(list)
    for secret in secrets:
        (numbers if secret.numeric else literal)[secret.value].append(secret)
    prefixes: dict[str, list[str]] = defaultdict(list)
    for value in literal:
        prefixes[value[:4]].append(value)
    alternatives = "|".join(re.escape(v) for v in sorted(numbers, key=len, reverse=True))
    whole_number = re.compile(rf"(?<![\w.])({alternatives})(?!\w)") if numbers else None
    found: dict[str, None] = {}
    for piece in pieces:
        hits: set[str] = set()
        for prefix, values in prefixes.items():
            at = piece.text.find(prefix)
            while at != -1:
                hits.update(v for v in values if piece.text.startswith(v, at))
                at = piece.text.find(prefix, at + 1)
        if whole_number is not None and not piece.binary:
            hits.update(m.group(1) for m in whole_number.finditer(piece.text))
        for value in sorted(hits):
            for secret in literal.get(value, []) + numbers.get(value, []):
                found[f"{secret.what} {value!r} in {piece.where}"] = None
    return list(found)


def flush_prefect() -> None:
    """Prefect ships run logs and events to its API in the background: send what is queued."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)


def prefect_pieces() -> Iterator[Piece]:
    """Prefect's database and whatever else this test session's PREFECT_HOME holds."""
    home = Path(os.environ["PREFECT_HOME"])
    for path in sorted(home.rglob("*")):
        if path.is_file() and not path.name.endswith(("-wal", "-shm", "-journal")):
            yield from file_pieces(path, f"PREFECT_HOME/{path.relative_to(home).as_posix()}")


# -- the inbox ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Patient:
    name: str  # DICOM PN
    patient_id: str
    birth_date: str  # DA
    label: int
    split: str


DOE = Patient("DOE^JANE", "MRN4711", "19610412", 1, "train")
SMITH = Patient("SMITH^JOHN", "MRN0815", "19550101", 0, "train")
MUSTERMANN = Patient("MUSTERMANN^ERIKA", "MRN2222", "19700707", 1, "val")
ROE = Patient("ROE^RICHARD", "MRN3333", "19480229", 0, "test")
BATCH = "DOE^JANE_MRN4711"  # PACS exports and people name folders after patients
LATE_BATCH = "SMITH^JOHN_2019-03-01"  # a second delivery, repeating a series
NAMES_IN_PATHS = [
    "DOE^JANE_MRN4711",
    "DOE_JANE_1961-04-12",
    "1961-04-12",
    "CT_DOE_JANE",
    "SMITH^JOHN",
    "IMG_SMITH_JOHN",
    "notes_SMITH_JOHN",
    "2019-03-01",
    "MUSTERMANN_ERIKA",
    "ROE_RICHARD",
]


def patient_series(patient: Patient, index: int) -> list[Dataset]:
    """A small real CT series (pydicom datasets) of `patient`, the names in free text too."""
    datasets = small_ct_series(index, n_slices=8, size=32)
    for ds in datasets:
        ds.PatientName = patient.name
        ds.PatientID = patient.patient_id
        ds.PatientBirthDate = patient.birth_date
        ds.StudyDescription = f"CT CHEST {patient.name.replace('^', ' ')}"
        ds.ImageComments = f"{patient.patient_id} born {patient.birth_date}"
    return datasets


def members(folder: str, prefix: str, series: list[list[Dataset]]) -> list[tuple[str, bytes]]:
    return [
        (f"{folder}{prefix}_s{k}_{n:03d}.dcm", dicom_bytes(ds))
        for k, datasets in enumerate(series)
        for n, ds in enumerate(datasets)
    ]


@dataclass
class Inbox:
    secrets: list[Secret]
    series: dict[str, list[Dataset]]  # patient name -> the datasets of all its series


def fill_inbox(root: Path) -> Inbox:
    """The batch: a zip, a cut zip, a folder archive with a text file, a tar.gz and loose
    files, each named after its patient; labels by patient; a late batch repeating a series."""
    batch = root / "inbox" / BATCH
    batch.mkdir(parents=True)
    doe = [patient_series(DOE, 0), patient_series(DOE, 1)]
    smith = [patient_series(SMITH, 2), patient_series(SMITH, 3)]
    mustermann = [patient_series(MUSTERMANN, 4)]
    roe = [patient_series(ROE, 5)]
    zipped = pack_zip(members("DOE^JANE/", "CT_DOE_JANE", doe))
    (batch / "DOE_JANE_1961-04-12.zip").write_bytes(zipped)
    (batch / "DOE_JANE_1961-04-12_part2.zip").write_bytes(zipped[: len(zipped) // 2])
    for name, data in members("SMITH^JOHN/", "IMG_SMITH_JOHN", smith):
        (batch / name).parent.mkdir(exist_ok=True)
        (batch / name).write_bytes(data)
    (batch / "SMITH^JOHN" / "notes_SMITH_JOHN_MRN0815.txt").write_text("SMITH^JOHN MRN0815\n")
    tarred = pack_tar_gz(members("", "MUSTERMANN_ERIKA", mustermann))
    (batch / "MUSTERMANN_ERIKA_MRN2222.tar.gz").write_bytes(tarred)
    for name, data in members("", "ROE_RICHARD_MRN3333", roe):
        (batch / name).write_bytes(data)
    rows = [f"{p.patient_id},{p.label},{p.split}" for p in (DOE, SMITH, MUSTERMANN, ROE)]
    (batch / "labels.csv").write_text("patient_id,label,split\n" + "\n".join(rows) + "\n")
    late = root / "inbox" / LATE_BATCH / "SMITH^JOHN_again"
    late.mkdir(parents=True)
    for name, data in members("", "IMG_SMITH_JOHN", smith[:1]):
        (late / name).write_bytes(data)

    secrets = [Secret(v, "inbox name") for v in NAMES_IN_PATHS]
    everything = {"DOE": doe, "SMITH": smith, "MUSTERMANN": mustermann, "ROE": roe}
    for patient in (DOE, SMITH, MUSTERMANN, ROE):
        secrets += [
            Secret(patient.name, "patient name"),
            Secret(patient.name.replace("^", "_"), "patient name"),
            Secret(patient.patient_id, "patient ID"),
            Secret(patient.birth_date, "birth date", numeric=True),
        ]
    for series in everything.values():
        for datasets in series:
            first = datasets[0]
            secrets += [
                Secret(str(first.StudyInstanceUID), "study UID"),
                Secret(str(first.SeriesInstanceUID), "series UID"),
                *(Secret(str(ds.SOPInstanceUID), "SOP instance UID") for ds in datasets),
            ]
            for keyword in ("PatientAddress", "OtherPatientIDs", "AccessionNumber"):
                secrets.append(Secret(str(first.get(keyword)), f"header {keyword}"))
    return Inbox(secrets, {k: [ds for s in v for ds in s] for k, v in everything.items()})


@pytest.fixture
def pipeline_root(tmp_path: Path) -> tuple[Settings, Path, Inbox]:
    root = tmp_path / "root"
    inbox = fill_inbox(root)
    config = write_flow_config(tmp_path, dataset={"require_both_classes": False})
    return load_settings(config, root=str(root)), config, inbox


def test_no_identifier_leaves_the_inbox(
    pipeline_root: tuple[Settings, Path, Inbox],
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    settings, config, inbox = pipeline_root
    # Every lungcls record, and INFO and up of the libraries (their DEBUG records, off unless
    # asked for, name every file they open).
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="lungcls")
    root = Path(settings.root)
    storage = Storage.from_settings(settings)

    # Ingest through Prefect: task results, artifacts and run logs land in its database.
    state = ingest_flow(
        IngestParameters(config_file=str(config), root=str(root)), return_state=True
    )
    assert state.is_completed(), state
    summary = state.result()
    assert summary.series_ingested == 6 and summary.archives_rejected >= 1
    codes = {item.code for item in summary.quarantined}
    assert "corrupt_archive" in codes and "duplicate_series" in codes, codes
    assert len(read_series_index(storage)) == 6

    built = build_dataset(settings, progress=False)
    assert built.created and built.version == 1
    version = train_in_process(settings, steps=3)
    predictions, _ = predict_batch(settings, BATCH, version=version)
    assert len(predictions) == 6
    assert all(p.archive_id.startswith("archive-") for p in predictions)
    single = predict_source(
        settings,
        str(root / "inbox" / BATCH / "SMITH^JOHN"),
        version=version,
        saliency_dir=str(root / "saliency"),
    )
    assert len(single) == 2 and len({p.archive_id for p in single}) == 1
    # The operator can map every archive_id of the batch run back to its input.
    mappings = list((root / "ledger" / "predict").glob("*.csv"))
    assert len(mappings) == 1
    mapped = mappings[0].read_text()
    assert all(p.archive_id in mapped for p in predictions) and "SMITH^JOHN" in mapped
    assert "refused whole: corrupt_archive" in mapped  # the cut zip: named, the rest scored

    flush_prefect()
    out, err = capfd.readouterr()
    pieces = [
        *tree_pieces(root, skip=OPERATOR_ONLY),
        *tree_pieces(Path(settings.work_dir)),
        *prefect_pieces(),
        Piece("captured log records", caplog.text),
        Piece("captured stdout", out),
        Piece("captured stderr", err),
    ]
    # The search saw the outputs: the run's task result, its artifacts in Prefect's database.
    seen = [p.where for p in pieces if summary.run_id in p.text and not p.binary]
    assert any(w.startswith("root/prefect-results/") for w in seen), seen
    assert any(w.startswith("PREFECT_HOME/prefect.db:artifact") for w in seen), seen
    in_database = [p for p in pieces if p.where.startswith("PREFECT_HOME/prefect.db:log")]
    assert any(summary.run_id in p.text for p in in_database)  # the flow's run log
    found = leaks(inbox.secrets, pieces)
    assert not found, "identifiers outside the inbox:\n" + "\n".join(found)


def test_the_search_finds_what_it_looks_for(tmp_path: Path) -> None:
    """The search itself: names in Parquet values, in raw bytes, in SQLite text and blobs;
    numbers only as whole numbers and never inside bytes."""
    table = pa.table({"batch": ["DOE^JANE_MRN4711"], "volume": [b"\x00MRN4711\x00"]})
    pq.write_table(table, tmp_path / "t.parquet", compression="zstd")
    database = sqlite3.connect(tmp_path / "p.db")
    database.execute("CREATE TABLE artifact (data TEXT, blob BLOB)")
    database.execute("INSERT INTO artifact VALUES (?, ?)", ('{"born": 19610412}', b"SMITH^JOHN"))
    database.commit()
    database.close()
    (tmp_path / "r.json").write_text(json.dumps({"run": "ingest-T191961041212Z"}))
    secrets = [
        Secret("DOE^JANE", "name"),
        Secret("MRN4711", "ID"),
        Secret("SMITH^JOHN", "name"),
        Secret("19610412", "birth date", numeric=True),
    ]
    found = leaks(secrets, tree_pieces(tmp_path))
    assert "name 'DOE^JANE' in " + tmp_path.name + "/t.parquet[batch]" in found
    assert any(f.startswith("ID 'MRN4711'") and "[volume]" in f for f in found)
    assert any(f.startswith("name 'SMITH^JOHN'") and "artifact.blob" in f for f in found)
    assert any(f.startswith("birth date") and "artifact.data" in f for f in found)
    assert not any(f.startswith("birth date") and "r.json" in f for f in found)


def test_files_of_lungcls_0_1_drop_the_archive_digest(tmp_path: Path) -> None:
    """0.1 shards and series files named the archive by its SHA-256, which joins the ledger
    row holding the inbox path: they still read, and the digest is not passed on."""
    storage = Storage(str(OLD_ROOT))
    for shard in storage.list_files("datasets/lung-nodules/v1/shards"):
        table = read_shard_metadata(storage, shard.path)
        assert "archive_sha256" not in table.column_names
        assert table["archive_id"].null_count == table.num_rows > 0

    from tests.io.test_tables import SERIES_FILE, store_series

    new = Storage(str(tmp_path / "root"))
    store_series(new, ["series-1"])
    table = pq.read_table(io.BytesIO(new.read_bytes(SERIES_FILE)))
    digest = pa.array(["ab" * 32] * table.num_rows)
    old = table.drop_columns(["archive_id"]).append_column("archive_sha256", digest)
    buffer = io.BytesIO()
    pq.write_table(old, buffer)
    new.write_atomic(SERIES_FILE, buffer.getvalue())
    index = read_series_index(new)
    assert "archive_sha256" not in index.column_names and index["archive_id"].to_pylist() == [None]
    (record,) = iter_series(new)
    assert record.archive_id is None and not hasattr(record, "archive_sha256")
    assert load_series(new, SERIES_FILE, "series-1").archive_id is None
