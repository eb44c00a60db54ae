"""Patient-level splits: stable across dataset versions, never leaking between splits.

By default a patient's split comes from a keyed hash of its pseudonym and nothing else, so
adding batches never moves a patient, and all series of one patient share one split.

A `labels.csv` may instead assign a patient's split (its `split` column, on patient rows):
for data whose patients are not independent draws, e.g. image sets without patient IDs
where only contiguous case-number ranges are safe to hold out (`lungcls import-images
--test-fraction`). An assignment is part of the series store like a label, so it is just as
stable; patients without one keep the hashed split.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

SPLITS = ("train", "val", "test")


class SplitConflict(ValueError):
    """One patient was assigned two different splits."""


def patient_split(patient_id: str, key: bytes, fractions: tuple[float, float, float]) -> str:
    """`train`, `val` or `test` for one patient pseudonym."""
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions {fractions} must be non-negative and sum to 1")
    digest = hmac.new(key, f"split:{patient_id}".encode(), hashlib.sha256).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    cumulative = 0.0
    for name, fraction in zip(SPLITS, fractions, strict=True):
        cumulative += fraction
        if position < cumulative:
            return name
    return SPLITS[-1]


def patient_splits(
    series: Iterable[tuple[str, str | None]],
    key: bytes,
    fractions: tuple[float, float, float],
) -> dict[str, str]:
    """The split of every patient of `(patient pseudonym, assigned split or None)` pairs.

    An assigned split wins for all of the patient's series (a batch delivered later without
    one does not move the patient); the others get `patient_split`.

    Raises:
        SplitConflict: a patient's series carry two different assigned splits.
    """
    assigned: dict[str, str] = {}
    patients: set[str] = set()
    for patient, split in series:
        patients.add(patient)
        if split is None:
            continue
        if assigned.setdefault(patient, split) != split:
            raise SplitConflict(
                f"patient {patient} is assigned both {assigned[patient]!r} and {split!r} in "
                "labels.csv: a patient's series must share one split; fix the labels.csv rows"
            )
    return {p: assigned.get(p) or patient_split(p, key, fractions) for p in sorted(patients)}
