"""Parquet tables read from storage: their columns checked against what the reader knows.

The ledger, the series files and the dataset shards are Parquet, not JSON records, but the
same rule holds: a file this lungcls cannot read is refused with its name, the columns that
do not match and what to do, instead of a `TypeError` from deep inside a constructor.

    with storage.open(rel, "rb") as f:
        parquet = pq.ParquetFile(f)
        check_columns(parquet.schema_arrow, SHARD_SCHEMA, storage.url(rel), "dataset shard")

Columns an older lungcls did not write yet are listed as `optional` by the reader, which
then fills them (a series file from before `split` reads with `split` null). Columns an
older lungcls wrote and this one no longer reads are listed as `dropped`: accepted, and left
for the reader to drop (`archive_sha256`, replaced by the keyed `archive_id`).

Score tables (evaluation scores, out-of-fold scores) are pandas frames stored as Parquet
with `frame_bytes` and read back with `read_frame`.
"""

from __future__ import annotations

import io
from collections.abc import Collection

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lungcls.io.records import RecordError
from lungcls.io.storage import Storage


def check_columns(
    found: pa.Schema,
    expected: pa.Schema,
    source: str,
    kind: str,
    optional: Collection[str] = (),
    dropped: Collection[str] = (),
) -> None:
    """Refuse a table whose columns are not `expected`'s (less any `optional` ones).

    Args:
        found: the schema of the file as stored.
        expected: the schema this lungcls writes.
        source: the file's URL, named in the error.
        kind: what the file is, for people ("ledger", "dataset shard").
        optional: columns older files may lack, which the reader fills itself.
        dropped: obsolete columns older files may hold, which the reader drops itself.
    """
    unknown = [n for n in found.names if n not in expected.names and n not in dropped]
    missing = [n for n in expected.names if n not in found.names and n not in optional]
    if not unknown and not missing:
        return
    problems = []
    if unknown:
        problems.append(f"unknown columns {unknown}")
    if missing:
        problems.append(f"missing columns {missing}")
    raise RecordError(
        f"{source}: not a {kind} this lungcls reads ({'; '.join(problems)}). A newer "
        f"lungcls may have written it (read it with that version), or the file is not a "
        f"{kind} or was damaged (restore it from a backup or rewrite it with lungcls)"
    )


def frame_bytes(frame: pd.DataFrame) -> bytes:
    """A frame as a Parquet file (without the pandas index)."""
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer)
    return buffer.getvalue()


def read_frame(storage: Storage, rel: str) -> pd.DataFrame:
    """A Parquet file written by `frame_bytes`, as a frame."""
    return frame_of(storage.read_bytes(rel))


def frame_of(data: bytes) -> pd.DataFrame:
    """The frame of `frame_bytes`' output (bytes already read and verified)."""
    return pq.read_table(io.BytesIO(data)).to_pandas()
