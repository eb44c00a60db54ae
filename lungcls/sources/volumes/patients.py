"""Pseudonymous patients, patient-level splits and the batch's labels.csv.

A source patient ID never leaves the import: its volumes carry `vol-<keyed hash>` as
PatientID (HMAC-SHA256 under the root's pseudonym key, so nobody without the key can link
it back, and the same source patient gets the same pseudonym in every batch: its volumes
stay one patient, in one split).
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
from collections import Counter
from dataclasses import dataclass

from lungcls.dataset.manifest import SplitCounts
from lungcls.dataset.splits import SPLITS
from lungcls.sources.volumes.options import VolumeImportOptions
from lungcls.sources.volumes.report import ImportedVolume

LABEL_COLUMNS = [
    "series_uid",
    "patient_id",
    "label",
    "nodule_x_mm",
    "nodule_y_mm",
    "nodule_z_mm",
    "nodule_diameter_mm",
    "split",
]


def patient_pseudonym(key: bytes, patient_id: str) -> str:
    """The PatientID a source patient's volumes carry."""
    message = f"lungcls import-volumes patient:{patient_id.strip()}".encode()
    return "vol-" + hmac.new(key, message, hashlib.sha256).hexdigest()[:24]


@dataclass
class Patient:
    """One pseudonymous patient: its label (positive when any volume is), the split its
    rows give, and the split assigned."""

    pseudonym: str
    label: int
    given_split: str | None
    split: str | None = None


def assign_splits(patients: list[Patient], options: VolumeImportOptions) -> None:
    """A split for each patient: the one its rows give; else `options.split`; else, with
    fractions, `test_fraction` and `val_fraction` of each label's patients (in the order of
    their keyed pseudonyms: a fixed, unguessable shuffle), the rest train; else none."""
    for patient in patients:
        patient.split = patient.given_split or options.split
    if not (options.test_fraction or options.val_fraction):
        return
    for label in (0, 1):
        # Stratified by label: a small positive class still has test and val patients.
        free = sorted(
            (p for p in patients if p.split is None and p.label == label),
            key=lambda p: p.pseudonym,
        )
        n_test = _share(options.test_fraction, len(free))
        n_val = _share(options.val_fraction, len(free) - n_test)
        for position, patient in enumerate(free):
            if position < n_test:
                patient.split = "test"
            elif position < n_test + n_val:
                patient.split = "val"
            else:
                patient.split = "train"


def _share(fraction: float, count: int) -> int:
    """round(fraction * count), but at least one of two or more when the fraction is > 0."""
    share = round(fraction * count)
    return 1 if fraction > 0 and share == 0 and count > 1 else share


def labels_csv(series: list[ImportedVolume], patients: list[Patient]) -> str:
    """A series row per volume (label, nodule center in LPS mm, diameter) and a patient row
    per patient with an assigned split (splits are patient-level in lungcls; its label only
    applies to a series without a row of its own, and every series has one)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS)
    for item in sorted(series, key=lambda s: (s.patient, s.series_uid)):
        center = [f"{v:.4f}" for v in item.nodule_center_xyz_mm]
        diameter = "" if item.nodule_diameter_mm is None else f"{item.nodule_diameter_mm:g}"
        writer.writerow([item.series_uid, "", item.label, *center, diameter, ""])
    for patient in sorted(patients, key=lambda p: p.pseudonym):
        if patient.split is not None:
            writer.writerow(["", patient.pseudonym, patient.label, "", "", "", "", patient.split])
    return buffer.getvalue()


def split_counts(series: list[ImportedVolume]) -> SplitCounts:
    """Volumes by assigned split and label (`unassigned`: the pipeline's keyed hash decides);
    empty when no split was assigned."""
    if not any(item.split for item in series):
        return {}
    counts: dict[str, Counter[str]] = {s: Counter() for s in (*SPLITS, "unassigned")}
    for item in series:
        counts[item.split or "unassigned"][str(item.label)] += 1
    return {s: {"0": c["0"], "1": c["1"]} for s, c in counts.items() if c or s in SPLITS}
