"""Staged slices: the decoded, de-identified slices of one archive, between the two phases.

Ingest reads each archive once (phase 1) and writes its slices here, already pseudonymised,
as `staging/<run>/<archive_id>.parquet`, a few slices per row group. Series are then
assembled one at a time (phase 2) from the slices of every archive of the batch that holds
them: a series exported over two archives becomes one series, and memory holds one series
and one row group, never a whole archive. A run removes its staging folder when it ends;
a killed run's folder is never read again (the rerun stages anew).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lungcls.ingest.dicom_series import CTSlice
from lungcls.io.storage import Storage

STAGING_DIR = "staging"
SLICES_PER_ROW_GROUP = 16

STAGED_SCHEMA = pa.schema(
    [
        ("series_id", pa.string()),
        ("study_id", pa.string()),
        ("patient_id", pa.string()),
        ("instance_id", pa.string()),
        ("file_sha256", pa.string()),
        ("position_xyz_mm", pa.list_(pa.float64(), 3)),
        ("orientation", pa.list_(pa.float64(), 6)),
        ("pixel_spacing_mm", pa.list_(pa.float64(), 2)),
        ("metadata", pa.string()),  # JSON of the kept attributes; "" for most slices
        ("transfer_syntax", pa.string()),
        ("rows", pa.int32()),
        ("columns", pa.int32()),
        ("hu", pa.binary()),  # int16, C order
    ]
)


def staging_folder(run_id: str) -> str:
    return f"{STAGING_DIR}/{run_id}"


class SliceWriter:
    """Appends pseudonymised slices to one staging file, a row group at a time."""

    def __init__(self, storage: Storage, rel: str) -> None:
        self.storage, self.rel = storage, rel
        self.rows: list[dict[str, Any]] = []
        self.count = 0
        self._sink: Any = None
        self._writer: pq.ParquetWriter | None = None

    def add(self, piece: CTSlice, series_id: str, study_id: str, patient_id: str, instance_id: str):
        hu = np.ascontiguousarray(piece.hu, dtype="<i2")
        self.rows.append(
            {
                "series_id": series_id,
                "study_id": study_id,
                "patient_id": patient_id,
                "instance_id": instance_id,
                "file_sha256": piece.sha256,
                "position_xyz_mm": [float(v) for v in piece.position_xyz_mm],
                "orientation": [float(v) for v in piece.orientation],
                "pixel_spacing_mm": [float(v) for v in piece.pixel_spacing_mm],
                "metadata": json.dumps(piece.metadata) if piece.metadata else "",
                "transfer_syntax": piece.transfer_syntax,
                "rows": hu.shape[0],
                "columns": hu.shape[1],
                "hu": hu.tobytes(),
            }
        )
        self.count += 1
        if len(self.rows) >= SLICES_PER_ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self.rows:
            return
        if self._writer is None:
            self._sink = self.storage.open(self.rel, "wb")
            self._writer = pq.ParquetWriter(self._sink, STAGED_SCHEMA, compression="none")
        self._writer.write_table(pa.Table.from_pylist(self.rows, schema=STAGED_SCHEMA))
        self.rows = []

    def close(self) -> str:
        """Finish the file; its path, or "" when no slice was staged."""
        self._flush()
        if self._writer is None:
            return ""
        self._writer.close()
        self._sink.close()
        return self.rel

    def abort(self) -> None:
        """Drop what was written (the archive was refused after all)."""
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
        self.storage.remove(self.rel)


def read_staged_series(storage: Storage, staged: Iterable[str], series_id: str) -> list[CTSlice]:
    """Every staged slice of one series, from each staging file that holds it; only the row
    groups with that series are read."""
    slices: list[CTSlice] = []
    for rel in staged:
        with storage.open(rel, "rb") as f:
            parquet = pq.ParquetFile(f)
            for group in range(parquet.num_row_groups):
                ids = parquet.read_row_group(group, columns=["series_id"]).column(0)
                if series_id not in ids.to_pylist():
                    continue
                table = parquet.read_row_group(group)
                hu = table.column("hu")
                for index, row in enumerate(table.drop_columns(["hu"]).to_pylist()):
                    if row["series_id"] == series_id:
                        slices.append(_as_slice(row, hu[index].as_py()))
    return slices


def _as_slice(row: dict[str, Any], hu: bytes) -> CTSlice:
    """A staged row as the slice `assemble_series` takes; pseudonyms stand in for the UIDs
    (they are equal exactly when the UIDs are), the file digest names the file."""
    pixels = np.frombuffer(hu, dtype="<i2").reshape(row["rows"], row["columns"])
    return CTSlice(
        member=f"file {row['file_sha256'][:12]}",
        sha256=row["file_sha256"],
        sop_uid=row["instance_id"],
        series_uid=row["series_id"],
        study_uid=row["study_id"],
        patient_id=row["patient_id"],
        position_xyz_mm=np.asarray(row["position_xyz_mm"]),
        orientation=np.asarray(row["orientation"]),
        pixel_spacing_mm=(row["pixel_spacing_mm"][0], row["pixel_spacing_mm"][1]),
        hu=pixels,
        metadata=json.loads(row["metadata"]) if row["metadata"] else {},
        transfer_syntax=row["transfer_syntax"],
    )
