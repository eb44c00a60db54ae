"""`labels.csv`: diagnoses for the series of one batch, pseudonymised as soon as it is read.

Columns (header required; at least one key column and `label`):

    series_uid | study_uid | patient_id    which series a row labels (the most specific wins)
    label                                  0/1, negative/positive (case-insensitive)
    nodule_x_mm, nodule_y_mm, nodule_z_mm  optional nodule center, patient coordinates (LPS)
    nodule_diameter_mm                     optional
    split                                  optional, on patient_id rows only: train, val or
                                           test; assigns the patient's split (see splits.py)

Problems never pass silently: unknown columns, bad values and rows that match no series are
reported as quarantine items, naming the row number, never the raw identifier.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from lungcls.dataset.splits import SPLITS
from lungcls.ingest.deid import pseudonym

KEY_COLUMNS = {"series_uid": "series", "study_uid": "study", "patient_id": "patient"}
CENTER_COLUMNS = ("nodule_x_mm", "nodule_y_mm", "nodule_z_mm")
KNOWN_COLUMNS = {*KEY_COLUMNS, "label", *CENTER_COLUMNS, "nodule_diameter_mm", "split"}
LABEL_VALUES = {"0": 0, "1": 1, "negative": 0, "positive": 1, "benign": 0, "malignant": 1}


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


def parse_labels(text: str, key: bytes) -> BatchLabels:
    """Parse one batch's labels.csv; keys become pseudonyms immediately."""
    reader = csv.DictReader(io.StringIO(text))
    header = [c.strip() for c in (reader.fieldnames or [])]
    if not header:
        return BatchLabels([], [LabelProblem(None, "labels_unreadable", "labels.csv is empty")])
    problems, readable = _header_problems(header)
    if not readable:
        return BatchLabels([], problems)
    labels: list[Label] = []
    for number, raw in enumerate(reader, start=1):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
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


def _header_problems(header: list[str]) -> tuple[list[LabelProblem], bool]:
    """What is wrong with the columns, and whether the rows can be read at all."""
    problems: list[LabelProblem] = []
    unknown = [c for c in header if c not in KNOWN_COLUMNS]
    if unknown:
        problems.append(
            LabelProblem(
                None,
                "labels_unknown_column",
                f"unknown column(s) {', '.join(sorted(unknown))}; known: "
                f"{', '.join(sorted(KNOWN_COLUMNS))}",
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
        diameter = float(row["nodule_diameter_mm"]) if row.get("nodule_diameter_mm") else None
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
    values = [row.get(c, "") for c in CENTER_COLUMNS]
    if not any(values):
        return None
    if not all(values):
        raise ValueError("nodule center needs all of nodule_x_mm, nodule_y_mm, nodule_z_mm")
    x, y, z = (float(v) for v in values)
    return (x, y, z)
