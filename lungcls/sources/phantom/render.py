"""Rendering of one random patient's chest CT, in Hounsfield units, through a `Geometry`.

Layers are painted in order: body wall and mediastinal fat, abdomen and heart, great
vessels, aerated lungs with their texture, pulmonary vessels, airways, bones, nodules, and
finally correlated noise. HU are clipped to [-1024, 3071], the range of a 12-bit scanner.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from lungcls.sources.phantom.anatomy import diaphragm_z, ellipse_sd, heart_sd, lung_sd
from lungcls.sources.phantom.bones import render_bones
from lungcls.sources.phantom.geometry import Geometry
from lungcls.sources.phantom.nodules import Nodule, render_nodule
from lungcls.sources.phantom.random_anatomy import draw_anatomy
from lungcls.sources.phantom.raster import blend, ramp, rasterise_tubes

HU_MIN = -1024.0
HU_MAX = 3071.0
_AIR = -1000.0
_FAT = -95.0
_SKIN = 20.0
_MUSCLE = 50.0
_BLOOD = 40.0
_LIVER = 58.0

# Bones are rendered in slabs of slices of at most this many voxels (or 1/4 of the volume).
_MIN_SLAB_VOXELS = 200_000


def _noise(rng: np.random.Generator, shape: tuple[int, int, int], std: float) -> np.ndarray:
    """Gaussian noise with a slight in-plane correlation, like reconstructed CT noise."""
    noise = rng.standard_normal(shape, dtype=np.float32)
    if shape[1] > 1 and shape[2] > 1:
        sigma = (0.0, 0.6, 0.6)
        ndimage.gaussian_filter(noise, sigma, output=noise, truncate=3.0)
        delta = np.zeros((1, 9, 9), dtype=np.float32)
        delta[0, 4, 4] = 1.0
        gain = float(np.sqrt(np.sum(ndimage.gaussian_filter(delta, sigma, truncate=3.0) ** 2)))
        noise *= std / gain
    else:
        noise *= std
    return noise


def render_chest(
    geometry: Geometry,
    rng: np.random.Generator,
    nodules: Sequence[Nodule] = (),
    noise_hu: float = 20.0,
) -> np.ndarray:
    """Render one random patient's chest CT in Hounsfield units.

    The anatomy and the noise come from two seeds drawn from `rng` up front, so the same seed
    gives the same anatomy (in mm) at any geometry, and adding nodules changes nothing else.

    Args:
        geometry: Voxel grid to render.
        rng: Random source for the patient and the noise.
        nodules: Nodules to paint; their shapes depend only on their own fields.
        noise_hu: Standard deviation of the noise (0 for none).

    Returns:
        float32 array of shape `geometry.shape_zyx`, HU clipped to [-1024, 3071].
    """
    anat_seed, noise_seed = rng.integers(0, 2**63, size=2)
    anat = draw_anatomy(np.random.default_rng(anat_seed))
    shape = geometry.shape_zyx
    dz, dy, dx = geometry.spacing_zyx_mm
    xs, ys, zs = geometry.axes_mm()
    x2 = xs[None, :].astype(np.float32)
    y2 = ys[:, None].astype(np.float32)
    x3, y3, z3 = x2[None], y2[None], zs[:, None, None].astype(np.float32)
    edge = max(0.5 * (dx + dy), 0.5)
    edge_z = max(dz, edge)

    # Body wall, in-plane only: skin, subcutaneous fat, muscle.
    sd_body, _ = ellipse_sd(x2, y2, anat.body_c, anat.body_ab, anat.body_n)
    wall = np.full(sd_body.shape, _AIR, dtype=np.float32)
    blend(wall, ramp(sd_body, edge), _SKIN)
    blend(wall, ramp(sd_body + 2.0, edge), _FAT)
    blend(wall, ramp(sd_body + anat.fat, edge), _MUSCLE)
    sd_cav, _ = ellipse_sd(x2, y2, anat.cav_c, anat.cav_ab, 2.3)
    sd_med, _ = ellipse_sd(x2, y2, anat.med_c, anat.med_ab)
    # Mediastinal fat around the great vessels, in the upper chest.
    blend(wall, ramp(np.maximum(sd_med + 3.0, sd_cav), edge), _FAT)
    vol = np.empty(shape, dtype=np.float32)
    vol[:] = wall[None]

    # Abdomen below the diaphragm: liver on the right.
    # diaphragm_z is float64 on this grid, so `below` starts as a float64 volume.
    below = ramp(z3 - diaphragm_z(anat, x3, y3), edge_z, overwrite_sd=True)
    below *= ramp(sd_cav, edge)[None]
    liver = np.where(x2 < anat.cav_c[0] + 30.0, _LIVER, _BLOOD).astype(np.float32)
    blend(vol, below, liver[None])
    del below
    blend(vol, ramp(heart_sd(anat, x3, y3, z3), edge, overwrite_sd=True), _BLOOD)

    scratch = np.zeros(shape, dtype=np.float32)
    rasterise_tubes(geometry, anat.mediastinal, scratch)
    blend(vol, scratch, _BLOOD)

    # Lungs: denser posteriorly (gravity) with a gentle low-frequency texture.
    lung = ramp(lung_sd(anat, x3, y3, z3), edge, overwrite_sd=True)
    np.subtract(1.0, scratch, out=scratch)
    lung *= scratch
    lung_hu = np.empty(shape, dtype=np.float32)
    lung_hu[:] = anat.lung_hu + anat.lung_grad * (y3 - anat.cav_c[1]) / anat.cav_ab[1]
    for kx, ky, kz, phase, amp in anat.lung_waves.tolist():  # Python floats keep float32
        np.add(kx * x3 + ky * y3, kz * z3 + phase, out=scratch)
        np.sin(scratch, out=scratch)
        scratch *= amp
        lung_hu += scratch
    # blend(vol, lung, lung_hu), computed in lung_hu to save a volume.
    np.subtract(lung_hu, vol, out=lung_hu)
    lung_hu *= lung
    vol += lung_hu
    del lung_hu

    scratch[:] = 0.0
    rasterise_tubes(geometry, anat.vessels, scratch)
    scratch *= lung
    blend(vol, scratch, _BLOOD)
    del lung

    scratch[:] = 0.0
    p0, p1, r0, r1 = anat.airways
    rasterise_tubes(geometry, (p0, p1, r0 * 1.2 + 0.6, r1 * 1.2 + 0.6), scratch)
    blend(vol, scratch, _MUSCLE)
    scratch[:] = 0.0
    rasterise_tubes(geometry, anat.airways, scratch)
    blend(vol, scratch, _AIR)
    del scratch

    # Bones need several 3D temporaries; slabs of slices keep them small.
    step = max(1, max(_MIN_SLAB_VOXELS, vol.size // 4) // (shape[1] * shape[2]))
    for k0 in range(0, shape[0], step):
        zslab = zs[k0 : k0 + step].astype(np.float32)
        render_bones(vol[k0 : k0 + step], anat, x2, y2, zslab, sd_cav, edge, edge_z)

    for nodule in nodules:
        render_nodule(vol, geometry, nodule)

    if noise_hu > 0:
        vol += _noise(np.random.default_rng(noise_seed), shape, noise_hu)
    np.clip(vol, HU_MIN, HU_MAX, out=vol)
    return vol
