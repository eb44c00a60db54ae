"""What a drift report compares: features of each series, and of each preprocessed sample.

Acquisition, from the series store's metadata (what ingest read from the DICOM headers):
manufacturer, model, convolution kernel and tube voltage are categorical (a scanner offers
a handful of each); slice thickness, slice step and pixel spacing are continuous.

Image, from the tensor the model is given (`image_statistics`): the patch's HU percentiles,
mean and SD, the share of it that is lung, the lung's median HU and its noise. Reference
tensors are read from the dataset version's shards; a new batch's are made by the same
preprocessing (the version's own settings), so both sides are measured alike.

None of these is an identifier, a UID or a date: a drift report holds feature names,
counts and statistics only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from lungcls.monitor.statistics import FeatureGroup, FeatureKind

ACQUISITION_FEATURES: dict[str, tuple[FeatureGroup, FeatureKind]] = {
    "manufacturer": ("acquisition", "categorical"),
    "manufacturer_model": ("acquisition", "categorical"),
    "convolution_kernel": ("acquisition", "categorical"),
    "kvp": ("acquisition", "categorical"),
    "slice_thickness_mm": ("acquisition", "continuous"),
    "slice_spacing_mm": ("acquisition", "continuous"),
    "pixel_spacing_mm": ("acquisition", "continuous"),
}
IMAGE_FEATURES: dict[str, tuple[FeatureGroup, FeatureKind]] = {
    name: ("image", "continuous")
    for name in (
        "patch_hu_p05",
        "patch_hu_p25",
        "patch_hu_p50",
        "patch_hu_p75",
        "patch_hu_p95",
        "patch_mean_hu",
        "patch_sd_hu",
        "lung_fraction",
        "lung_hu_p50",
        "lung_noise_hu",
    )
}
SCORE_FEATURE = "model_score"  # the model's probability of cancer
EMBEDDING_FEATURE = "penultimate_embedding"

# Aerated lung: above -950 HU (emphysema's threshold, and above the air outside the body)
# and below -400 HU (the threshold preprocessing finds the lungs with).
LUNG_HU = (-950.0, -400.0)
MIN_LUNG_VOXELS = 100  # fewer: the lung statistics of the patch are missing (not a number)


def acquisition_table(series: pd.DataFrame) -> pd.DataFrame:
    """The acquisition features of series, with their `series_id` to select by and their
    `patient_id` (the statistics' unit), from the series store's metadata as the contracts
    see it (`lungcls.dataset.validation.series_frame`: spacing flattened into
    `spacing_z_mm`, `spacing_y_mm`, …)."""
    return pd.DataFrame(
        {
            "series_id": series["series_id"].to_numpy(),
            # Compared one value per patient (`lungcls.monitor.statistics`), never reported.
            "patient_id": series["patient_id"].to_numpy(),
            "manufacturer": series["manufacturer"].to_numpy(),
            "manufacturer_model": series["manufacturer_model"].to_numpy(),
            "convolution_kernel": series["convolution_kernel"].to_numpy(),
            "kvp": series["kvp"].to_numpy(),
            "slice_thickness_mm": series["slice_thickness_mm"].to_numpy(),
            "slice_spacing_mm": series["spacing_z_mm"].to_numpy(),
            # Row spacing: the series contract admits square pixels only.
            "pixel_spacing_mm": series["spacing_y_mm"].to_numpy(),
        }
    )


def image_statistics(
    tensor: np.ndarray, windows: Sequence[tuple[float, float]]
) -> dict[str, float]:
    """The image features of one preprocessed sample (see `lungcls.dataset.preprocess`).

    HU are recovered from the widest window's channel (HU = low + value x width): exact
    inside the window, and the window's ends where preprocessing clipped, on both sides of
    a comparison alike. Lung noise is the SD of the differences of neighbouring lung voxels
    along rows, over sqrt(2): the texture of the lung cancels out, the noise does not.

    Args:
        tensor: The model input, channels first: (channels, z, y, x) in 3D, (channels x
            slices, y, x) in 2D, one channel (block) per window, in the order of `windows`.
        windows: The (center, width) HU windows the tensor was made with.
    """
    values = np.asarray(tensor, dtype=np.float32)
    widest = int(np.argmax([width for _, width in windows]))
    center, width = windows[widest]
    low = center - width / 2.0
    hu = low + values.reshape(len(windows), -1, values.shape[-1])[widest] * width
    quantiles = (5, 25, 50, 75, 95)
    percentiles = np.percentile(hu, quantiles)
    lung = (hu > LUNG_HU[0]) & (hu < LUNG_HU[1])
    neighbours = lung[:, 1:] & lung[:, :-1]
    enough = int(lung.sum()) >= MIN_LUNG_VOXELS and int(neighbours.sum()) >= MIN_LUNG_VOXELS
    differences = (hu[:, 1:] - hu[:, :-1])[neighbours]
    return {
        **{f"patch_hu_p{q:02d}": float(v) for q, v in zip(quantiles, percentiles, strict=True)},
        "patch_mean_hu": float(hu.mean()),
        "patch_sd_hu": float(hu.std()),
        "lung_fraction": float(lung.mean()),
        "lung_hu_p50": float(np.median(hu[lung])) if enough else math.nan,
        "lung_noise_hu": float(differences.std() / math.sqrt(2)) if enough else math.nan,
    }
