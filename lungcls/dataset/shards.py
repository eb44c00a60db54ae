"""Dataset shards: Parquet files of preprocessed samples, one split per file.

One row per sample: the tensor as one binary value (float16 by default, C order) with its
`shape` and `dtype`, per-sample statistics (checked by the tensor contract and reusable
without decoding), and the metadata training, evaluation and audits need. A binary column
reads several times faster than a list column. Shards are written whole and byte-for-byte
deterministic, so a rebuilt version has the same SHA-256s.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lungcls.dataset.manifest import ShardInfo
from lungcls.io.integrity import check_file, checked_bytes
from lungcls.io.storage import Storage
from lungcls.io.tables import check_columns

TENSOR_COLUMN = "tensor"
STAT_COLUMNS = ["all_finite", "t_min", "t_max", "t_mean", "t_std"]

SHARD_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("series_id", pa.string()),
        ("patient_id", pa.string()),
        ("split", pa.string()),
        ("label", pa.int8()),
        ("batch", pa.string()),
        ("archive_id", pa.string()),
        ("manufacturer", pa.string()),
        ("slice_thickness_mm", pa.float64()),
        ("nodule_diameter_mm", pa.float64()),
        ("preprocess_hash", pa.string()),
        ("all_finite", pa.bool_()),
        ("t_min", pa.float32()),
        ("t_max", pa.float32()),
        ("t_mean", pa.float32()),
        ("t_std", pa.float32()),
        ("shape", pa.list_(pa.int32())),
        ("dtype", pa.string()),
        (TENSOR_COLUMN, pa.binary()),
    ]
)
METADATA_COLUMNS = [n for n in SHARD_SCHEMA.names if n != TENSOR_COLUMN]
# Shards of lungcls 0.1 named the archive by its SHA-256 (which joins the ledger row that
# holds the inbox path): that column is dropped on reading, and `archive_id` reads as null.
OPTIONAL_COLUMNS = frozenset({"archive_id"})
DROPPED_COLUMNS = frozenset({"archive_sha256"})


@dataclass
class SampleSource:
    """What a sample carries over from its series: identity, label, split, audit columns."""

    series_id: str
    patient_id: str
    split: str
    label: int
    batch: str
    archive_id: str | None  # the archive's keyed pseudonym; None in 0.1 shards
    manufacturer: str | None
    slice_thickness_mm: float | None
    nodule_diameter_mm: float | None


@dataclass
class Sample(SampleSource):
    """One preprocessed sample, as stored in a shard: its source, the tensor and its stats."""

    sample_id: str
    preprocess_hash: str
    all_finite: bool
    t_min: float
    t_max: float
    t_mean: float
    t_std: float
    shape: list[int]
    dtype: str
    tensor: bytes

    @classmethod
    def from_tensor(cls, tensor: np.ndarray, dtype: str, **fields_: Any) -> Sample:
        stored = np.ascontiguousarray(tensor, dtype=dtype)
        values = stored.astype(np.float32)
        return cls(
            all_finite=bool(np.isfinite(values).all()),
            t_min=float(values.min()),
            t_max=float(values.max()),
            t_mean=float(values.mean()),
            t_std=float(values.std()),
            shape=list(stored.shape),
            dtype=dtype,
            tensor=stored.tobytes(),
            **fields_,
        )

    def to_row(self) -> dict[str, object]:
        """The sample as an Arrow row (the shard schema's columns)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def array(self) -> np.ndarray:
        """The tensor, in its stored dtype and shape (channels first)."""
        return np.frombuffer(self.tensor, dtype=self.dtype).reshape(self.shape)


def write_shard(
    storage: Storage, rel: str, samples: list[Sample], compression: str = "zstd"
) -> ShardInfo:
    """Write one shard whole (sorted by sample id) and return what the manifest records."""
    rows = [s.to_row() for s in sorted(samples, key=lambda s: s.sample_id)]
    table = pa.Table.from_pylist(rows, schema=SHARD_SCHEMA)
    buffer = io.BytesIO()
    options: dict[str, Any] = {"compression": compression}
    if compression == "zstd":
        options["compression_level"] = 1
    pq.write_table(table, buffer, **options)
    data = buffer.getvalue()
    storage.write_atomic(rel, data)
    return ShardInfo(
        path=rel,
        split=samples[0].split,
        rows=len(rows),
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def _read_shard(
    storage: Storage, rel: str, columns: list[str] | None = None, data: bytes | None = None
) -> pa.Table:
    """A shard's table (or some of its columns), its columns checked first; a column an
    older shard lacks reads as nulls, one it holds that is obsolete is not read. `data`: the
    shard's bytes, already read and verified (else it is streamed from storage)."""
    wanted = columns or SHARD_SCHEMA.names
    with io.BytesIO(data) if data is not None else storage.open(rel, "rb") as f:
        parquet = pq.ParquetFile(f)
        found = parquet.schema_arrow
        check_columns(
            found,
            SHARD_SCHEMA,
            storage.url(rel),
            "dataset shard",
            OPTIONAL_COLUMNS,
            DROPPED_COLUMNS,
        )
        table = parquet.read(columns=[c for c in wanted if c in found.names])
    for name in wanted:
        if name not in table.column_names:
            field = SHARD_SCHEMA.field(name)
            table = table.append_column(field, pa.nulls(len(table), field.type))
    return table.select(wanted)


def read_shard_metadata(storage: Storage, rel: str) -> pa.Table:
    """Everything but the tensors (column projection: tensors are never read)."""
    return _read_shard(storage, rel, METADATA_COLUMNS)


def iter_samples(storage: Storage, shards: Iterable[ShardInfo]) -> Iterator[Sample]:
    """Every sample of the given shards, one shard in memory at a time, each verified
    against the SHA-256 its manifest names."""
    for shard in shards:
        data = checked_bytes(storage, shard.path, shard.sha256)
        for row in _read_shard(storage, shard.path, data=data).to_pylist():
            yield Sample(**row)


# Shards this process has verified: the folds of a cross-validation read one version's
# shards k times, and a committed shard never changes (a manifest names it by hash).
_VERIFIED: set[tuple[str, str]] = set()


def verify_shards(storage: Storage, shards: Iterable[ShardInfo]) -> None:
    """Check every shard against the SHA-256 its manifest names before Ray Data reads them
    (Ray's Parquet reader cannot check hashes), a few at a time."""
    from concurrent.futures import ThreadPoolExecutor

    todo = [s for s in shards if (storage.url(s.path), s.sha256) not in _VERIFIED]
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda s: check_file(storage, s.path, s.sha256), todo))
    _VERIFIED.update((storage.url(s.path), s.sha256) for s in todo)
