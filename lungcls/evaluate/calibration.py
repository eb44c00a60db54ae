"""Platt scaling: the model's probabilities recalibrated on validation.

Class weights and early stopping leave the network's probabilities squeezed toward the
middle; a monotone recalibration fixes the calibration without changing the ranking (AUC).
It is fitted on validation only, like the operating point, and applied unchanged to test, to
external datasets and to predictions.
"""

from __future__ import annotations

import numpy as np

from lungcls.evaluate.report import Calibration


def fit_calibration(labels: np.ndarray, scores: np.ndarray) -> Calibration:
    """p = sigmoid(slope * logit(score) + intercept), fitted on validation labels and scores."""
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(C=1.0).fit(_logit(scores).reshape(-1, 1), labels)
    return Calibration(
        method="platt",
        fitted_on="val",
        slope=float(fitted.coef_[0, 0]),
        intercept=float(fitted.intercept_[0]),
    )


def calibrate(scores: np.ndarray, calibration: Calibration) -> np.ndarray:
    """Calibrated probabilities of raw network probabilities."""
    z = calibration.slope * _logit(scores) + calibration.intercept
    return 1.0 / (1.0 + np.exp(-z))


def _logit(scores: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))
