"""Lung nodules: the `Nodule` record, its hash-derived 3D shape, and its rasterisation.

A nodule's appearance (size, margin, ground glass, calcification) depends on whether it is
malignant; its fine shape (where the lobes and spicules point) comes from a hash of its
fields, so the same `Nodule` looks the same in every patient and at every spacing.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from lungcls.sources.phantom.geometry import Geometry, unit
from lungcls.sources.phantom.raster import blend

Margin = Literal["smooth", "lobulated", "spiculated"]


@dataclass(frozen=True)
class Nodule:
    """One lung nodule, in patient mm.

    The fine shape (where the lobes and spicules point) is derived from a hash of these
    fields, so the same `Nodule` looks the same in every patient and at every spacing.

    Attributes:
        center_xyz_mm: Center, DICOM LPS mm.
        diameter_mm: Volume-equivalent diameter of the nodule body (halo included, spicules
            excluded).
        malignant: Ground-truth label.
        margin: "smooth", "lobulated" (bumpy radius) or "spiculated" (radial spikes).
        solid: False for part-solid: a solid core inside a ground-glass (~ -500 HU) halo.
        calcified: Benign calcification: a very bright core, or the whole nodule.
    """

    center_xyz_mm: tuple[float, float, float]
    diameter_mm: float
    malignant: bool
    margin: Margin
    solid: bool = True
    calcified: bool = False

    def __post_init__(self) -> None:
        center = tuple(float(c) for c in self.center_xyz_mm)
        if len(center) != 3 or not all(math.isfinite(c) for c in center):
            raise ValueError(f"center_xyz_mm must be three finite mm, got {self.center_xyz_mm}")
        if not (math.isfinite(self.diameter_mm) and self.diameter_mm > 0):
            raise ValueError(f"diameter_mm must be positive, got {self.diameter_mm}")
        if self.margin not in ("smooth", "lobulated", "spiculated"):
            raise ValueError(f"unknown margin {self.margin!r}")
        # Plain Python scalars keep the shape hash identical for numpy and Python inputs.
        object.__setattr__(self, "center_xyz_mm", center)
        object.__setattr__(self, "diameter_mm", float(self.diameter_mm))
        object.__setattr__(self, "malignant", bool(self.malignant))
        object.__setattr__(self, "solid", bool(self.solid))
        object.__setattr__(self, "calcified", bool(self.calcified))


def _fibonacci_sphere(n: int) -> np.ndarray:
    """n nearly evenly spread unit directions (n, 3), to sample a shape's radius."""
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    return np.column_stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)])


_SPHERE = _fibonacci_sphere(2000)


@dataclass(frozen=True, eq=False)
class _NoduleShape:
    """Direction-dependent radius and intensities of one nodule."""

    body_scale: float
    stretch: np.ndarray  # (3,) axis factors of a mild ellipsoid
    lobe_dirs: np.ndarray  # (m, 3)
    lobe_amp: np.ndarray  # (m,)
    lobe_power: float
    spike_dirs: np.ndarray  # (s, 3)
    spike_len: np.ndarray  # (s,) mm beyond the body
    spike_angle: np.ndarray  # (s,) half-angle at the base (rad)
    core_frac: float  # part-solid core radius / body radius
    solid_hu: float
    ggo_hu: float
    calc_hu: float
    calc_frac: float  # calcified core radius / body radius (1: diffuse)

    def body(self, u: np.ndarray) -> np.ndarray:
        """Body radius (mm) along unit directions u (n, 3), spicules excluded."""
        stretch = 1.0 / np.sqrt(np.sum((u / self.stretch) ** 2, axis=1))
        bumps = np.maximum(u @ self.lobe_dirs.T, 0.0) ** self.lobe_power @ self.lobe_amp
        return self.body_scale * stretch * (1.0 + bumps)

    def spikes(self, u: np.ndarray) -> np.ndarray:
        """Extra radius (mm) of the spicules along unit directions u (n, 3)."""
        if len(self.spike_len) == 0:
            return np.zeros(len(u))
        cos = np.clip(u @ self.spike_dirs.T, -1.0, 1.0)
        angle = np.sqrt(2.0 * (1.0 - cos))  # chord length: the angle, for small angles
        profile = np.maximum(1.0 - angle / self.spike_angle, 0.0)
        return np.max(profile * self.spike_len, axis=1)


def _nodule_shape(nodule: Nodule) -> _NoduleShape:
    """Shape parameters drawn from a stable hash of the nodule's fields."""
    key = repr(
        (
            nodule.center_xyz_mm,
            nodule.diameter_mm,
            nodule.malignant,
            nodule.margin,
            nodule.solid,
            nodule.calcified,
        )
    ).encode()
    rng = np.random.default_rng(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest()))
    radius = nodule.diameter_mm / 2
    u = rng.uniform
    if nodule.margin == "smooth":
        n_lobes, amp = 3, (0.02, 0.06)
    elif nodule.margin == "lobulated":
        n_lobes, amp = int(rng.integers(4, 8)), (0.18, 0.38)
    else:
        n_lobes, amp = int(rng.integers(3, 6)), (0.06, 0.18)
    lobe_dirs = unit(rng.normal(size=(n_lobes, 3)))
    lobe_amp = u(*amp, n_lobes)
    stretch = 1.0 + u(-0.1, 0.1, 3)
    if nodule.margin == "spiculated":
        # Many spicules: in any one slice only those running near its plane show.
        n_spikes = int(rng.integers(25, 45))
        spike_dirs = unit(rng.normal(size=(n_spikes, 3)))
        spike_len = u(0.35, 1.0, n_spikes) * radius + u(2.0, 5.0, n_spikes)
        spike_angle = u(1.2, 2.2, n_spikes) / radius
    else:
        spike_dirs, spike_len, spike_angle = np.zeros((0, 3)), np.zeros(0), np.zeros(0)
    shape = _NoduleShape(
        body_scale=1.0,
        stretch=stretch,
        lobe_dirs=lobe_dirs,
        lobe_amp=lobe_amp,
        lobe_power=float(u(3.0, 6.0)),
        spike_dirs=spike_dirs,
        spike_len=spike_len,
        spike_angle=spike_angle,
        core_frac=1.0 if nodule.solid else float(u(0.4, 0.7)),
        solid_hu=float(u(15.0, 50.0)),
        ggo_hu=float(u(-560.0, -440.0)),
        calc_hu=float(u(500.0, 1000.0)),
        calc_frac=(1.0 if u() < 0.4 else float(u(0.45, 0.7))) if nodule.calcified else 0.0,
    )
    # Equal volume with a sphere of the nominal diameter, whatever the lobes add.
    scale = radius / np.cbrt(np.mean(shape.body(_SPHERE) ** 3))
    return replace(shape, body_scale=float(scale))


def render_nodule(vol: np.ndarray, geometry: Geometry, nodule: Nodule) -> None:
    """Paint one nodule into `vol` in place, touching only its bounding box."""
    shape = _nodule_shape(nodule)
    r_body = shape.body(_SPHERE)
    reach = float(r_body.max() + (shape.spike_len.max() if len(shape.spike_len) else 0.0))
    reach += max(geometry.spacing_zyx_mm)
    center_kji = np.array(geometry.mm_to_voxel(nodule.center_xyz_mm))
    spacing = np.array(geometry.spacing_zyx_mm)
    lo = np.maximum(np.ceil(center_kji - reach / spacing), 0).astype(int)
    hi = np.minimum(np.floor(center_kji + reach / spacing), np.array(vol.shape) - 1).astype(int)
    if np.any(hi < lo):
        return
    dz, dy, dx = geometry.spacing_zyx_mm
    cx, cy, cz = nodule.center_xyz_mm
    ox, oy, oz = geometry.origin_xyz_mm
    gx = ox + dx * np.arange(lo[2], hi[2] + 1) - cx
    gy = oy + dy * np.arange(lo[1], hi[1] + 1) - cy
    gz = oz + dz * np.arange(lo[0], hi[0] + 1) - cz
    box = (len(gz), len(gy), len(gx))
    rel = np.stack(np.broadcast_arrays(gx[None, None, :], gy[None, :, None], gz[:, None, None]))
    rel = rel.reshape(3, -1).T
    dist = np.linalg.norm(rel, axis=1)
    u = rel / np.maximum(dist, 1e-9)[:, None]
    u[dist < 1e-9] = (0.0, 0.0, 1.0)
    # Partial volume along the radial direction; the floor keeps tiny nodules from aliasing.
    width = np.maximum(np.abs(u) @ np.array([dx, dy, dz]), 0.3)
    body = shape.body(u)
    outer = np.maximum(body, body + shape.spikes(u))

    def frac(radius: np.ndarray) -> np.ndarray:
        return np.clip((radius - dist) / width + 0.5, 0.0, 1.0).reshape(box)

    sub = vol[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]
    if nodule.solid:
        blend(sub, frac(outer), shape.solid_hu)
    else:
        blend(sub, frac(outer), shape.ggo_hu)
        blend(sub, frac(body * shape.core_frac), shape.solid_hu)
    if nodule.calcified:
        blend(sub, frac(body * shape.calc_frac), shape.calc_hu)
