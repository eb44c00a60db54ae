"""Drift statistics count patients, not samples: ten slices of one patient are one unit.

A 2D dataset (IQ-OTH/NCCD: a slice per series, about ten per patient) gives every new batch
of new patients a different set of near-copies; compared slice by slice, a batch drawn from
the reference distribution itself was reported as drifted."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lungcls.config import MonitoringSettings
from lungcls.monitor.statistics import PATIENT, compare_tables, judge, per_patient

MONITORING = MonitoringSettings()
FEATURES = {
    "patch_mean_hu": ("image", "continuous"),
    "convolution_kernel": ("acquisition", "categorical"),
}


def _slices(
    rng: np.random.Generator, patients: int, per_patient: int, prefix: str, offset: float = 0.0
) -> pd.DataFrame:
    """Slices whose value is mostly their patient's (patient SD 60 HU, slice SD 10 HU)."""
    means = rng.normal(-1260.0 + offset, 60.0, patients)
    return pd.DataFrame(
        {
            PATIENT: np.repeat([f"{prefix}{i}" for i in range(patients)], per_patient),
            "patch_mean_hu": np.repeat(means, per_patient)
            + rng.normal(0, 10, patients * per_patient),
            "convolution_kernel": "B31f",
        }
    )


def _drifted(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, bool]:
    rows = judge(compare_tables(reference, current, FEATURES, MONITORING), MONITORING)
    return {row.name: row.drifted for row in rows}


def test_new_patients_from_the_same_distribution_are_not_drift() -> None:
    rng = np.random.default_rng(7)
    reference, batch = _slices(rng, 30, 10, "r"), _slices(rng, 14, 10, "b")

    per_slice = _drifted(reference.drop(columns=PATIENT), batch.drop(columns=PATIENT))
    assert per_slice["patch_mean_hu"]  # what slices as units reported: drift with none there

    rows = compare_tables(reference, batch, FEATURES, MONITORING)
    row = next(r for r in rows if r.name == "patch_mean_hu")
    assert (row.reference_n, row.current_n) == (30, 14)  # patients, not slices
    assert "one value per patient" in row.detail
    assert not any(r.drifted for r in judge(rows, MONITORING))


def test_random_patient_halves_are_rarely_drift() -> None:
    """The false alarm rate at the defaults stays near drift_alpha with patients as units."""
    rng = np.random.default_rng(11)
    alarms = sum(
        _drifted(_slices(rng, 30, 10, "r"), _slices(rng, 14, 10, "b"))["patch_mean_hu"]
        for _ in range(40)
    )
    assert alarms <= 2


def test_a_shift_of_the_patients_is_still_drift() -> None:
    rng = np.random.default_rng(7)
    reference, batch = _slices(rng, 30, 10, "r"), _slices(rng, 14, 10, "b", offset=150.0)
    assert _drifted(reference, batch)["patch_mean_hu"]


def test_categories_count_each_patient_once_and_rows_without_a_patient_alone() -> None:
    table = pd.DataFrame(
        {
            PATIENT: ["a"] * 9 + ["b", None, None],
            "convolution_kernel": ["B31f"] * 9 + ["FC52", "B31f", "B31f"],
            "patch_mean_hu": [1.0] * 8 + [np.inf, 4.0, 5.0, 6.0],
        }
    )
    kernels, merged = per_patient(table, "convolution_kernel", "categorical")
    assert merged and sorted(kernels) == ["B31f", "B31f", "B31f", "FC52"]
    means, _ = per_patient(table, "patch_mean_hu", "continuous")
    assert sorted(means) == [1.0, 4.0, 5.0, 6.0]  # a's non-finite slice left out of its mean

    one_each = pd.DataFrame({PATIENT: ["a", "b"], "patch_mean_hu": [1.0, 2.0]})
    values, merged = per_patient(one_each, "patch_mean_hu", "continuous")
    assert not merged and list(values) == [1.0, 2.0]  # 3D, a series per patient: unchanged
