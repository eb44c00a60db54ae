"""Per-feature drift between a reference sample and a new batch: a test and an effect size.

    rows = compare_tables(reference, current, features, settings.monitoring)

Every comparison is a library's: scipy for the tests and distances, scikit-learn for the
domain classifier. Each feature gets a hypothesis test (its p-value says whether the batch
could come from the reference distribution) and an effect size on a scale one threshold
fits (`monitoring.max_drift`):

- categorical (manufacturer, kernel, kVp): chi-squared test of the reference-vs-batch
  contingency table; effect: population stability index, PSI = sum (c - r) ln(c / r) over
  the categories' shares (`scipy.special.rel_entr` both ways), shares floored at 1e-4 so
  that a category one side lacks counts (heavily) instead of dividing by zero;
- continuous (slice thickness, spacing, HU statistics, scores): two-sample Kolmogorov-
  Smirnov test; effect: Wasserstein distance divided by the reference's standard deviation
  (Evidently's "normed Wasserstein"), the SD floored at 1 % of the reference's mean
  magnitude and at 0.001, so that a constant reference (every training scan 2.5 mm thick)
  still gives a finite number and any real change of it a large one;
- embeddings (penultimate layer): a domain classifier, logistic regression telling
  reference from batch, scored out of fold (stratified 5-fold); effect 2 (AUC - 0.5), 0
  when it cannot tell them apart (an AUC below 0.5 is noise, not drift); p-value: the
  one-sided Mann-Whitney test of the batch's out-of-fold scores against the reference's
  (AUC = U / (n m)), an approximation that avoids the hundreds of refits of a permutation
  test.

Samples of one patient are not independent (a 2D dataset has a slice per series and about
ten series per patient; a 3D one may have a patch per nodule): tested one per sample, ten
near-copies of each patient make every new set of patients look drifted (on IQ-OTH/NCCD, a
random third of one dataset version's patients against the rest was "drifted" in 76 of 100
draws at the defaults, in 0 of 100 per patient). So a table with a `patient_id` column is
compared one value per patient: the mean of a continuous feature over the patient's
samples, each categorical value a patient has once; the counts are then patients, and the
row's detail says so. Scores and embeddings come without patients and are still compared
per sample.

A feature is *drifted* when its effect exceeds `max_drift` and its p-value, adjusted over
the report's features (Benjamini-Hochberg, `scipy.stats.false_discovery_control`), is below
`drift_alpha`: in a batch of 40 the effects of a batch drawn from the training distribution
itself reach 0.1-0.25 by chance, which the test screens out, while in a batch of thousands
a significant but negligible change is kept out by the effect. A feature with fewer than
`min_values` values on either side is not estimable: its row says so with the counts, and
carries no number.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field
from scipy import stats
from scipy.special import rel_entr

from lungcls.config import MonitoringSettings
from lungcls.errors import LungclsError
from lungcls.io.records import Part

FeatureKind = Literal["categorical", "continuous", "embedding"]
FeatureGroup = Literal["acquisition", "image", "model"]

PSI_FLOOR = 1e-4  # the share a category absent on one side is given (Evidently's too)
SPREAD_FLOOR = 1e-3  # Evidently's floor of the reference SD
RELATIVE_SPREAD_FLOOR = 0.01  # of the reference's mean magnitude
MISSING = "(missing)"  # a categorical value the series does not carry
CATEGORIES_SHOWN = 4
DOMAIN_FOLDS = 5
PATIENT = "patient_id"  # optional column of a table: the unit whose samples are not independent
PER_PATIENT = {  # what a row's detail adds when some patient's samples were merged
    "continuous": "one value per patient (the mean of its samples): n counts patients",
    "categorical": "each patient counted once per value it has",
}

TESTS: dict[FeatureKind, tuple[str, str]] = {  # kind -> (test, effect)
    "categorical": ("chi-squared", "PSI"),
    "continuous": ("Kolmogorov-Smirnov", "Wasserstein / reference SD"),
    "embedding": ("domain classifier AUC, Mann-Whitney", "2·(AUC − 0.5)"),
}


class DriftError(LungclsError):
    """The inputs of a drift report do not fit together; the message says how."""

    code = "drift_inputs"


class FeatureDrift(Part):
    """One feature of a drift report. `statistic`, `p_value`, `p_adjusted` and `effect` are
    None when the feature is not estimable (too few values on a side: see `detail`)."""

    name: str
    group: FeatureGroup
    kind: FeatureKind
    test: str
    statistic: float | None  # chi-squared, KS D, or the domain classifier's AUC
    p_value: float | None
    p_adjusted: float | None = None  # Benjamini-Hochberg over the report's features
    effect_name: str
    effect: float | None
    drifted: bool = False
    reference_n: int
    current_n: int
    detail: str
    new_categories: list[str] = Field(default_factory=list)  # categorical: none in the reference

    @property
    def estimable(self) -> bool:
        return self.effect is not None


def _not_estimable(
    name: str, group: FeatureGroup, kind: FeatureKind, n_ref: int, n_cur: int, least: int
) -> FeatureDrift:
    test, effect_name = TESTS[kind]
    return FeatureDrift(
        name=name,
        group=group,
        kind=kind,
        test=test,
        statistic=None,
        p_value=None,
        effect_name=effect_name,
        effect=None,
        reference_n=n_ref,
        current_n=n_cur,
        detail=f"not estimable: {n_cur} values in the batch, {n_ref} in the reference "
        f"(needs {least} on each side)",
    )


def _category(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return MISSING
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"  # kVp 120.0 -> "120"
    return str(value).strip() or MISSING


def _shares(counts: Counter[str], total: int) -> str:
    top = counts.most_common(CATEGORIES_SHOWN)
    text = ", ".join(f"{name} {count / total:.0%}" for name, count in top)
    more = len(counts) - len(top)
    return text + (f", … {more} more" if more > 0 else "")


def compare_categorical(
    name: str,
    group: FeatureGroup,
    reference: Iterable[object],
    current: Iterable[object],
    least: int,
) -> FeatureDrift:
    """Chi-squared test and PSI of one categorical feature (missing values are a category:
    a batch whose series lack a kernel the training series had differs from them)."""
    ref = Counter(_category(v) for v in reference)
    cur = Counter(_category(v) for v in current)
    n_ref, n_cur = sum(ref.values()), sum(cur.values())
    if min(n_ref, n_cur) < least:
        return _not_estimable(name, group, "categorical", n_ref, n_cur, least)
    categories = sorted(set(ref) | set(cur))
    table = np.array([[ref[c] for c in categories], [cur[c] for c in categories]])
    if len(categories) == 1:
        statistic, p_value = 0.0, 1.0  # one value on both sides: nothing differs
    else:
        result = stats.chi2_contingency(table)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    r = np.maximum(table[0] / n_ref, PSI_FLOOR)
    c = np.maximum(table[1] / n_cur, PSI_FLOOR)
    psi = float(np.sum(rel_entr(c, r) + rel_entr(r, c)))
    new = sorted(set(cur) - set(ref))
    detail = f"reference: {_shares(ref, n_ref)}; batch: {_shares(cur, n_cur)}"
    if new:
        detail += f"; new in the batch: {', '.join(new[:CATEGORIES_SHOWN])}"
    test, effect_name = TESTS["categorical"]
    return FeatureDrift(
        name=name,
        group=group,
        kind="categorical",
        test=test,
        statistic=statistic,
        p_value=p_value,
        effect_name=effect_name,
        effect=psi,
        reference_n=n_ref,
        current_n=n_cur,
        detail=detail,
        new_categories=new,
    )


def reference_spread(reference: np.ndarray) -> float:
    """What a Wasserstein distance is divided by: the reference's SD, floored (module doc)."""
    floor = max(RELATIVE_SPREAD_FLOOR * abs(float(np.mean(reference))), SPREAD_FLOOR)
    return max(float(np.std(reference)), floor)


def _finite(values: Iterable[object]) -> np.ndarray:
    array = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce")
    array = array.to_numpy(dtype=np.float64)
    return array[np.isfinite(array)]


def compare_continuous(
    name: str,
    group: FeatureGroup,
    reference: Iterable[object],
    current: Iterable[object],
    least: int,
) -> FeatureDrift:
    """Kolmogorov-Smirnov test and normed Wasserstein distance of one continuous feature
    (missing and non-finite values left out, and out of the counts)."""
    ref, cur = _finite(reference), _finite(current)
    if min(ref.size, cur.size) < least:
        return _not_estimable(name, group, "continuous", ref.size, cur.size, least)
    ks = stats.ks_2samp(ref, cur)
    spread = reference_spread(ref)
    distance = float(stats.wasserstein_distance(ref, cur))
    q_ref, q_cur = np.percentile(ref, [25, 50, 75]), np.percentile(cur, [25, 50, 75])
    detail = (
        f"median {q_ref[1]:.4g} → {q_cur[1]:.4g} (IQR {q_ref[0]:.4g}–{q_ref[2]:.4g} → "
        f"{q_cur[0]:.4g}–{q_cur[2]:.4g}); Wasserstein {distance:.4g} over SD {spread:.4g}"
    )
    test, effect_name = TESTS["continuous"]
    return FeatureDrift(
        name=name,
        group=group,
        kind="continuous",
        test=test,
        statistic=float(ks.statistic),
        p_value=float(ks.pvalue),
        effect_name=effect_name,
        effect=distance / spread,
        reference_n=int(ref.size),
        current_n=int(cur.size),
        detail=detail,
    )


def compare_embeddings(
    name: str,
    reference: np.ndarray,
    current: np.ndarray,
    least: int,
    seed: int = 0,
) -> FeatureDrift:
    """A domain classifier on two sets of embeddings (rows: samples); rows with a non-finite
    value are left out."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    ref, cur = np.asarray(reference, dtype=np.float64), np.asarray(current, dtype=np.float64)
    if ref.ndim != 2 or cur.ndim != 2 or ref.shape[1] != cur.shape[1]:
        raise DriftError(
            f"embeddings {name!r}: expected two tables (samples x dimensions) of the same "
            f"width, got shapes {ref.shape} and {cur.shape}"
        )
    ref, cur = ref[np.isfinite(ref).all(axis=1)], cur[np.isfinite(cur).all(axis=1)]
    n_ref, n_cur = len(ref), len(cur)
    if min(n_ref, n_cur) < least:
        return _not_estimable(name, "model", "embedding", n_ref, n_cur, least)
    x = np.vstack([ref, cur])
    y = np.r_[np.zeros(n_ref, dtype=int), np.ones(n_cur, dtype=int)]
    folds = min(DOMAIN_FOLDS, n_ref, n_cur)
    classifier = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=1000, class_weight="balanced")
    )
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(classifier, x, y, cv=cv, method="predict_proba")[:, 1]
    auc = float(roc_auc_score(y, scores))
    p_value = float(
        stats.mannwhitneyu(scores[y == 1], scores[y == 0], alternative="greater").pvalue
    )
    test, effect_name = TESTS["embedding"]
    return FeatureDrift(
        name=name,
        group="model",
        kind="embedding",
        test=test,
        statistic=auc,
        p_value=p_value,
        effect_name=effect_name,
        effect=max(0.0, 2.0 * (auc - 0.5)),
        reference_n=n_ref,
        current_n=n_cur,
        detail=f"out-of-fold AUC {auc:.3f} of a logistic regression on {x.shape[1]} "
        f"dimensions, {folds}-fold (0.5: indistinguishable)",
    )


def compare_tables(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: Mapping[str, tuple[FeatureGroup, FeatureKind]],
    monitoring: MonitoringSettings,
) -> list[FeatureDrift]:
    """One row per feature (a column of both tables, one row per series or sample), in the
    order of `features`; a feature neither table has a column for is left out. Not yet
    judged: `judge` adjusts the p-values over all of a report's rows and marks drift."""
    rows = []
    for name, (group, kind) in features.items():
        if name not in reference.columns and name not in current.columns:
            continue
        ref, ref_merged = per_patient(reference, name, kind)
        cur, cur_merged = per_patient(current, name, kind)
        compare = compare_categorical if kind == "categorical" else compare_continuous
        row = compare(name, group, ref, cur, monitoring.min_values)
        if ref_merged or cur_merged:
            row.detail += f"; {PER_PATIENT[kind]}"
        rows.append(row)
    return rows


def per_patient(table: pd.DataFrame, name: str, kind: FeatureKind) -> tuple[pd.Series, bool]:
    """The values of column `name` to compare, and whether some patient's samples were
    merged: one per patient when the table has a `patient_id` column (module doc), else
    one per row. A row without a patient is a unit of its own."""
    if name not in table.columns:
        return pd.Series(dtype=object), False
    values = table[name].reset_index(drop=True)
    if PATIENT not in table.columns:
        return values, False
    patients = table[PATIENT].astype(object).reset_index(drop=True)
    missing = patients.isna()
    patients[missing] = [f"\0row {i}" for i in np.flatnonzero(missing.to_numpy())]
    if not patients.duplicated().any():
        return values, False
    if kind == "categorical":
        pairs = pd.DataFrame({"patient": patients, "value": values.map(_category)})
        return pairs.drop_duplicates()["value"], True
    numeric = pd.to_numeric(values, errors="coerce").astype(np.float64)
    numeric = numeric.where(np.isfinite(numeric))
    return numeric.groupby(patients.to_numpy(), sort=False).mean(), True


def judge(rows: Sequence[FeatureDrift], monitoring: MonitoringSettings) -> list[FeatureDrift]:
    """The rows with Benjamini-Hochberg adjusted p-values, and drift marked where the effect
    exceeds `max_drift` and the adjusted p-value is below `drift_alpha`."""
    judged = [row.model_copy() for row in rows]
    tested = [i for i, row in enumerate(rows) if row.p_value is not None]
    if not tested:
        return judged
    adjusted = stats.false_discovery_control([rows[i].p_value for i in tested], method="bh")
    for i, p in zip(tested, adjusted, strict=True):
        row = judged[i]
        row.p_adjusted = float(p)
        row.drifted = bool(
            row.effect is not None
            and row.effect > monitoring.max_drift
            and row.p_adjusted < monitoring.drift_alpha
        )
    return judged
