"""One patient's analytic chest anatomy and its signed-distance functions (all mm).

`Anatomy` holds the parameters of a patient: body outline, thoracic cavity, lungs with an
apex and domed bases, mediastinum, heart, spine and ribs, plus the tube sets (vessels,
airways, great vessels) that the renderer rasterises. The functions here turn those
parameters into approximate signed distances (mm, negative inside) from broadcastable
coordinate arrays, so the same code serves whole grids and scattered points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Anatomy:
    """One patient's analytic anatomy plus its rasterisable tube sets (all mm)."""

    body_c: tuple[float, float]  # body center (x, y)
    body_ab: tuple[float, float]  # superellipse semi-axes
    body_n: float  # superellipse exponent: > 2 flattens the back and flanks
    fat: float  # subcutaneous fat thickness
    cav_c: tuple[float, float]  # thoracic cavity (inner rib surface) center
    cav_ab: tuple[float, float]
    lung_cx: float  # |x| offset of each lung center from the cavity center
    lung_ab: tuple[float, float]  # in-plane semi-axes of the lung ellipses
    z_base: tuple[float, float]  # costophrenic floor (right, left)
    dome: tuple[float, float]  # dome height above the floor (right, left)
    z_mid: float  # lungs taper toward the apex above this
    z_apex: float
    med_c: tuple[float, float]  # mediastinal column center, semi-axes
    med_ab: tuple[float, float]
    heart_c: tuple[float, float, float]
    heart_abc: tuple[float, float, float]
    heart_rot: float  # in-plane rotation of the heart's long axis (rad)
    vb_c: tuple[float, float]  # vertebral body center, semi-axes
    vb_ab: tuple[float, float]
    spine_zone_c: tuple[float, float]  # paraspinal soft tissue the lungs cannot enter
    spine_zone_ab: tuple[float, float]
    disc_period: float
    disc_phase: float
    canal_r: float
    bone_hu: tuple[float, float]  # cortex, cancellous
    rib_pitch: float
    rib_drop: float  # how far a rib descends from its back end to its front end
    rib_phase: tuple[float, float]  # right, left
    rib_half: tuple[float, float]  # half thickness (radial), half height (z)
    lung_hu: float
    lung_grad: float  # posterior (dependent) lung is denser
    lung_waves: np.ndarray  # (n, 5): kx, ky, kz, phase, amplitude
    vessels: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # p0, p1, r0, r1
    airways: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
    mediastinal: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # aorta, SVC, ...
    hila: np.ndarray  # (2, 3): right, left


def ellipse_sd(
    x: np.ndarray, y: np.ndarray, c: tuple[float, float], ab: tuple[float, float], n: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distance (mm, negative inside) to a superellipse, measured along the
    ray from its center, plus the ray length to the boundary (needed to scale the shape)."""
    dx = x - c[0]
    dy = y - c[1]
    norm = np.sqrt(dx * dx + dy * dy + 1e-4)
    if n == 2.0:
        rho = np.sqrt((dx / ab[0]) ** 2 + (dy / ab[1]) ** 2 + 1e-4 / max(ab) ** 2)
    else:
        rho = (np.abs(dx / ab[0]) ** n + np.abs(dy / ab[1]) ** n + (1e-2 / max(ab)) ** n) ** (
            1.0 / n
        )
    ray = norm / rho
    return norm - ray, ray


def _taper(z: np.ndarray, anat: Anatomy) -> np.ndarray:
    """In-plane lung scale at height z: 1 up to z_mid, a round dome to 0 at the apex."""
    t = np.clip((z - anat.z_mid) / (anat.z_apex - anat.z_mid), 0.0, 1.0)
    return np.sqrt(1.0 - t**2.2)


def heart_sd(anat: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signed distance to the heart ellipsoid (in-plane ray distance of its z cross-section)."""
    hx, hy, hz = anat.heart_c
    ca, sa = math.cos(anat.heart_rot), math.sin(anat.heart_rot)
    u = (x - hx) * ca + (y - hy) * sa
    v = -(x - hx) * sa + (y - hy) * ca
    sd, ray = ellipse_sd(u, v, (0.0, 0.0), anat.heart_abc[:2])
    tz = np.clip((z - hz) / anat.heart_abc[2], -1.0, 1.0)
    out = ray * (1.0 - np.sqrt(1.0 - tz * tz))
    out += sd
    return out


def diaphragm_z(anat: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height of the diaphragm: lowest in the costophrenic recesses, domed under each lung."""
    cx, cy = anat.cav_c
    side = (x > cx).astype(np.intp)  # 0: right lung (negative x), 1: left
    lx = cx + np.where(side == 1, anat.lung_cx, -anat.lung_cx)
    rho2 = ((x - lx) / anat.lung_ab[0]) ** 2 + ((y - cy) / anat.lung_ab[1]) ** 2
    base = np.asarray(anat.z_base, dtype=np.float32)[side]
    dome = np.asarray(anat.dome, dtype=np.float32)[side]
    return base + dome * (1.0 - np.clip(rho2, 0.0, 1.0))


def lung_sd(anat: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signed distance (mm, negative inside) to the lungs, from broadcastable coordinates.

    Tubes (aorta and other mediastinal vessels) are not included; the renderer carves them
    out separately.
    """
    cx, cy = anat.cav_c
    sd_cav, _ = ellipse_sd(x, y, anat.cav_c, anat.cav_ab, 2.3)
    sd_med, _ = ellipse_sd(x, y, anat.med_c, anat.med_ab)
    sd_spine, _ = ellipse_sd(x, y, anat.spine_zone_c, anat.spine_zone_ab)
    sd_vb, _ = ellipse_sd(x, y, anat.vb_c, (anat.vb_ab[0] + 6, anat.vb_ab[1] + 6))
    flat = np.maximum(np.maximum(sd_cav + 1.5, -sd_med), -np.minimum(sd_spine, sd_vb))
    shrink = 1.0 - _taper(z, anat)
    sd_r, ray_r = ellipse_sd(x, y, (cx - anat.lung_cx, cy), anat.lung_ab)
    sd_l, ray_l = ellipse_sd(x, y, (cx + anat.lung_cx, cy), anat.lung_ab)
    # Scaling a shape about its center by g moves its boundary along each ray to g * ray.
    # In-place steps: on a full grid each temporary is a volume-sized array.
    sd = ray_r * shrink
    sd += sd_r
    other = ray_l * shrink
    other += sd_l
    np.minimum(sd, other, out=sd)
    np.maximum(sd, flat, out=sd)
    np.subtract(diaphragm_z(anat, x, y), z, out=other)
    np.maximum(sd, other, out=sd)
    del other
    np.maximum(sd, -heart_sd(anat, x, y, z), out=sd)
    return sd
