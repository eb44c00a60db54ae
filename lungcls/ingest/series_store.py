"""The series store: de-identified CT series at native resolution, as zstd Parquet.

One row per series: de-identified metadata columns, the int16 HU volume as one binary value
(C order, z/y/x) with its `shape` and `spacing_zyx_mm`. Files are `series/<name>.parquet`,
one per ingested archive version; which rows are current is decided by the ledger, never
by listing the folder. Rows are written and read back as `SeriesRecord`s; a file whose
columns this lungcls does not know is refused with its name.

    for series in iter_series(storage):      # one volume in memory at a time
        tensor = preprocess_series(series, series.volume, settings.preprocess)
"""

from __future__ import annotations

import uuid
from collections.abc import Container, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lungcls.ingest.ledger import Ledger
from lungcls.io.storage import Storage
from lungcls.io.tables import check_columns

SERIES_DIR = "series"
VOLUME_COLUMN = "volume"

SERIES_SCHEMA = pa.schema(
    [
        ("series_id", pa.string()),
        ("study_id", pa.string()),
        ("patient_id", pa.string()),
        ("batch", pa.string()),
        ("archive_id", pa.string()),
        ("modality", pa.string()),
        ("sop_class_uid", pa.string()),
        ("manufacturer", pa.string()),
        ("manufacturer_model", pa.string()),
        ("convolution_kernel", pa.string()),
        ("kvp", pa.float64()),
        ("body_part", pa.string()),
        ("contrast_agent", pa.string()),
        ("bits_stored", pa.int32()),
        ("pixel_representation", pa.int32()),
        ("photometric", pa.string()),
        ("transfer_syntax", pa.string()),
        ("rows", pa.int32()),
        ("columns", pa.int32()),
        ("n_slices", pa.int32()),
        ("slice_thickness_mm", pa.float64()),
        ("spacing_zyx_mm", pa.list_(pa.float64(), 3)),
        ("origin_xyz_mm", pa.list_(pa.float64(), 3)),
        ("orientation", pa.list_(pa.float64(), 6)),
        ("slice_ids", pa.list_(pa.string())),
        ("duplicates_dropped", pa.int32()),
        ("label", pa.int8()),
        ("label_level", pa.string()),
        ("nodule_center_xyz_mm", pa.list_(pa.float64(), 3)),
        ("nodule_diameter_mm", pa.float64()),
        ("split", pa.string()),
        ("ingest_run", pa.string()),
        ("shape", pa.list_(pa.int32(), 3)),
        (VOLUME_COLUMN, pa.large_binary()),
    ]
)
METADATA_COLUMNS = [name for name in SERIES_SCHEMA.names if name != VOLUME_COLUMN]
_METADATA_SCHEMA = pa.schema([SERIES_SCHEMA.field(name) for name in METADATA_COLUMNS])
# No dictionary and no min/max statistics for the volume: for one value of hundreds of MB,
# each would hold another copy of it while the row group is written.
_WRITE_OPTIONS = {
    "compression": "zstd",
    "use_dictionary": METADATA_COLUMNS,
    "write_statistics": METADATA_COLUMNS,
}
# Columns the first series files lack: they read as null (`split`: the keyed hash decides;
# `archive_id`: those files named their archive by its SHA-256, which joins the ledger row
# that holds the inbox path, so that column is dropped on reading and never passed on).
OPTIONAL_COLUMNS = frozenset({"split", "archive_id"})
DROPPED_COLUMNS = frozenset({"archive_sha256"})


@dataclass
class SeriesRecord:
    """One de-identified series as stored. `volume` is int16 HU, (z, y, x).

    Its geometry and nodule center make it a `SeriesGeometry`: preprocessing takes it as is.
    """

    series_id: str
    study_id: str
    patient_id: str
    batch: str
    # pseudonym(key, "archive", sha256): the operator (who has the key) can join the ledger;
    # nobody else can. Paths stay out (folder names can identify). None in pre-0.2 files.
    archive_id: str | None
    spacing_zyx_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    orientation: tuple[float, ...]
    slice_ids: list[str]
    volume: np.ndarray
    modality: str = "CT"
    sop_class_uid: str = ""
    manufacturer: str | None = None
    manufacturer_model: str | None = None
    convolution_kernel: str | None = None
    kvp: float | None = None
    body_part: str | None = None
    contrast_agent: str | None = None
    bits_stored: int | None = None
    pixel_representation: int | None = None
    photometric: str | None = None
    transfer_syntax: str = ""
    slice_thickness_mm: float | None = None
    duplicates_dropped: int = 0
    label: int | None = None
    label_level: str | None = None
    nodule_center_xyz_mm: tuple[float, float, float] | None = None
    nodule_diameter_mm: float | None = None
    split: str | None = None  # assigned in labels.csv; None: the keyed hash decides
    ingest_run: str = ""

    def to_row(self) -> dict[str, object]:
        """The record as a row of Python values (the volume as bytes: a copy)."""
        return {**self._metadata_row(), VOLUME_COLUMN: self._volume().tobytes()}

    def to_table(self) -> pa.Table:
        """The record as a one-row table whose volume shares the array's memory: a series
        is written without copying its voxels (they can be hundreds of MB)."""
        volume = self._volume()
        metadata = pa.Table.from_pylist([self._metadata_row()], schema=_METADATA_SCHEMA)
        offsets = pa.py_buffer(np.array([0, volume.nbytes], dtype=np.int64))
        column = pa.LargeBinaryArray.from_buffers(
            pa.large_binary(), 1, [None, offsets, pa.py_buffer(volume)]
        )
        return metadata.append_column(SERIES_SCHEMA.field(VOLUME_COLUMN), column)

    def _volume(self) -> np.ndarray:
        return np.ascontiguousarray(self.volume, dtype="<i2")

    def _metadata_row(self) -> dict[str, object]:
        # Not dataclasses.asdict: it would deep-copy the volume.
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != VOLUME_COLUMN}
        n_slices, rows, columns = self.volume.shape
        row.update(rows=rows, columns=columns, n_slices=n_slices, shape=[n_slices, rows, columns])
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> SeriesRecord:
        """A stored row as a record. The volume is decoded once, as a read-only view of the
        row's bytes (no copy); fields an older file has no column for keep their defaults."""
        stored: Mapping[str, Any] = row  # Arrow's Python values, typed by SERIES_SCHEMA
        values = {f.name: stored[f.name] for f in fields(cls) if f.name in stored}
        for name in OPTIONAL_COLUMNS:
            values.setdefault(name, None)
        for name in ("spacing_zyx_mm", "origin_xyz_mm", "orientation"):
            values[name] = tuple(values[name])
        if values.get("nodule_center_xyz_mm") is not None:
            values["nodule_center_xyz_mm"] = tuple(values["nodule_center_xyz_mm"])
        shape = tuple(int(n) for n in stored["shape"])
        volume = np.frombuffer(stored[VOLUME_COLUMN], dtype="<i2").reshape(shape)
        volume.flags.writeable = False
        values["volume"] = volume
        return cls(**values)


def new_series_file(archive_id: str) -> str:
    """A unique name: a rerun after a crash never overwrites what a ledger row may name.

    Named by the archive's keyed pseudonym: a SHA-256 in a file name joins back to the
    ledger's inbox path for anyone who can list the folder.
    """
    return f"{SERIES_DIR}/{archive_id}-{uuid.uuid4().hex[:8]}.parquet"


def write_series_file(storage: Storage, rel: str, records: Iterable[SeriesRecord]) -> list[str]:
    """Stream records into one Parquet file, one row group per series (memory: one volume)."""
    ids: list[str] = []
    with (
        storage.open(rel, "wb") as sink,
        pq.ParquetWriter(sink, SERIES_SCHEMA, **_WRITE_OPTIONS) as writer,
    ):
        iterator = iter(records)
        while (record := next(iterator, None)) is not None:
            writer.write_table(record.to_table())
            ids.append(record.series_id)
            record = None  # not held while the next series is assembled
    return ids


def _open_series_file(f: IO[bytes], source: str) -> pq.ParquetFile:
    """A series file, its columns checked (`source` names it in the error)."""
    parquet = pq.ParquetFile(f)
    check_columns(
        parquet.schema_arrow,
        SERIES_SCHEMA,
        source,
        "series file",
        OPTIONAL_COLUMNS,
        DROPPED_COLUMNS,
    )
    return parquet


def _known_columns(parquet: pq.ParquetFile) -> list[str]:
    """The columns of a series file this lungcls reads (obsolete ones are never read)."""
    return [name for name in SERIES_SCHEMA.names if name in parquet.schema_arrow.names]


def _records(table: pa.Table, wanted: Container[str]) -> Iterator[SeriesRecord]:
    """The wanted rows of a row group as records; each volume is a view of the table's
    buffer (no bytes copied out of Arrow)."""
    volumes = table.column(VOLUME_COLUMN)
    for index, row in enumerate(table.drop_columns([VOLUME_COLUMN]).to_pylist()):
        if row["series_id"] in wanted:
            row[VOLUME_COLUMN] = volumes[index].as_buffer()
            yield SeriesRecord.from_row(row)


def read_series_index(
    storage: Storage, ledger: Ledger | None = None, batches: Container[str] | None = None
) -> pa.Table:
    """Metadata of every current series (no volumes), as the ledger defines them; only the
    series of `batches` (inbox names) when given."""
    ledger = ledger or Ledger.load(storage)
    tables = []
    for rel, ids in ledger.series_files(batches).items():
        with storage.open(rel, "rb") as f:  # column projection: volumes are never read
            parquet = _open_series_file(f, storage.url(rel))
            present = [c for c in METADATA_COLUMNS if c in parquet.schema_arrow.names]
            table = _with_all_columns(parquet.read(columns=present))
        tables.append(table.filter(pc.is_in(table["series_id"], pa.array(ids, pa.string()))))
    if not tables:
        return SERIES_SCHEMA.empty_table().select(METADATA_COLUMNS)
    return pa.concat_tables(tables)


def _with_all_columns(table: pa.Table) -> pa.Table:
    """Series files written before a column existed read it as nulls (`OPTIONAL_COLUMNS`)."""
    for name in METADATA_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(
                SERIES_SCHEMA.field(name), pa.nulls(len(table), SERIES_SCHEMA.field(name).type)
            )
    return table.select(METADATA_COLUMNS)


def iter_series(
    storage: Storage, series_ids: Iterable[str] | None = None, ledger: Ledger | None = None
) -> Iterator[SeriesRecord]:
    """Current series (volume included), one row group in memory at a time."""
    wanted = set(series_ids) if series_ids is not None else None
    ledger = ledger or Ledger.load(storage)
    for rel, ids in ledger.series_files().items():
        current = set(ids) if wanted is None else set(ids) & wanted
        if not current:
            continue
        with storage.open(rel, "rb") as f:
            parquet = _open_series_file(f, storage.url(rel))
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=_known_columns(parquet))
                yield from _records(table, current)


def load_series(storage: Storage, rel: str, series_id: str) -> SeriesRecord:
    """One series (volume included) from a series file, reading only its row group."""
    with storage.open(rel, "rb") as f:
        parquet = _open_series_file(f, storage.url(rel))
        ids = parquet.read(columns=["series_id"]).column(0).to_pylist()
        if series_id not in ids:
            raise KeyError(f"{series_id} is not in {storage.url(rel)}")
        # write_series_file writes one series per row group; count rows for any other file.
        row, group = ids.index(series_id), 0
        while row >= parquet.metadata.row_group(group).num_rows:
            row -= parquet.metadata.row_group(group).num_rows
            group += 1
        table = parquet.read_row_group(group, columns=_known_columns(parquet))
        (record,) = _records(table, {series_id})
        return record
