"""Labels at build time: the labels table applied to the series, and what changed since the
parent version.

A build labels each series from the current labels version of its batch
(`lungcls.ingest.label_table`); a batch without one keeps what ingest stamped into its series
records (roots ingested by lungcls 0.1). Every version writes `labels.parquet` beside its
manifest: the label, nodule and assigned split of every series it considered, labelled or
not. The next version compares itself with that table: a series whose label changed, was
gained or was lost is listed in the manifest (`label_changes`), and a series whose label,
nodule center or diameter changed is preprocessed again (the crop follows the nodule).

A parent built before these tables has only its shards to compare with: label changes and
losses of its samples are found, gains are not (an unlabelled series left no trace in it),
and a nodule is compared with what ingest stamped into the series record, which is what
that parent used.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lungcls.config import Settings
from lungcls.dataset.manifest import LabelChange, Manifest
from lungcls.dataset.shards import read_shard_metadata
from lungcls.ingest.archive import discover_archives
from lungcls.ingest.label_matching import unmatched_labels
from lungcls.ingest.label_table import (
    CurrentLabels,
    current_labels,
    refresh_labels,
)
from lungcls.ingest.ledger import Ledger
from lungcls.io.quarantine import QuarantineItem
from lungcls.io.storage import Storage
from lungcls.io.tables import check_columns

VERSION_LABELS = "labels.parquet"
NODULE_COLUMNS = ["nodule_x_mm", "nodule_y_mm", "nodule_z_mm", "nodule_diameter_mm"]
LABEL_COLUMNS = ["label", "label_level", *NODULE_COLUMNS, "split"]

_VERSION_SCHEMA = pa.schema(
    [
        ("series_id", pa.string()),
        ("label", pa.int8()),
        ("label_level", pa.string()),
        ("nodule_x_mm", pa.float64()),
        ("nodule_y_mm", pa.float64()),
        ("nodule_z_mm", pa.float64()),
        ("nodule_diameter_mm", pa.float64()),
        ("split", pa.string()),
    ]
)


def apply_labels(frame: pd.DataFrame, labels: CurrentLabels) -> pd.DataFrame:
    """The series frame with label, level, nodule and assigned split taken from the current
    labels of each series' batch; series of a batch without labels keep their own."""
    columns = {c: frame[c].tolist() for c in LABEL_COLUMNS}
    for i, row in enumerate(frame.itertuples(index=False)):
        if not labels.covers(row.batch):
            continue
        found = labels.lookup(row.batch, row.series_id, row.study_id, row.patient_id)
        center = found.nodule_center_xyz_mm if found else None
        values = {
            "label": found.label if found else None,
            "label_level": found.level if found else None,
            "nodule_x_mm": center[0] if center else None,
            "nodule_y_mm": center[1] if center else None,
            "nodule_z_mm": center[2] if center else None,
            "nodule_diameter_mm": found.nodule_diameter_mm if found else None,
            "split": labels.split_for(row.batch, row.patient_id),
        }
        for column, value in values.items():
            columns[column][i] = value
    out = frame.copy()
    for column, column_values in columns.items():
        out[column] = pd.Series(column_values, index=frame.index, dtype=frame[column].dtype)
    out["label"] = out["label"].astype("Int64")
    return out


def nodule_center(row: Any) -> tuple[float, float, float] | None:
    """A frame row's nodule center, or None (a missing coordinate is NaN in a frame)."""
    x, y, z = (_number(getattr(row, c)) for c in NODULE_COLUMNS[:3])
    if x is None or y is None or z is None:
        return None
    return (x, y, z)


def write_version_labels(storage: Storage, folder: str, frame: pd.DataFrame) -> None:
    """`<version>/labels.parquet`: every series the version considered, with its labels."""
    rows = [
        {
            "series_id": row.series_id,
            "label": _integer(row.label),
            "label_level": row.label_level if isinstance(row.label_level, str) else None,
            **{c: _number(getattr(row, c)) for c in NODULE_COLUMNS},
            "split": row.split if isinstance(row.split, str) else None,
        }
        for row in frame.sort_values("series_id").itertuples(index=False)
    ]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=_VERSION_SCHEMA), buffer, compression="zstd")
    storage.write_atomic(f"{folder}/{VERSION_LABELS}", buffer.getvalue())


_State = tuple[int | None, tuple[float | None, ...] | None]  # label, nodule (None: unknown)


@dataclass(frozen=True)
class LabelComparison:
    """A new version against its parent: the label changes, and the series whose samples
    cannot be reused because their nodule or label changed."""

    changes: list[LabelChange]
    remake: set[str]


def compare_with_parent(
    storage: Storage, parent: Manifest | None, stamped: pd.DataFrame, applied: pd.DataFrame
) -> LabelComparison:
    """The series of `applied` (the frame after `apply_labels`) against the parent version;
    `stamped` is the frame before it, as the series records hold it (what a 0.1 parent used).
    Series that only one of them has are new or gone, not changed."""
    if parent is None:
        return LabelComparison([], set())
    now = {row.series_id: _label_state(row) for row in applied.itertuples(index=False)}
    path = f"{parent.ref.folder}/{VERSION_LABELS}"
    if storage.exists(path):
        before = _read_version_labels(storage, path)
    else:
        before = _parent_sample_labels(storage, parent, stamped)
    changes, remake = [], set()
    for series_id in sorted(before.keys() & now.keys()):
        (label_before, nodule_before), (label_now, nodule_now) = before[series_id], now[series_id]
        if label_before != label_now:
            changes.append(LabelChange(series_id=series_id, before=label_before, after=label_now))
        if label_before != label_now or (nodule_before is not None and nodule_before != nodule_now):
            remake.add(series_id)
    return LabelComparison(changes, remake)


def _label_state(row: Any) -> _State:
    return _integer(row.label), tuple(_number(getattr(row, c)) for c in NODULE_COLUMNS)


def _read_version_labels(storage: Storage, path: str) -> dict[str, _State]:
    table = pq.read_table(io.BytesIO(storage.read_bytes(path)))
    check_columns(table.schema, _VERSION_SCHEMA, storage.url(path), "version labels table")
    return {
        row["series_id"]: (row["label"], tuple(row[c] for c in NODULE_COLUMNS))
        for row in table.to_pylist()
    }


def _parent_sample_labels(
    storage: Storage, parent: Manifest, stamped: pd.DataFrame
) -> dict[str, _State]:
    """A parent without a labels table: its samples' labels, and the nodule each series
    record holds (what that parent's crops were centred on)."""
    nodules = {row.series_id: _label_state(row)[1] for row in stamped.itertuples(index=False)}
    states: dict[str, _State] = {}
    for shard in parent.shards:
        for row in (
            read_shard_metadata(storage, shard.path).select(["series_id", "label"]).to_pylist()
        ):
            states[row["series_id"]] = (row["label"], nodules.get(row["series_id"]))
    return states


def _number(value: Any) -> float | None:
    """A float, or None for a missing value (None, NaN, pandas' NA)."""
    if value is None or value is pd.NA:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _integer(value: Any) -> int | None:
    number = _number(value)
    return None if number is None else int(number)


def refresh_inbox_labels(
    settings: Settings, storage: Storage, key: bytes, ledger: Ledger, run_id: str
) -> list[QuarantineItem]:
    """Read every labels.csv of the inbox that changed since it was last read (as ingest
    does), so that labels corrected without any ingest count; returns what was quarantined."""
    _, label_files = discover_archives(storage, settings.ingest.inbox)
    refresh = refresh_labels(storage, key, label_files, run_id)
    if not refresh.batches:
        return refresh.quarantined
    unmatched = unmatched_labels(storage, ledger, current_labels(storage), run_id, refresh.batches)
    return refresh.quarantined + unmatched
