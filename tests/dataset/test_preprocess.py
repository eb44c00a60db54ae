"""Preprocessing: geometry round trips, patch sampling, windows, centering."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage

from lungcls.config import PreprocessSettings
from lungcls.dataset.preprocess import (
    apply_windows,
    config_hash,
    lung_center_mm,
    mm_to_voxel,
    preprocess_series,
    sample_patch,
    tensor_shape,
    voxel_to_mm,
)

AXIAL = (1, 0, 0, 0, 1, 0)
CORONAL = (1, 0, 0, 0, 0, -1)
OBLIQUE = (0.96, 0.28, 0.0, -0.28, 0.96, 0.0)  # rows turned 16° in the axial plane


@dataclass(frozen=True)
class Geometry:
    """A `SeriesGeometry` by hand (the store's `SeriesRecord` is one, so is a `CTVolume`)."""

    origin_xyz_mm: tuple[float, ...]
    orientation: tuple[float, ...]
    spacing_zyx_mm: tuple[float, ...]
    nodule_center_xyz_mm: tuple[float, ...] | None = None


@pytest.mark.parametrize("orientation", [AXIAL, CORONAL])
def test_voxel_mm_round_trip(orientation) -> None:
    origin, spacing = (-100.0, 50.0, 20.0), (2.5, 0.7, 0.8)
    kji = np.array([3.0, 10.5, 7.25])
    xyz = voxel_to_mm(kji, origin, orientation, spacing)
    assert np.allclose(mm_to_voxel(xyz, origin, orientation, spacing), kji)


def test_patch_is_centered_resampled_and_padded_with_air() -> None:
    volume = np.full((20, 40, 40), -800, dtype=np.int16)
    volume[10, 20, 30] = 1000  # a bright voxel at a known place
    origin, spacing = (0.0, 0.0, 0.0), (2.0, 1.0, 1.0)
    center = voxel_to_mm((10, 20, 30), origin, AXIAL, spacing)  # (30, 20, 20) mm
    patch = sample_patch(volume, origin, AXIAL, spacing, center, (5, 9, 9), (1.0, 1.0, 1.0))
    assert patch.shape == (5, 9, 9) and patch.dtype == np.float32
    assert patch[2, 4, 4] == 1000  # the center voxel lands on the center of the patch
    assert patch[2, 4, 3] == -800
    assert patch[1, 4, 4] == pytest.approx((1000 - 800) / 2)  # trilinear between slices
    # a patch hanging over the edge of the scan is padded with air, not smeared
    edge = sample_patch(volume, origin, AXIAL, spacing, (39.0, 20.0, 20.0), (1, 1, 9), (1, 1, 1))
    assert (edge[0, 0, :5] == -800).all() and (edge[0, 0, 5:] == -1024).all()


def test_coronal_series_gives_the_same_patch_as_axial() -> None:
    rng = np.random.default_rng(0)
    axial = rng.normal(-500, 300, size=(12, 16, 16)).astype(np.int16)
    # the same voxels stored as a coronal stack: slices along -y... build by transposing
    coronal = np.ascontiguousarray(np.flip(axial, axis=0).transpose(1, 0, 2))
    origin_axial = (0.0, 0.0, 0.0)
    origin_coronal = (0.0, 0.0, 11.0)  # slice 0 of coronal is row 0; its row 0 is top z
    center = (7.0, 8.0, 5.0)
    a = sample_patch(axial, origin_axial, AXIAL, (1, 1, 1), center, (4, 4, 4), (1, 1, 1))
    c = sample_patch(coronal, origin_coronal, CORONAL, (1, 1, 1), center, (4, 4, 4), (1, 1, 1))
    assert np.array_equal(a, c)


def _patch_point_by_point(volume, origin, orientation, spacing, center, shape, out_spacing):
    """The definition, as slow as it gets: every grid point's position in mm, its voxel
    index, trilinear `map_coordinates` with the edge voxel half a voxel out, air beyond."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, out_spacing, strict=True)]
    z, y, x = np.meshgrid(*axes, indexing="ij")
    points = np.stack([x, y, z], axis=-1) + np.asarray(center)
    index = np.moveaxis(mm_to_voxel(points, origin, orientation, spacing), -1, 0)
    hu = ndimage.map_coordinates(volume.astype(np.float64), index, order=1, mode="nearest")
    outside = np.any(
        [(index[a] <= -0.5) | (index[a] >= volume.shape[a] - 0.5) for a in range(3)], axis=0
    )
    return np.where(outside, -1024.0, hu)


@pytest.mark.parametrize("orientation", [AXIAL, (-1, 0, 0, 0, -1, 0), CORONAL, OBLIQUE])
def test_patch_equals_interpolating_every_point(orientation) -> None:
    """Axial series take the separable path, the others the point-by-point one: both give
    the definition's values, also for patches partly or wholly outside the scan."""
    rng = np.random.default_rng(7)
    for _ in range(40):
        volume = rng.integers(-1024, 2000, size=rng.integers(2, 30, 3)).astype(np.int16)
        spacing = tuple(rng.uniform(0.5, 3.0, 3))
        origin = tuple(rng.uniform(-50, 50, 3))
        aim = (np.asarray(volume.shape) - 1) * rng.uniform(-0.6, 1.6, 3)  # often off the scan
        center = voxel_to_mm(aim, origin, orientation, spacing)
        shape, out_spacing = tuple(rng.integers(1, 16, 3)), tuple(rng.uniform(0.3, 3.0, 3))
        patch = sample_patch(volume, origin, orientation, spacing, center, shape, out_spacing)
        expected = _patch_point_by_point(
            volume, origin, orientation, spacing, center, shape, out_spacing
        )
        assert patch.shape == shape and patch.dtype == np.float32
        assert np.allclose(patch, expected, atol=1e-3, rtol=0)


def test_windows_become_channels_in_unit_range() -> None:
    hu = np.array([[-2000.0, -600.0, 150.0, 3000.0]])
    out = apply_windows(hu, [(-600.0, 1500.0), (40.0, 400.0)])
    assert out.shape == (2, 1, 4)
    assert np.allclose(out[0], [[0.0, 0.5, 1.0, 1.0]])
    assert np.allclose(out[1], [[0.0, 0.0, 0.775, 1.0]])


def test_lung_center_ignores_outside_air_and_mediastinum() -> None:
    volume = np.full((10, 60, 60), -1000, dtype=np.int16)  # outside air
    volume[:, 5:55, 5:55] = 40  # body
    volume[:, 15:45, 10:26] = -850  # right lung (larger)
    volume[:, 20:40, 34:48] = -850  # left lung
    center = lung_center_mm(volume, (0, 0, 0), AXIAL, (1.0, 1.0, 1.0))
    assert 12 <= center[0] <= 24 and 25 <= center[1] <= 35  # inside the right lung


def test_tensor_shape_and_hash() -> None:
    three_d = PreprocessSettings(shape=(8, 16, 16), windows=[(-600, 1500), (40, 400)])
    two_d = PreprocessSettings(mode="2d", shape=(3, 32, 32))
    assert tensor_shape(three_d) == (2, 8, 16, 16)
    assert tensor_shape(two_d) == (3, 32, 32)
    assert config_hash(three_d) != config_hash(two_d)
    assert config_hash(three_d) == config_hash(PreprocessSettings(**three_d.model_dump()))


def test_preprocess_centers_on_the_labelled_nodule() -> None:
    volume = np.full((30, 64, 64), -850, dtype=np.int16)
    volume[18:21, 40:43, 10:13] = 50
    series = Geometry((0.0, 0.0, 0.0), AXIAL, (2.0, 1.0, 1.0), (11.0, 41.0, 38.0))
    config = PreprocessSettings(shape=(5, 5, 5), spacing_mm=(1.0, 1.0, 1.0))
    tensor = preprocess_series(series, volume, config)
    assert tensor.shape == (1, 5, 5, 5)
    assert tensor[0, 2, 2, 2] == pytest.approx((50 + 1350) / 1500)
    assert tensor[0, 2, 0, 0] == pytest.approx((-850 + 1350) / 1500)
    assert np.array_equal(tensor, preprocess_series(series, volume, config))  # deterministic


def test_whole_slice_mode_takes_the_image_center() -> None:
    slice_ = np.full((1, 30, 40), -1350, dtype=np.int16)
    slice_[0, 5:25, 4:36] = np.linspace(-1000, 100, 32).astype(np.int16)
    slice_[0, 12:18, 30:36] = -900  # an air pocket off-center: what the lung finder aims at
    series = Geometry((-39.0, -29.0, 0.0), AXIAL, (1.0, 2.0, 2.0), (9.0, 9.0, 0.0))
    config = PreprocessSettings(
        mode="2d", shape=(1, 30, 40), spacing_mm=(1.0, 2.0, 2.0), crop_center="image"
    )
    tensor = preprocess_series(series, slice_, config)
    # Same grid as the image: every pixel comes back, windowed (default -1350..150 HU).
    expected = np.clip((slice_[0].astype(np.float32) + 1350) / 1500, 0, 1)
    assert tensor.shape == (1, 30, 40) and np.allclose(tensor[0], expected, atol=1e-5)
    nodule = preprocess_series(series, slice_, config.model_copy(update={"crop_center": "nodule"}))
    assert not np.allclose(nodule, tensor)  # the labelled center moves the patch


def test_hash_of_settings_that_existed_before_is_unchanged() -> None:
    import hashlib
    import json

    before = PreprocessSettings().model_dump(mode="json")
    del before["crop_center"]  # what config_hash hashed before the setting existed
    digest = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert config_hash(PreprocessSettings()) == digest
    assert config_hash(PreprocessSettings(crop_center="image")) != digest
