"""The labels table: each batch's `labels.csv` as versions, read whenever the file changes.

    labels/<batch pseudonym>/v<N>-<uuid8>.parquet   one version of a batch's labels: a row per
                                                   labels.csv row that parsed (pseudonyms only)
    ledger/labels.parquet                          the history (the operator's view): which
                                                   labels.csv (path, tag, SHA-256) became
                                                   which version, when, in which run, with how
                                                   many rows and problems

`refresh_labels` runs at every ingest and before every dataset build, over every labels.csv
in the inbox, whether or not its batch has new archives. A file whose bytes changed since
the version last recorded (the listing's tag first, then the SHA-256 of the bytes) is parsed
and becomes its batch's next version; its problems are quarantined then, once. A dataset
build applies the current version of each batch (`current_labels`), so a labels.csv that
arrives or is corrected after its archives counts in the next dataset version, and no
archive is read again.

- A labels.csv deleted from the inbox changes nothing: its last version stays current, as
  an ingested archive stays ingested. To withdraw a batch's labels, deliver a labels.csv
  with the header only: an empty version.
- A labels.csv that cannot be read at all (not UTF-8 or UTF-16, no `label` or key column) is
  recorded and quarantined, but does not replace the last readable version: a file mangled
  by an editor must not silently unlabel a batch.
- Outside `ledger/`, batches are named by a keyed pseudonym (`batch_pseudonym`): a batch
  folder may be named after a patient. The history maps one to the other.
- The history file is rewritten whole, like the archive ledger. Two refreshes at once may
  both record the same new file; the second row is redundant, never wrong (the table files
  have unique names, and a row names its own).
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from lungcls.ingest.deid import pseudonym
from lungcls.ingest.labels import BatchLabels, Label, read_labels
from lungcls.io.quarantine import QuarantineItem, write_quarantine
from lungcls.io.storage import ObjectInfo, Storage
from lungcls.io.tables import check_columns

LABELS_DIR = "labels"
HISTORY_PATH = "ledger/labels.parquet"

_TABLE_SCHEMA = pa.schema(
    [
        ("row", pa.int32()),
        ("key", pa.string()),
        ("level", pa.string()),
        ("label", pa.int8()),
        ("nodule_x_mm", pa.float64()),
        ("nodule_y_mm", pa.float64()),
        ("nodule_z_mm", pa.float64()),
        ("nodule_diameter_mm", pa.float64()),
        ("split", pa.string()),
    ]
)

_HISTORY_SCHEMA = pa.schema(
    [
        ("batch", pa.string()),
        ("batch_id", pa.string()),
        ("source", pa.string()),
        ("version_tag", pa.string()),
        ("size", pa.int64()),
        ("sha256", pa.string()),
        ("version", pa.int32()),
        ("table", pa.string()),
        ("rows", pa.int32()),
        ("problems", pa.int32()),
        ("rows_sha256", pa.string()),
        ("run_id", pa.string()),
        ("recorded_at", pa.string()),
    ]
)


def batch_pseudonym(key: bytes, batch: str) -> str:
    """How a batch is named outside the ledger (`batch-3f2a…`)."""
    return pseudonym(key, "batch", batch)


def labels_batch(info: ObjectInfo) -> str:
    """The batch a labels.csv belongs to: its folder, `<inbox>/<batch>/labels.csv`."""
    return posixpath.basename(posixpath.dirname(info.path))


@dataclass(frozen=True)
class LabelsVersion:
    """One labels.csv as read: a row of the history."""

    batch: str  # the inbox folder (operator's view only)
    batch_id: str  # its keyed pseudonym
    source: str  # the labels.csv, under the root
    version_tag: str  # the listing's ETag/mtime when read
    size: int
    sha256: str  # of the file's bytes
    version: int  # 1, 2, … per batch; 0: the file could not be read, no version made
    table: str  # the version's table under the root; "" when no version was made
    rows: int  # labels in the version
    problems: int  # quarantined when it was read
    rows_sha256: str  # of the labels themselves (row numbers aside): what a dataset sees
    run_id: str
    recorded_at: str  # ISO 8601, UTC


@dataclass
class LabelsHistory:
    """Every labels.csv ever read, oldest first (`ledger/labels.parquet`)."""

    entries: list[LabelsVersion] = field(default_factory=list)

    @classmethod
    def load(cls, storage: Storage) -> LabelsHistory:
        if not storage.exists(HISTORY_PATH):
            return cls()
        table = pq.read_table(io.BytesIO(storage.read_bytes(HISTORY_PATH)))
        check_columns(table.schema, _HISTORY_SCHEMA, storage.url(HISTORY_PATH), "labels history")
        return cls([LabelsVersion(**row) for row in table.to_pylist()])

    def save(self, storage: Storage) -> None:
        rows = [asdict(e) for e in self.entries]
        table = pa.Table.from_pylist(rows, schema=_HISTORY_SCHEMA)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        storage.write_atomic(HISTORY_PATH, buffer.getvalue())

    def last_read(self, batch: str) -> LabelsVersion | None:
        """The batch's labels.csv as last read, a version or not: what a change is against."""
        return next((e for e in reversed(self.entries) if e.batch == batch), None)

    def current(self) -> dict[str, LabelsVersion]:
        """Batch name -> its current version (the latest one that made a table)."""
        return {e.batch: e for e in self.entries if e.table}

    def fingerprint(self, batches: Collection[str] | None = None) -> str:
        """What the current labels are, by content: "" when no batch has a version yet.

        Keyed by batch pseudonym and the labels' own digest (not the file's), so two roots
        with the same labels agree, and a file saved again with the same labels is no change.
        """
        current = [
            (v.batch_id, v.rows_sha256)
            for v in self.current().values()
            if batches is None or v.batch in batches or v.batch_id in batches
        ]
        if not current:
            return ""
        return hashlib.sha256(json.dumps(sorted(current)).encode()).hexdigest()


@dataclass
class CurrentLabels:
    """The current labels of every batch that has a version, for a dataset build."""

    versions: dict[str, LabelsVersion]  # batch pseudonym -> its current version
    tables: dict[str, BatchLabels]  # batch pseudonym -> its labels

    def __post_init__(self) -> None:
        self._ids = {v.batch: v.batch_id for v in self.versions.values()}

    def batch_id(self, batch: str) -> str | None:
        """The pseudonym of a batch named by its inbox name or its pseudonym (series records
        carry either, depending on the lungcls that ingested them); None: no version."""
        return batch if batch in self.tables else self._ids.get(batch)

    def covers(self, batch: str) -> bool:
        """Whether the batch has a labels version (if not, its series keep what ingest
        stamped into their records, as lungcls 0.1 did)."""
        return self.batch_id(batch) is not None

    def lookup(self, batch: str, series_id: str, study_id: str, patient_id: str) -> Label | None:
        """The most specific label of a series in its batch's current labels."""
        bid = self.batch_id(batch)
        return self.tables[bid].lookup(series_id, study_id, patient_id) if bid else None

    def split_for(self, batch: str, patient_id: str) -> str | None:
        """The split the batch's current labels assign to a patient, if any."""
        bid = self.batch_id(batch)
        return self.tables[bid].split_for(patient_id) if bid else None


@dataclass
class LabelsRefresh:
    """What one refresh read: each changed file as recorded (one refused as unreadable has
    no table), and the problems it quarantined."""

    versions: list[LabelsVersion] = field(default_factory=list)
    quarantined: list[QuarantineItem] = field(default_factory=list)

    @property
    def batches(self) -> list[str]:
        """The batches (inbox names) whose labels changed now."""
        return sorted({v.batch for v in self.versions if v.table})


def refresh_labels(
    storage: Storage,
    key: bytes,
    label_files: Iterable[ObjectInfo],
    run_id: str,
    batch_of: Callable[[ObjectInfo], str] = labels_batch,
) -> LabelsRefresh:
    """Read every labels.csv that changed since it was last read into a new version of its
    batch's labels, and quarantine its problems (see the module docstring)."""
    history = LabelsHistory.load(storage)
    refresh = LabelsRefresh()
    problems: list[QuarantineItem] = []
    dirty = False
    for info in label_files:
        batch = batch_of(info)
        last = history.last_read(batch)
        if last is not None and (last.source, last.version_tag, last.size) == (
            info.path,
            info.version_tag,
            info.size,
        ):
            continue
        data = storage.read_bytes(info.path)
        sha256 = hashlib.sha256(data).hexdigest()
        dirty = True
        if last is not None and last.sha256 == sha256 and last.source == info.path:
            _retag(history, last, info)  # touched or copied again, same bytes: nothing new
            continue
        parsed = read_labels(data, key)
        version = _record_version(storage, history, key, batch, info, sha256, parsed, run_id)
        refresh.versions.append(version)
        problems += [
            QuarantineItem(
                level="labels",
                code=p.code,
                message=p.message,
                source_url=storage.url(info.path),
                row=p.row,
            )
            for p in parsed.problems
        ]
    if dirty:
        history.save(storage)
    refresh.quarantined = write_quarantine(storage, run_id, problems)
    return refresh


def _retag(history: LabelsHistory, last: LabelsVersion, info: ObjectInfo) -> None:
    index = history.entries.index(last)
    history.entries[index] = replace(last, version_tag=info.version_tag, size=info.size)


def _record_version(
    storage: Storage,
    history: LabelsHistory,
    key: bytes,
    batch: str,
    info: ObjectInfo,
    sha256: str,
    parsed: BatchLabels,
    run_id: str,
) -> LabelsVersion:
    """Write the parsed labels as the batch's next version (unless none could be read at
    all) and add the history row, which is what makes it current."""
    batch_id = batch_pseudonym(key, batch)
    unreadable = any(p.code == "labels_unreadable" for p in parsed.problems)
    number = 1 + max((e.version for e in history.entries if e.batch == batch), default=0)
    table = "" if unreadable else _new_table_path(batch_id, number)
    if table:
        _write_table(storage, table, parsed.labels)
    version = LabelsVersion(
        batch=batch,
        batch_id=batch_id,
        source=info.path,
        version_tag=info.version_tag,
        size=info.size,
        sha256=sha256,
        version=number if table else 0,
        table=table,
        rows=len(parsed.labels),
        problems=len(parsed.problems),
        rows_sha256=_labels_digest(parsed.labels) if table else "",
        run_id=run_id,
        recorded_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    history.entries.append(version)
    return version


def remove_label_rows(storage: Storage, keys: Collection[str]) -> int:
    """Rewrite every labels version holding a row that names one of `keys` (pseudonyms of
    erased patients, studies or series) without it, under a new name; the history then
    names the new table and the old one is removed (`lungcls erase`). Returns the rows
    removed."""
    history = LabelsHistory.load(storage)
    removed, replaced = 0, []
    for index, version in enumerate(history.entries):
        if not version.table:
            continue
        labels = _read_table(storage, version.table).labels
        kept = [x for x in labels if x.key not in keys]
        if len(kept) < len(labels):
            table = _new_table_path(version.batch_id, version.version)
            _write_table(storage, table, kept)
            history.entries[index] = replace(
                version, table=table, rows=len(kept), rows_sha256=_labels_digest(kept)
            )
            removed += len(labels) - len(kept)
            replaced.append(version.table)
    if replaced:
        history.save(storage)  # the new tables count from here on; then the old ones go
        for rel in replaced:
            storage.remove(rel)
    return removed


def _new_table_path(batch_id: str, number: int) -> str:
    """A unique name: only the history row that names it makes it count (a refresh that
    dies before saving the history leaves a file nobody reads)."""
    return f"{LABELS_DIR}/{batch_id}/v{number}-{uuid.uuid4().hex[:8]}.parquet"


def _labels_digest(labels: list[Label]) -> str:
    """The labels' content, row numbers aside (a reordered file labels the same)."""
    content = sorted(
        (x.key, x.level, x.label, x.nodule_center_xyz_mm, x.nodule_diameter_mm, x.split)
        for x in labels
    )
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


def _write_table(storage: Storage, rel: str, labels: list[Label]) -> None:
    rows = []
    for x in labels:
        x_mm, y_mm, z_mm = x.nodule_center_xyz_mm or (None, None, None)
        rows.append(
            {
                "row": x.row,
                "key": x.key,
                "level": x.level,
                "label": x.label,
                "nodule_x_mm": x_mm,
                "nodule_y_mm": y_mm,
                "nodule_z_mm": z_mm,
                "nodule_diameter_mm": x.nodule_diameter_mm,
                "split": x.split,
            }
        )
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=_TABLE_SCHEMA), buffer, compression="zstd")
    storage.write_atomic(rel, buffer.getvalue())


def _read_table(storage: Storage, rel: str) -> BatchLabels:
    table = pq.read_table(io.BytesIO(storage.read_bytes(rel)))
    check_columns(table.schema, _TABLE_SCHEMA, storage.url(rel), "labels table")
    labels = []
    for row in table.to_pylist():
        center = (row["nodule_x_mm"], row["nodule_y_mm"], row["nodule_z_mm"])
        labels.append(
            Label(
                row=row["row"],
                key=row["key"],
                level=row["level"],
                label=row["label"],
                nodule_center_xyz_mm=None if center[0] is None else center,
                nodule_diameter_mm=row["nodule_diameter_mm"],
                split=row["split"],
            )
        )
    return BatchLabels(labels, [])


def current_labels(storage: Storage) -> CurrentLabels:
    """The current version of every batch's labels (one small table per batch)."""
    versions = {v.batch_id: v for v in LabelsHistory.load(storage).current().values()}
    tables = {bid: _read_table(storage, v.table) for bid, v in versions.items()}
    return CurrentLabels(versions, tables)


def labels_fingerprint(storage: Storage, batches: Collection[str] | None = None) -> str:
    """Which labels are current, by content ("" when none): reads the history only."""
    return LabelsHistory.load(storage).fingerprint(batches)
