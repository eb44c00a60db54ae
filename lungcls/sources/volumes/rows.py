"""Reading SRC/labels.csv: one row per volume, each checked on its own.

Rows are read as ingest reads a batch's labels.csv (UTF-8 or UTF-16 with a BOM, `,`, `;` or
tab, case-insensitive column names, decimal commas). A row that cannot be used is refused
with a code and the others go on; only a file that cannot be read at all, or lacks a
required column, stops the import.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from lungcls.dataset.splits import SPLITS
from lungcls.ingest.labels import LABEL_VALUES, LabelProblem, decode_labels, sniff_delimiter
from lungcls.sources.volumes.options import VolumeImportError

LABELS_FILE = "labels.csv"
REQUIRED_COLUMNS = ("file", "patient_id", "label")
CENTER_MM_COLUMNS = ("nodule_x_mm", "nodule_y_mm", "nodule_z_mm")
CENTER_VOXEL_COLUMNS = ("nodule_i", "nodule_j", "nodule_k")
DIAMETER_COLUMNS = ("diameter_mm", "nodule_diameter_mm")
# The formats SimpleITK reads with their geometry; `.nhdr`/`.mhd` keep their voxels in a
# file beside them, which is no volume of its own.
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
_DRIVE = re.compile(r"^[a-zA-Z]:")


@dataclass(frozen=True)
class Refusal:
    """A row or file the import refused: a stable `code`, a message for people, and where
    (the row of SRC/labels.csv, 1-based after the header, and/or the path in SRC)."""

    code: str
    message: str
    row: int | None = None
    file: str | None = None


@dataclass(frozen=True)
class SourceRow:
    """One usable row of SRC/labels.csv (paths relative to SRC, normalised)."""

    row: int
    file: str
    patient_id: str
    label: int
    mask: str | None
    center_mm: tuple[float, float, float] | None  # SimpleITK's physical space (LPS)
    center_voxel: tuple[float, float, float] | None  # (i, j, k), 0-based, may be fractional
    diameter_mm: float | None
    split: str | None


class _RowRefused(ValueError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def volume_suffix(path: str) -> str | None:
    """The volume format suffix a path ends with (case-insensitive), or None."""
    lower = path.lower()
    return next((s for s in VOLUME_SUFFIXES if lower.endswith(s)), None)


def read_source_rows(src: Path) -> tuple[list[SourceRow], list[Refusal], set[str]]:
    """The usable rows, the refused ones, and every path the rows name (volumes and masks,
    refused rows included: a file named by a bad row is not an unlisted one)."""
    path = src / LABELS_FILE
    if not path.is_file():
        raise VolumeImportError(
            f"{src} has no {LABELS_FILE}: it needs one row per volume with the columns "
            f"{', '.join(REQUIRED_COLUMNS)}"
        )
    text = decode_labels(path.read_bytes())
    if isinstance(text, LabelProblem):
        raise VolumeImportError(f"{path}: {text.message}")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(text))
    header = [c.strip().lower() for c in next(reader, [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise VolumeImportError(
            f"{path} lacks the column(s) {', '.join(missing)}; required: "
            f"{', '.join(REQUIRED_COLUMNS)} (optional: mask, {', '.join(CENTER_MM_COLUMNS)} or "
            f"{', '.join(CENTER_VOXEL_COLUMNS)}, diameter_mm, split)"
        )
    try:
        records = [
            (number, {c: v.strip() for c, v in zip(header, values, strict=False) if c})
            for number, values in enumerate(reader, start=1)
            if any(v.strip() for v in values)
        ]
    except csv.Error:
        raise VolumeImportError(
            f"{path} is not valid CSV from row {reader.line_num - 1} on (an unclosed quote?)"
        ) from None
    rows: list[SourceRow] = []
    refused: list[Refusal] = []
    named: set[str] = set()
    for number, record in records:
        for column in ("file", "mask"):
            relative = _relative(src, record.get(column, ""))
            if relative:
                named.add(relative)
        try:
            rows.append(_parse_row(src, number, record))
        except _RowRefused as error:
            refused.append(Refusal(error.code, str(error), number, record.get("file") or None))
    rows, duplicates = _without_duplicates(rows, records)
    rows, conflicts = _without_split_conflicts(rows)
    return rows, refused + duplicates + conflicts, named


def unlisted_volumes(src: Path, named: set[str]) -> list[Refusal]:
    """Volume files under SRC that no row names (as a volume or a mask)."""
    refused = []
    for folder, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            relative = Path(folder, name).relative_to(src).as_posix()
            if name.startswith(".") or volume_suffix(name) is None or relative in named:
                continue
            refused.append(
                Refusal(
                    "unlisted_volume",
                    f"no row of {LABELS_FILE} names this volume (as a file or a mask): add "
                    "its row, or move it out of SRC",
                    file=relative,
                )
            )
    return refused


def _parse_row(src: Path, number: int, record: dict[str, str]) -> SourceRow:
    if not record.get("file"):
        raise _RowRefused("volume_missing", "the row names no volume file")
    file = _inside(src, record["file"], "file")
    mask = _inside(src, record["mask"], "mask") if record.get("mask") else None
    patient_id = record.get("patient_id", "")
    if not patient_id:
        raise _RowRefused("bad_value", "patient_id is empty: every volume needs its patient")
    label = LABEL_VALUES.get(record.get("label", "").lower())
    if label is None:
        raise _RowRefused(
            "bad_label", f"label must be one of {', '.join(LABEL_VALUES)} (case-insensitive)"
        )
    center_mm = _triple(record, CENTER_MM_COLUMNS)
    center_voxel = _triple(record, CENTER_VOXEL_COLUMNS)
    if center_mm is not None and center_voxel is not None:
        raise _RowRefused("bad_value", "give the nodule center in mm or in voxels, not both")
    diameters = {d for d in (_number(record, c) for c in DIAMETER_COLUMNS) if d is not None}
    if len(diameters) > 1 or any(d <= 0 for d in diameters):
        raise _RowRefused("bad_value", "diameter_mm must be one positive number of mm")
    split = record.get("split", "").lower() or None
    if split is not None and split not in SPLITS:
        raise _RowRefused("bad_value", f"split must be one of {', '.join(SPLITS)} or empty")
    diameter = diameters.pop() if diameters else None
    return SourceRow(
        number, file, patient_id, label, mask, center_mm, center_voxel, diameter, split
    )


def _relative(src: Path, value: str) -> str | None:
    """A path as written in a row, relative to SRC and normalised; None when it is empty,
    absolute or climbs out of SRC by its text."""
    text = value.strip().replace("\\", "/")
    if not text or text.startswith("/") or _DRIVE.match(text):
        return None
    normal = posixpath.normpath(text)
    return None if normal == ".." or normal.startswith("../") else normal


def _inside(src: Path, value: str, column: str) -> str:
    """The path of a row's `file` or `mask`, refused when it leaves SRC (by its text or
    through a link) or is not a volume format."""
    relative = _relative(src, value)
    root = os.path.realpath(src)
    if relative is None or not os.path.realpath(src / relative).startswith(root + os.sep):
        raise _RowRefused(
            "path_outside_source",
            f"the {column} path leaves SRC (absolute, .. or a link out of SRC): give paths "
            "relative to SRC",
        )
    if volume_suffix(relative) is None:
        raise _RowRefused(
            "unsupported_format",
            f"the {column} is not NIfTI, MetaImage or NRRD ({', '.join(VOLUME_SUFFIXES)})",
        )
    return relative


def _number(record: dict[str, str], column: str) -> float | None:
    """A number (a decimal comma reads as a point); the message names the column only."""
    text = record.get(column, "")
    if not text:
        return None
    if text.count(",") == 1 and "." not in text:
        text = text.replace(",", ".")
    try:
        value = float(text)
    except ValueError:
        raise _RowRefused("bad_value", f"{column} must be a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise _RowRefused("bad_value", f"{column} must be a finite number")
    return value


def _triple(record: dict[str, str], columns: tuple[str, str, str]) -> tuple[float, ...] | None:
    values = [_number(record, c) for c in columns]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise _RowRefused("bad_value", f"the nodule center needs all of {', '.join(columns)}")
    return tuple(float(v) for v in values if v is not None)


def _without_duplicates(
    rows: list[SourceRow], records: list[tuple[int, dict[str, str]]]
) -> tuple[list[SourceRow], list[Refusal]]:
    """Rows naming a volume that another row names too are all refused: which of their
    labels is right cannot be told."""
    counts = Counter(_relative(Path(), r.get("file", "")) for _, r in records)
    counts.pop(None, None)
    kept, refused = [], []
    for row in rows:
        if counts[row.file] > 1:
            message = f"{counts[row.file]} rows name this volume: keep one row per volume"
            refused.append(Refusal("duplicate_file", message, row.row, row.file))
        else:
            kept.append(row)
    return kept, refused


def _without_split_conflicts(rows: list[SourceRow]) -> tuple[list[SourceRow], list[Refusal]]:
    """A patient whose rows give two different splits is refused whole: any choice would put
    some of its volumes where the source did not mean them."""
    splits: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row.split is not None:
            splits[row.patient_id].add(row.split)
    kept, refused = [], []
    for row in rows:
        if len(splits[row.patient_id]) > 1:
            message = "this patient's rows give different splits: one split per patient"
            refused.append(Refusal("conflicting_split", message, row.row, row.file))
        else:
            kept.append(row)
    return kept, refused
