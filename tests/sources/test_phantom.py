"""Tests of the synthetic chest CT phantom: geometry, anatomy HU, nodules, 2D mode, spacing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from lungcls.sources.phantom import Geometry, Nodule, centered_geometry, render_chest, sample_nodule
from lungcls.sources.phantom.anatomy import lung_sd
from lungcls.sources.phantom.random_anatomy import draw_anatomy

VOLUME = centered_geometry((48, 128, 128), (5.0, 2.8, 2.8))


def _slice_through(z_mm: float, size: int = 128, spacing: float = 2.8) -> Geometry:
    """A single axial slice at height z_mm, centered in-plane."""
    half = (size - 1) * spacing / 2
    return Geometry((1, size, size), (spacing, spacing, spacing), (-half, -half, z_mm))


def _nodule_mask(geometry: Geometry, nodule: Nodule, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free render with the nodule, and the voxels the nodule changed by > 150 HU."""
    plain = render_chest(geometry, np.random.default_rng(seed), noise_hu=0.0)
    with_nodule = render_chest(geometry, np.random.default_rng(seed), [nodule], noise_hu=0.0)
    return with_nodule, np.abs(with_nodule - plain) > 150.0


def _sphere_mean(vol: np.ndarray, geometry: Geometry, center: tuple, radius_mm: float) -> float:
    """Mean HU of the voxels within radius_mm of a point (at least the nearest voxel)."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in vol.shape), indexing="ij")
    ck, cj, ci = geometry.mm_to_voxel(center)
    dz, dy, dx = geometry.spacing_zyx_mm
    dist = np.sqrt(((k - ck) * dz) ** 2 + ((j - cj) * dy) ** 2 + ((i - ci) * dx) ** 2)
    inside = dist <= max(radius_mm, float(dist.min()))
    return float(vol[inside].mean())


def _equivalent_diameter(mask: np.ndarray, geometry: Geometry) -> float:
    volume = mask.sum() * float(np.prod(geometry.spacing_zyx_mm))
    return float(np.cbrt(6 * volume / np.pi))


def test_geometry_round_trip_and_centering() -> None:
    geometry = Geometry((10, 20, 30), (2.5, 0.8, 0.7), (-10.0, 5.0, 100.0))
    assert geometry.voxel_to_mm((2, 3, 4)) == pytest.approx((-10.0 + 4 * 0.7, 5.0 + 3 * 0.8, 105.0))
    assert geometry.mm_to_voxel(geometry.voxel_to_mm((1.5, 7, 29))) == pytest.approx((1.5, 7, 29))
    center = VOLUME.voxel_to_mm(tuple((n - 1) / 2 for n in VOLUME.shape_zyx))
    assert center == pytest.approx((0.0, 0.0, 0.0))
    with pytest.raises(ValueError):
        Geometry((0, 10, 10), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def test_nodule_validates_margin_and_diameter() -> None:
    with pytest.raises(ValueError):
        Nodule((0.0, 0.0, 0.0), 10.0, True, "fuzzy", True, False)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Nodule((0.0, 0.0, 0.0), 0.0, True, "smooth", True, False)


def test_same_seed_same_volume_other_seed_other_patient() -> None:
    nodule = sample_nodule(np.random.default_rng(3), VOLUME, malignant=True)
    a = render_chest(VOLUME, np.random.default_rng(7), [nodule])
    b = render_chest(VOLUME, np.random.default_rng(7), [nodule])
    c = render_chest(VOLUME, np.random.default_rng(8), [nodule])
    assert a.dtype == np.float32 and a.shape == VOLUME.shape_zyx
    assert np.array_equal(a, b)
    assert np.mean(np.abs(a - c)) > 20.0


def test_hu_of_air_lung_bone_and_noise() -> None:
    vol = render_chest(VOLUME, np.random.default_rng(0), noise_hu=20.0)
    corners = np.concatenate([vol[:, :6, :6].ravel(), vol[:, -6:, -6:].ravel()])
    assert abs(corners.mean() - -1000.0) < 10.0
    assert 15.0 < corners.std() < 25.0  # slightly below 20 where -1024 clips the air
    # Lung: voxels at nodule-safe positions (deep in the lungs), median to skip vessels.
    rng = np.random.default_rng(1)
    lung = []
    for _ in range(40):
        center = sample_nodule(rng, VOLUME, malignant=False).center_xyz_mm
        k, j, i = (round(c) for c in VOLUME.mm_to_voxel(center))
        lung.append(vol[k, j, i])
    assert abs(np.median(lung) - -850.0) < 60.0
    assert (vol > 600).sum() > 500  # cortical bone of ribs and spine
    assert vol.min() >= -1024.0 and vol.max() <= 3071.0


def test_zero_noise_is_noise_free() -> None:
    vol = render_chest(VOLUME, np.random.default_rng(0), noise_hu=0.0)
    assert np.all(vol[:, :6, :6] == -1000.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_malignant_solid_nodule_is_dense_and_sized(seed: int) -> None:
    geometry = centered_geometry((40, 160, 160), (2.0, 1.5, 1.5))
    rng = np.random.default_rng(seed)
    nodule = sample_nodule(rng, geometry, malignant=True)
    nodule = Nodule(nodule.center_xyz_mm, nodule.diameter_mm, True, nodule.margin, True, False)
    vol, mask = _nodule_mask(geometry, nodule, seed)
    assert _sphere_mean(vol, geometry, nodule.center_xyz_mm, 2.0) > -300.0
    measured = _equivalent_diameter(mask, geometry)
    # Spicules add a little volume, vessels the nodule overlaps hide a little.
    assert 0.8 * nodule.diameter_mm < measured < 1.3 * nodule.diameter_mm


def test_part_solid_nodule_has_ground_glass_halo_and_solid_core() -> None:
    geometry = centered_geometry((30, 128, 128), (1.5, 1.2, 1.2))
    nodule = Nodule((60.0, 0.0, 0.0), 24.0, True, "lobulated", solid=False, calcified=False)
    vol, mask = _nodule_mask(geometry, nodule, 4)
    assert _sphere_mean(vol, geometry, nodule.center_xyz_mm, 1.5) > -150.0
    ground_glass = (vol > -650) & (vol < -350) & mask
    assert ground_glass.sum() > 0.3 * mask.sum()
    assert 0.8 * 24.0 < _equivalent_diameter(mask, geometry) < 1.2 * 24.0


def test_calcified_nodule_core_is_very_bright() -> None:
    geometry = centered_geometry((20, 128, 128), (2.0, 1.2, 1.2))
    for x in (55.0, 60.0, 65.0):  # different hashes: diffuse and central patterns
        nodule = Nodule((x, 0.0, 0.0), 10.0, False, "smooth", solid=True, calcified=True)
        vol = render_chest(geometry, np.random.default_rng(0), [nodule])
        assert _sphere_mean(vol, geometry, nodule.center_xyz_mm, 1.5) > 300.0


@pytest.mark.parametrize("malignant", [True, False])
def test_sample_nodule_centers_lie_in_lung_of_any_patient(malignant: bool) -> None:
    rng = np.random.default_rng(11)
    for seed in range(25):
        nodule = sample_nodule(rng, VOLUME, malignant)
        center = nodule.center_xyz_mm
        (x0, x1), (y0, y1) = (-177.8, 177.8), (-177.8, 177.8)
        r = nodule.diameter_mm / 2
        assert x0 + r <= center[0] <= x1 - r and y0 + r <= center[1] <= y1 - r
        # Render this patient at the center's height only, without noise or the nodule.
        geometry = _slice_through(center[2])
        vol = render_chest(geometry, np.random.default_rng(seed), noise_hu=0.0)
        _, j, i = (round(c) for c in geometry.mm_to_voxel(center))
        # A vessel may cross the center (as in real lungs), but the neighbourhood is aerated;
        # in the mediastinum or chest wall every voxel would be above -200 HU.
        assert vol[0, j - 1 : j + 2, i - 1 : i + 2].min() < -650.0, (seed, nodule)
        assert np.percentile(vol[0, j - 2 : j + 3, i - 2 : i + 3], 25) < -600.0, (seed, nodule)


def test_sample_nodule_region_is_lung_in_every_patient_shape() -> None:
    # The analytic lung of many random patients contains every sampled center with room to
    # spare, including single-slice geometries away from z = 0.
    rng = np.random.default_rng(12)
    geometries = [VOLUME, _slice_through(-40.0), _slice_through(60.0)]
    centers = np.array(
        [sample_nodule(rng, g, bool(n % 2)).center_xyz_mm for g in geometries for n in range(200)]
    )
    x, y, z = centers.T
    for seed in range(80):
        anatomy = draw_anatomy(np.random.default_rng(seed))
        assert lung_sd(anatomy, x, y, z).max() < -1.0


def test_sample_nodule_label_statistics() -> None:
    rng = np.random.default_rng(5)
    malignant = [sample_nodule(rng, VOLUME, True) for _ in range(150)]
    benign = [sample_nodule(rng, VOLUME, False) for _ in range(150)]
    assert all(9.0 <= n.diameter_mm <= 30.0 and n.malignant for n in malignant)
    assert all(4.0 <= n.diameter_mm <= 12.0 and not n.malignant for n in benign)
    assert not any(n.calcified or n.margin == "smooth" for n in malignant)
    assert any(not n.solid for n in malignant) and all(n.solid for n in benign)
    assert any(n.calcified for n in benign) and any(not n.calcified for n in benign)
    assert sum(n.margin == "smooth" for n in benign) > 100
    overlap = [n for n in malignant + benign if 9.0 <= n.diameter_mm <= 12.0]
    assert 0 < sum(n.malignant for n in overlap) < len(overlap)


def test_single_slice_renders_the_nodule() -> None:
    geometry = centered_geometry((1, 256, 256), (1.0, 1.4, 1.4))
    rng = np.random.default_rng(2)
    nodule = sample_nodule(rng, geometry, malignant=True)
    assert nodule.center_xyz_mm[2] == pytest.approx(0.0)
    vol, mask = _nodule_mask(geometry, nodule, 9)
    assert vol.shape == (1, 256, 256)
    assert _sphere_mean(vol, geometry, nodule.center_xyz_mm, 2.0) > -450.0
    # The cut through the center is about as wide as the nodule.
    area = mask.sum() * 1.4 * 1.4
    assert 0.6 * nodule.diameter_mm < 2 * np.sqrt(area / np.pi) < 1.5 * nodule.diameter_mm


def test_sample_nodule_rejects_a_view_without_lung() -> None:
    with pytest.raises(ValueError):
        sample_nodule(np.random.default_rng(0), _slice_through(400.0), malignant=True)


def test_anisotropic_spacing_keeps_anatomy_and_nodule_size_in_mm() -> None:
    coarse = Geometry((24, 120, 120), (5.0, 2.0, 2.0), (-119.0, -119.0, -57.5))
    fine = Geometry((48, 240, 240), (2.5, 1.0, 1.0), (-119.5, -119.5, -58.75))
    nodule = Nodule((75.0, 10.0, 0.0), 16.0, True, "spiculated", solid=True, calcified=False)
    vol_c, mask_c = _nodule_mask(coarse, nodule, 21)
    vol_f, mask_f = _nodule_mask(fine, nodule, 21)
    d_c, d_f = _equivalent_diameter(mask_c, coarse), _equivalent_diameter(mask_f, fine)
    assert abs(d_c - d_f) < 0.15 * nodule.diameter_mm
    # Extent along z (thick slices) and x (fine columns) agree within a coarse voxel.
    for axis in (0, 2):
        ext_c = np.ptp(np.nonzero(mask_c)[axis]) * coarse.spacing_zyx_mm[axis]
        ext_f = np.ptp(np.nonzero(mask_f)[axis]) * fine.spacing_zyx_mm[axis]
        assert abs(ext_c - ext_f) <= coarse.spacing_zyx_mm[axis] + 1.0
    # Same patient in mm: smooth both to the coarse resolution and compare at shared points.
    down = ndimage.uniform_filter(vol_f, size=(2, 2, 2))[1::2, 1::2, 1::2]
    assert down.shape == vol_c.shape
    assert np.median(np.abs(down - vol_c)) < 15.0
    assert np.mean(np.abs(down - vol_c) < 100.0) > 0.9
