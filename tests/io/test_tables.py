"""Parquet files read from storage check their columns: the ledger, series files, shards."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lungcls.dataset.shards import Sample, iter_samples, read_shard_metadata, write_shard
from lungcls.ingest.ledger import LOG_DIR, Ledger, LedgerEntry
from lungcls.ingest.series_store import (
    SeriesRecord,
    iter_series,
    load_series,
    read_series_index,
    write_series_file,
)
from lungcls.io.records import RecordError
from lungcls.io.storage import Storage
from lungcls.io.tables import check_columns
from tests.support import OLD_ROOT

SERIES_FILE = "series/0123456789abcdef-00000000.parquet"


def _rewrite(storage: Storage, rel: str, change) -> None:
    """Rewrite a Parquet file with its table changed, as another writer might have left it."""
    table = change(pq.read_table(io.BytesIO(storage.read_bytes(rel))))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_atomic(rel, buffer.getvalue())


def series_record(series_id: str) -> SeriesRecord:
    volume = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    return SeriesRecord(
        series_id=series_id,
        study_id="study-1",
        patient_id="patient-1",
        batch="b1",
        archive_id="archive-0123456789abcdef01234567",
        spacing_zyx_mm=(2.5, 0.7, 0.7),
        origin_xyz_mm=(-100.0, -120.0, 30.0),
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        slice_ids=["slice-1", "slice-2"],
        volume=volume,
        nodule_center_xyz_mm=(1.0, 2.0, 3.0),
        split="val",
    )


def store_series(storage: Storage, ids: list[str]) -> None:
    write_series_file(storage, SERIES_FILE, [series_record(i) for i in ids])
    entry = LedgerEntry(
        archive="inbox/b1/a.zip",
        batch="b1",
        kind="zip",
        size=1,
        version_tag="t",
        sha256="a" * 64,
        status="ingested",
        reason_code="",
        series_file=SERIES_FILE,
        series_ids=ids,
    )
    Ledger([entry]).save(storage)


def test_check_columns_names_the_file_and_the_columns() -> None:
    expected = pa.schema([("a", pa.string()), ("b", pa.int32()), ("late", pa.string())])
    check_columns(expected, expected, "s3://x/t.parquet", "table")
    older = pa.schema([("a", pa.string()), ("b", pa.int32())])
    check_columns(older, expected, "s3://x/t.parquet", "table", optional={"late"})
    found = pa.schema([("a", pa.string()), ("extra", pa.int32())])
    with pytest.raises(RecordError) as error:
        check_columns(found, expected, "s3://x/t.parquet", "table", optional={"late"})
    message = str(error.value)
    assert message.startswith("s3://x/t.parquet: not a table this lungcls reads")
    assert "unknown columns ['extra']" in message and "missing columns ['b']" in message


def test_a_ledger_with_an_unknown_column_is_refused_by_name(storage: Storage) -> None:
    store_series(storage, ["series-1"])
    segment = f"{LOG_DIR}/000000000001.parquet"
    _rewrite(storage, segment, lambda t: t.append_column("owner", pa.array(["x"])))
    with pytest.raises(RecordError, match=r"log/000000000001\.parquet: not a ledger .*'owner'"):
        Ledger.load(storage)


def test_a_shard_missing_a_column_is_refused_by_name(storage: Storage) -> None:
    tensor = np.linspace(0, 1, 8, dtype=np.float32).reshape(1, 2, 2, 2)
    source = {
        "series_id": "series-1",
        "patient_id": "patient-1",
        "split": "train",
        "label": 1,
        "batch": "b1",
        "archive_id": "archive-" + "a" * 24,
        "manufacturer": None,
        "slice_thickness_mm": 1.0,
        "nodule_diameter_mm": None,
    }
    sample = Sample.from_tensor(
        tensor, "float16", sample_id="series-1", preprocess_hash="h", **source
    )
    rel = "datasets/d/v1/shards/train-00000.parquet"
    shard = write_shard(storage, rel, [sample])
    assert [s.sample_id for s in iter_samples(storage, [shard])] == ["series-1"]
    _rewrite(storage, rel, lambda t: t.drop_columns(["t_std"]))
    pattern = r"train-00000\.parquet: not a dataset shard .*missing columns \['t_std'\]"
    with pytest.raises(RecordError, match=pattern):
        read_shard_metadata(storage, rel)
    rewritten = shard.model_copy(update={"sha256": storage.sha256(rel)})
    with pytest.raises(RecordError, match=pattern):
        list(iter_samples(storage, [rewritten]))


def test_a_series_file_with_an_unknown_column_is_refused_by_name(storage: Storage) -> None:
    store_series(storage, ["series-1"])
    _rewrite(storage, SERIES_FILE, lambda t: t.append_column("patient_name", pa.array(["x"])))
    pattern = r"00000000\.parquet: not a series file .*unknown columns \['patient_name'\]"
    for read in (
        lambda: read_series_index(storage),
        lambda: list(iter_series(storage)),
        lambda: load_series(storage, SERIES_FILE, "series-1"),
    ):
        with pytest.raises(RecordError, match=pattern):
            read()


def test_series_files_from_before_split_still_read(storage: Storage) -> None:
    store_series(storage, ["series-1", "series-2"])
    _rewrite(storage, SERIES_FILE, lambda t: t.drop_columns(["split"]))  # one row group
    assert read_series_index(storage)["split"].to_pylist() == [None, None]
    assert [s.split for s in iter_series(storage)] == [None, None]
    assert load_series(storage, SERIES_FILE, "series-2").series_id == "series-2"


def test_the_root_written_by_0_1_0_reads() -> None:
    storage = Storage(str(OLD_ROOT))
    assert Ledger.load(storage).entries
    for shard in storage.list_files("datasets/lung-nodules/v1/shards"):
        assert read_shard_metadata(storage, shard.path).num_rows > 0
