"""Drift statistics on tables built here: the same distribution is not drift, a shifted one
is (with its effect named), and too few values are not estimable."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lungcls.config import MonitoringSettings, load_settings
from lungcls.dataset.manifest import DatasetRef
from lungcls.monitor.features import ACQUISITION_FEATURES, IMAGE_FEATURES, image_statistics
from lungcls.monitor.report import (
    DriftCounts,
    DriftReport,
    DriftTables,
    ModelScores,
    build_drift_report,
)
from lungcls.monitor.statistics import (
    DriftError,
    compare_categorical,
    compare_continuous,
    compare_embeddings,
    reference_spread,
)

MONITORING = MonitoringSettings()
SCANNERS = ["SIEMENS", "GE MEDICAL SYSTEMS", "Philips", "TOSHIBA"]


def _series(rng: np.random.Generator, n: int, shifted: bool = False) -> pd.DataFrame:
    maker = ["Canon Medical Systems"] * n if shifted else list(rng.choice(SCANNERS, n))
    return pd.DataFrame(
        {
            "manufacturer": maker,
            "convolution_kernel": ["FC52" if shifted else "B31f"] * n,
            "kvp": [135.0 if shifted else 120.0] * n,
            "slice_thickness_mm": [5.0 if shifted else 2.5] * n,
            "pixel_spacing_mm": rng.normal(0.7, 0.05, n),
        }
    )


def _samples(rng: np.random.Generator, n: int, offset: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "lung_hu_p50": rng.normal(-850 + offset, 25, n),
            "patch_mean_hu": rng.normal(-500 + offset, 120, n),
        }
    )


def _report(reference: tuple, current: tuple, **extra: object) -> DriftReport:
    tables = DriftTables(
        reference_series=reference[0],
        current_series=current[0],
        reference_samples=reference[1],
        current_samples=current[1],
        counts=DriftCounts(
            reference_series=len(reference[0]),
            reference_samples=len(reference[1]),
            current_series=len(current[0]),
            current_samples=len(current[1]),
        ),
    )
    ref = DatasetRef(name="lung-nodules", version=3)
    return build_drift_report(tables, MONITORING, batch="batch-0a1b", reference=ref, **extra)


def test_the_same_distribution_is_not_drift() -> None:
    rng = np.random.default_rng(0)
    report = _report((_series(rng, 100), _samples(rng, 100)), (_series(rng, 40), _samples(rng, 40)))
    assert not report.drifted and report.drifted_features == []
    assert {f.name for f in report.features} == {
        "manufacturer",
        "convolution_kernel",
        "kvp",
        "slice_thickness_mm",
        "pixel_spacing_mm",
        "lung_hu_p50",
        "patch_mean_hu",
    }
    assert all(f.estimable and f.p_adjusted is not None for f in report.features)
    assert "no drift" in report.verdict()


def test_a_shifted_acquisition_is_flagged_with_its_effect_sizes() -> None:
    rng = np.random.default_rng(1)
    report = _report(
        (_series(rng, 100), _samples(rng, 100)),
        (_series(rng, 40, shifted=True), _samples(rng, 40, offset=60.0)),
    )
    drifted = {f.name: f for f in report.drifted_features}
    assert set(drifted) == {
        "manufacturer",
        "convolution_kernel",
        "kvp",
        "slice_thickness_mm",
        "lung_hu_p50",
        "patch_mean_hu",
    }
    assert "pixel_spacing_mm" not in drifted  # drawn alike on both sides
    assert drifted["manufacturer"].effect_name == "PSI"
    assert drifted["manufacturer"].effect > 5  # an unseen maker: floored shares, large PSI
    assert "new in the batch: Canon Medical Systems" in drifted["manufacturer"].detail
    # Constant reference (every scan 2.5 mm): finite, and large.
    assert drifted["slice_thickness_mm"].effect == pytest.approx(2.5 / 0.025)
    assert drifted["lung_hu_p50"].effect == pytest.approx(60 / 25, rel=0.3)
    assert drifted["patch_mean_hu"].effect > MONITORING.max_drift  # 0.5 SD, and noisy at 40
    verdict = report.verdict()
    assert "manufacturer (PSI" in verdict and "slice_thickness_mm (Wasserstein" in verdict
    assert not {f.name for f in report.features} - {*ACQUISITION_FEATURES, *IMAGE_FEATURES}


def test_too_few_values_are_not_estimable_with_their_counts() -> None:
    rng = np.random.default_rng(2)
    tiny = _series(rng, 3, shifted=True)
    tiny.loc[0, "pixel_spacing_mm"] = np.nan
    report = _report((_series(rng, 100), _samples(rng, 100)), (tiny, _samples(rng, 4, 500.0)))
    assert not report.drifted  # however different: nothing can be said about 3 series
    for feature in report.features:
        assert not feature.estimable and not feature.drifted
        assert feature.statistic is None and feature.p_value is None
        assert "not estimable" in feature.detail and "(needs 5 on each side)" in feature.detail
    spacing = next(f for f in report.features if f.name == "pixel_spacing_mm")
    assert (spacing.reference_n, spacing.current_n) == (100, 2)  # the NaN is not a value
    assert "not estimable: 2 values in the batch, 100 in the reference" in spacing.detail
    saved = DriftReport.from_json(report.to_json())
    assert saved == report and saved.features[0].effect is None


def test_categorical_test_and_psi() -> None:
    same = compare_categorical("kvp", "acquisition", [120.0] * 20, [120.0] * 10, 5)
    assert (same.statistic, same.p_value, same.effect) == (0.0, 1.0, 0.0)
    missing = compare_categorical("kernel", "acquisition", ["B31f"] * 20, [None] * 10, 5)
    assert "(missing) 100%" in missing.detail and missing.p_value < 1e-4
    half = compare_categorical("m", "acquisition", ["a"] * 50 + ["b"] * 50, ["a"] * 10, 5)
    # PSI = (1 - 0.5) ln 2 + (1e-4 - 0.5) ln(1e-4 / 0.5)
    assert half.effect == pytest.approx(0.5 * np.log(2) + (1e-4 - 0.5) * np.log(1e-4 / 0.5))


def test_wasserstein_is_in_reference_standard_deviations() -> None:
    rng = np.random.default_rng(3)
    reference = rng.normal(0.0, 10.0, 2000)
    shifted = compare_continuous("x", "image", reference, reference + 5.0, 5)
    assert shifted.effect == pytest.approx(5.0 / reference.std())
    assert shifted.statistic > 0.15 and shifted.p_value < 1e-10
    assert reference_spread(np.full(10, 2.5)) == pytest.approx(0.025)
    assert reference_spread(np.zeros(10)) == pytest.approx(1e-3)


def test_domain_classifier_auc_on_embeddings() -> None:
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(80, 16))
    alike = compare_embeddings("e", reference, rng.normal(size=(40, 16)), 5)
    apart = compare_embeddings("e", reference, rng.normal(size=(40, 16)) + 1.0, 5)
    assert alike.effect < 0.3 and alike.p_value > 0.01
    assert apart.statistic > 0.95 and apart.effect > 0.9 and apart.p_value < 1e-6
    few = compare_embeddings("e", reference, rng.normal(size=(3, 16)), 5)
    assert not few.estimable and few.current_n == 3
    with pytest.raises(DriftError, match="same width"):
        compare_embeddings("e", reference, rng.normal(size=(40, 8)), 5)


def test_scores_and_embeddings_join_the_report() -> None:
    rng = np.random.default_rng(5)
    series, samples = _series(rng, 60), _samples(rng, 60)
    report = _report(
        (series, samples),
        (series, samples),
        scores=ModelScores(rng.uniform(0, 1, 60), rng.uniform(0.5, 1, 30)),
        embeddings=(rng.normal(size=(60, 8)), rng.normal(size=(30, 8)) + 2.0),
    )
    drifted = {f.name: f for f in report.drifted_features}
    assert set(drifted) == {"model_score", "penultimate_embedding"}
    assert drifted["penultimate_embedding"].effect_name == "2·(AUC − 0.5)"
    assert all(f.group == "model" for f in drifted.values())
    assert "one value per patient" in drifted["model_score"].detail


def test_image_statistics_read_hu_back_from_the_window() -> None:
    windows = [(-600.0, 1500.0)]  # HU -1350..150 -> 0..1
    hu = np.full((1, 8, 16, 16), -850.0)
    hu[0, :, :, 8:] = 40.0  # half lung, half soft tissue
    rng = np.random.default_rng(6)
    hu[0, :, :, :8] += rng.normal(0, 20, (8, 16, 8))
    tensor = ((hu + 1350.0) / 1500.0).astype(np.float16)
    stats = image_statistics(tensor, windows)
    assert stats["lung_fraction"] == pytest.approx(0.5)
    assert stats["lung_hu_p50"] == pytest.approx(-850, abs=3)
    assert stats["lung_noise_hu"] == pytest.approx(20, rel=0.15)
    assert stats["patch_hu_p95"] == pytest.approx(40, abs=1)
    # Two windows: the widest one is read, wherever it is.
    both = np.concatenate([np.clip((hu - 20) / 400 + 0.5, 0, 1), tensor], axis=0)
    assert image_statistics(both, [(40.0, 400.0), *windows]) == pytest.approx(stats, abs=0.5)


def test_thresholds_come_from_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("LUNGCLS_MONITORING__MAX_DRIFT", "50")
    settings = load_settings(None, root=str(tmp_path))
    assert settings.monitoring.max_drift == 50 and settings.monitoring.drift_alpha == 0.01
    rng = np.random.default_rng(1)
    tables = DriftTables(
        reference_series=_series(rng, 100),
        current_series=_series(rng, 40, shifted=True),
        reference_samples=_samples(rng, 100),
        current_samples=_samples(rng, 40, offset=60.0),
        counts=DriftCounts(
            reference_series=100, reference_samples=100, current_series=40, current_samples=40
        ),
    )
    ref = DatasetRef(name="lung-nodules", version=3)
    report = build_drift_report(tables, settings.monitoring, batch="batch-0a1b", reference=ref)
    # Only the 2.5 -> 5 mm slices (100 reference SDs) exceed an effect of 50.
    assert [f.name for f in report.drifted_features] == ["slice_thickness_mm"]
    assert report.thresholds.max_drift == 50
