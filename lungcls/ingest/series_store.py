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
        ("archive_sha256", pa.string()),
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
# Columns the first series files lack: they read as null (`split`: the keyed hash decides).
OPTIONAL_COLUMNS = frozenset({"split"})


@dataclass
class SeriesRecord:
    """One de-identified series as stored. `volume` is int16 HU, (z, y, x).

    Its geometry and nodule center make it a `SeriesGeometry`: preprocessing takes it as is.
    """

    series_id: str
    study_id: str
    patient_id: str
    batch: str
    archive_sha256: str  # joins the ledger; paths stay out (folder names can identify)
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
        # Not dataclasses.asdict: it would deep-copy the volume.
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        volume = np.ascontiguousarray(self.volume, dtype="<i2")
        row.update(
            rows=volume.shape[1],
            columns=volume.shape[2],
            n_slices=volume.shape[0],
            shape=list(volume.shape),
            volume=volume.tobytes(),
        )
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, object]) -> SeriesRecord:
        """A stored row as a record. The volume is decoded once, as a read-only view of the
        row's bytes (no copy); fields an older file has no column for keep their defaults."""
        stored: Mapping[str, Any] = row  # Arrow's Python values, typed by SERIES_SCHEMA
        values = {f.name: stored[f.name] for f in fields(cls) if f.name in stored}
        for name in ("spacing_zyx_mm", "origin_xyz_mm", "orientation"):
            values[name] = tuple(values[name])
        if values.get("nodule_center_xyz_mm") is not None:
            values["nodule_center_xyz_mm"] = tuple(values["nodule_center_xyz_mm"])
        shape = tuple(int(n) for n in stored["shape"])
        volume = np.frombuffer(stored[VOLUME_COLUMN], dtype="<i2").reshape(shape)
        volume.flags.writeable = False
        values["volume"] = volume
        return cls(**values)


def new_series_file(archive_sha256: str) -> str:
    """A unique name: a rerun after a crash never overwrites what a ledger row may name."""
    return f"{SERIES_DIR}/{archive_sha256[:16]}-{uuid.uuid4().hex[:8]}.parquet"


def write_series_file(storage: Storage, rel: str, records: Iterable[SeriesRecord]) -> list[str]:
    """Stream records into one Parquet file, one row group per series (memory: one volume)."""
    ids: list[str] = []
    with (
        storage.open(rel, "wb") as sink,
        pq.ParquetWriter(sink, SERIES_SCHEMA, compression="zstd") as writer,
    ):
        for record in records:
            writer.write_table(pa.Table.from_pylist([record.to_row()], schema=SERIES_SCHEMA))
            ids.append(record.series_id)
    return ids


def _open_series_file(f: IO[bytes], source: str) -> pq.ParquetFile:
    """A series file, its columns checked (`source` names it in the error)."""
    parquet = pq.ParquetFile(f)
    check_columns(parquet.schema_arrow, SERIES_SCHEMA, source, "series file", OPTIONAL_COLUMNS)
    return parquet


def _records(table: pa.Table, wanted: Container[str]) -> Iterator[SeriesRecord]:
    """The wanted rows of a row group as records; each volume is a view of the table's
    buffer (no bytes copied out of Arrow)."""
    volumes = table.column(VOLUME_COLUMN)
    for index, row in enumerate(table.drop_columns([VOLUME_COLUMN]).to_pylist()):
        if row["series_id"] in wanted:
            row[VOLUME_COLUMN] = volumes[index].as_buffer()
            yield SeriesRecord.from_row(row)


def read_series_index(storage: Storage, ledger: Ledger | None = None) -> pa.Table:
    """Metadata of every current series (no volumes), as the ledger defines them."""
    ledger = ledger or Ledger.load(storage)
    tables = []
    for rel, ids in ledger.series_files().items():
        with storage.open(rel, "rb") as f:  # column projection: volumes are never read
            parquet = _open_series_file(f, storage.url(rel))
            present = [c for c in METADATA_COLUMNS if c in parquet.schema_arrow.names]
            table = _with_all_columns(parquet.read(columns=present))
        tables.append(table.filter(pc.is_in(table["series_id"], pa.array(ids))))
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
                yield from _records(parquet.read_row_group(group), current)


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
        (record,) = _records(parquet.read_row_group(group), {series_id})
        return record
