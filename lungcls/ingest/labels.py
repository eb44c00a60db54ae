"""`labels.csv`: diagnoses for the series of one batch, pseudonymised as soon as it is read.

Columns (header required; at least one key column and `label`):

    series_uid | study_uid | patient_id    which series a row labels (the most specific wins)
    label                                  0/1, negative/positive (case-insensitive)
    nodule_x_mm, nodule_y_mm, nodule_z_mm  optional nodule center, patient coordinates (LPS)
    nodule_diameter_mm                     optional
    split                                  optional, on patient_id rows only: train, val or
                                           test; assigns the patient's split (see splits.py)

The file is read as spreadsheets save it: UTF-8 with or without a byte-order mark ("CSV
UTF-8"), UTF-16 with one ("Unicode text"), any line ends, and `,`, `;` or tab between
columns (whichever the header line uses most). Column names are case-insensitive, unnamed
columns (trailing delimiters) and blank rows are ignored, and `1,5` reads as 1.5 where the
locale writes decimals with a comma.

Problems never pass silently: unknown columns, bad values and rows that match no series are
reported as quarantine items, naming the row number, never the raw identifier.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
from dataclasses import dataclass

from lungcls.dataset.splits import SPLITS
from lungcls.ingest.deid import pseudonym

KEY_COLUMNS = {"series_uid": "series", "study_uid": "study", "patient_id": "patient"}
CENTER_COLUMNS = ("nodule_x_mm", "nodule_y_mm", "nodule_z_mm")
KNOWN_COLUMNS = {*KEY_COLUMNS, "label", *CENTER_COLUMNS, "nodule_diameter_mm", "split"}
LABEL_VALUES = {"0": 0, "1": 1, "negative": 0, "positive": 1, "benign": 0, "malignant": 1}
DELIMITERS = (",", ";", "\t")  # in order of preference when the header uses none or a tie
# What a column name looks like; anything else in the header is not echoed in messages.
COLUMN_NAME = re.compile(r"[a-z][a-z _]{0,39}")


@dataclass(frozen=True)
class Label:
    row: int  # 1-based data row in labels.csv (the header is row 0)
    key: str  # pseudonym of the series, study or patient it names
    level: str  # "series", "study" or "patient"
    label: int
    nodule_center_xyz_mm: tuple[float, float, float] | None
    nodule_diameter_mm: float | None
    split: str | None = None  # an assigned split; only patient rows carry one


@dataclass(frozen=True)
class LabelProblem:
    row: int | None
    code: str
    message: str


@dataclass
class BatchLabels:
    labels: list[Label]
    problems: list[LabelProblem]

    def __post_init__(self) -> None:
        self.by_key = {label.key: label for label in self.labels}

    def lookup(self, series_id: str, study_id: str, patient_id: str) -> Label | None:
        """The most specific label for a series: its own, else its study's, else its patient's."""
        for key in (series_id, study_id, patient_id):
            if key in self.by_key:
                return self.by_key[key]
        return None

    def split_for(self, patient_id: str) -> str | None:
        """The split assigned to a patient, whichever row labels its series."""
        label = self.by_key.get(patient_id)
        return label.split if label is not None and label.level == "patient" else None


def read_labels(data: bytes, key: bytes) -> BatchLabels:
    """Parse one batch's labels.csv from its bytes as delivered (see the module docstring)."""
    text = decode_labels(data)
    if isinstance(text, LabelProblem):
        return BatchLabels([], [text])
    return parse_labels(text, key)


def decode_labels(data: bytes) -> str | LabelProblem:
    """The text of a labels.csv: UTF-8 (a BOM is dropped), or UTF-16 when it starts with its
    BOM; anything else is `labels_unreadable`, naming the row of the first bad byte."""
    wide = data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE))
    if not wide and b"\x00" in data:  # UTF-16 without its BOM, or not text at all
        return LabelProblem(
            data[: data.index(b"\x00")].count(b"\n"),
            "labels_unreadable",
            "labels.csv holds NUL bytes (UTF-16 without a byte-order mark, or not text): "
            "save it as 'CSV UTF-8'",
        )
    try:
        return data.decode("utf-16") if wide else data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        row = None if wide else data[: error.start].count(b"\n")
        return LabelProblem(
            row,
            "labels_unreadable",
            "labels.csv is neither UTF-8 nor UTF-16 with a byte-order mark: save it as "
            "'CSV UTF-8' (or 'Unicode text')",
        )


def parse_labels(text: str, key: bytes) -> BatchLabels:
    """Parse one batch's labels.csv text; keys become pseudonyms immediately."""
    text = text.removeprefix("\ufeff")  # a BOM left by a reader that decoded plain UTF-8
    delimiter = sniff_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [c.strip().lower() for c in next(reader, [])]
    if not any(header):
        return BatchLabels([], [LabelProblem(None, "labels_unreadable", "labels.csv is empty")])
    problems, readable = _header_problems([c for c in header if c])
    if not readable:
        return BatchLabels([], problems)
    try:
        rows = list(reader)
    except csv.Error:
        # One broken row (an unclosed quote runs on to the end) leaves nothing to trust.
        problem = LabelProblem(
            reader.line_num - 1,
            "labels_unreadable",
            "labels.csv is not valid CSV from this row on (an unclosed quote, or a field over "
            "128 KiB)",
        )
        return BatchLabels([], [*problems, problem])
    labels: list[Label] = []
    # A blank line is a row too: numbers stay those a spreadsheet shows (minus the header).
    for number, values in enumerate(rows, start=1):
        if not any(v.strip() for v in values):
            continue
        row = {c: v.strip() for c, v in zip(header, values, strict=False) if c}
        label = _parse_row(number, row, key)
        if isinstance(label, LabelProblem):
            problems.append(label)
            continue
        earlier = next((x for x in labels if x.key == label.key), None)
        if earlier is not None:
            problems.append(
                LabelProblem(
                    number, "labels_duplicate", f"names the same {label.level} as row {earlier.row}"
                )
            )
            continue
        labels.append(label)
    return BatchLabels(labels, problems)


def sniff_delimiter(text: str) -> str:
    """The delimiter the header line uses most, among `,`, `;` and tab (`,` when none).

    Only the header: its names never hold a delimiter, while data rows may (a quoted note,
    a decimal comma), so `csv.Sniffer` on the whole file guesses wrong more often.
    """
    header = text.splitlines()[0] if text else ""
    counts = {d: header.count(d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])  # max keeps the first of a tie
    return best if counts[best] else ","


def _header_problems(header: list[str]) -> tuple[list[LabelProblem], bool]:
    """What is wrong with the columns, and whether the rows can be read at all."""
    problems: list[LabelProblem] = []
    unknown = [c for c in header if c not in KNOWN_COLUMNS]
    if unknown:
        # Named only when they look like names: a file without a header row has data there.
        named = [c for c in unknown if COLUMN_NAME.fullmatch(c)]
        others = len(unknown) - len(named)
        hidden = f"{others} that are no names (is the header row missing?)" if others else ""
        listed = ", ".join([*sorted(named), *([hidden] if hidden else [])])
        problems.append(
            LabelProblem(
                None,
                "labels_unknown_column",
                f"unknown column(s) {listed}; known: {', '.join(sorted(KNOWN_COLUMNS))}",
            )
        )
    if "label" not in header or not any(c in header for c in KEY_COLUMNS):
        problems.append(
            LabelProblem(
                None,
                "labels_unreadable",
                "labels.csv needs a 'label' column and one of series_uid, study_uid, patient_id",
            )
        )
        return problems, False
    return problems, True


def _parse_row(number: int, row: dict[str, str], key: bytes) -> Label | LabelProblem:
    """One data row as a pseudonymised label, or why it cannot be one."""
    level = next((KEY_COLUMNS[c] for c in KEY_COLUMNS if row.get(c)), None)
    if level is None:
        return LabelProblem(number, "labels_bad_value", "row names no series")
    value = LABEL_VALUES.get(row.get("label", "").lower())
    if value is None:
        return LabelProblem(number, "labels_bad_value", "label must be 0/1 or negative/positive")
    try:
        center = _center(row)
        diameter = _number(row, "nodule_diameter_mm")
    except ValueError as error:
        return LabelProblem(number, "labels_bad_value", f"bad nodule value: {error}")
    split = row.get("split", "").lower() or None
    if split is not None and split not in SPLITS:
        return LabelProblem(number, "labels_bad_value", "split must be train, val or test")
    if split is not None and level != "patient":
        # A series- or study-level split could send one patient's series to two splits.
        return LabelProblem(
            number,
            "labels_bad_value",
            "split can only be given on a patient_id row: all series of a patient share one split",
        )
    column = next(c for c in KEY_COLUMNS if KEY_COLUMNS[c] == level)
    return Label(number, pseudonym(key, level, row[column]), level, value, center, diameter, split)


def _center(row: dict[str, str]) -> tuple[float, float, float] | None:
    x, y, z = (_number(row, c) for c in CENTER_COLUMNS)
    if x is None and y is None and z is None:
        return None
    if x is None or y is None or z is None:
        raise ValueError("nodule center needs all of nodule_x_mm, nodule_y_mm, nodule_z_mm")
    return (x, y, z)


def _number(row: dict[str, str], column: str) -> float | None:
    """A number in millimetres; `12,5` is 12.5 (a decimal comma). The message names the
    column, never the value (a value in the wrong column may be an identifier)."""
    text = row.get(column, "")
    if not text:
        return None
    if text.count(",") == 1 and "." not in text:
        text = text.replace(",", ".")
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{column} must be a number in mm") from None
