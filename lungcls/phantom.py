"""Synthetic chest CT phantom: a vectorised renderer of axial chest volumes in Hounsfield units.

Real scans cannot be checked into a repository or shipped to a CI runner, so tests and demos
use a phantom that looks plausibly like a non-contrast chest CT in a lung window: body outline
with subcutaneous fat, two lungs with an apex and domed bases, mediastinum and heart, aorta,
a branching airway tree, tortuous pulmonary vessels that thin toward the periphery, ribs,
sternum and spine, correlated noise, and lung nodules whose appearance (size, margin, ground
glass, calcification) depends on whether they are malignant.

Everything is defined in patient millimetres (DICOM LPS: x toward the patient's left, y
toward the back, z toward the head) and only rasterised through a `Geometry` at the end, so
one seed gives the same anatomy at any voxel spacing, and a single-slice geometry renders a 2D
image of the same patient. Edges are partial-volume ramps whose width follows the voxel size,
which keeps thin vessels and small nodules visible at coarse spacing without aliasing.

    geometry = centered_geometry((48, 128, 128), (5.0, 2.8, 2.8))
    rng = np.random.default_rng(0)
    nodule = sample_nodule(rng, geometry, malignant=True)
    hu = render_chest(geometry, rng, [nodule])      # float32, shape (48, 128, 128)

The returned HU are clipped to [-1024, 3071], the range of a 12-bit scanner, so they fit an
unsigned 16-bit DICOM pixel array with RescaleIntercept -1024. An in-plane field of view of
at least ~350 mm (128 x 2.8 mm, 256 x 1.4 mm, 512 x 0.7 mm) shows the whole body.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

__all__ = ["Geometry", "Margin", "Nodule", "centered_geometry", "render_chest", "sample_nodule"]

Margin = Literal["smooth", "lobulated", "spiculated"]

HU_MIN = -1024.0
HU_MAX = 3071.0
_AIR = -1000.0
_FAT = -95.0
_SKIN = 20.0
_MUSCLE = 50.0
_BLOOD = 40.0
_LIVER = 58.0
_CARTILAGE = 130.0
_CSF = 15.0
_DISC = 90.0

# Tube rasterisation is batched: a batch visits at most 1/32 as many voxels as the volume
# has (or this many), which keeps its ~150 bytes of temporaries per visit to ~1 volume copy.
_MIN_BATCH_VOXELS = 50_000
# Bones are rendered in slabs of slices of at most this many voxels (or 1/4 of the volume).
_MIN_SLAB_VOXELS = 200_000
_TWIGS = 12000


@dataclass(frozen=True)
class Geometry:
    """Voxel grid of an axial volume with identity orientation.

    Voxel (k, j, i) sits at x = ox + i*dx, y = oy + j*dy, z = oz + k*dz, so columns run toward
    the patient's left, rows toward the back and slices toward the head.

    Attributes:
        shape_zyx: Number of slices, rows and columns.
        spacing_zyx_mm: Slice step, row spacing and column spacing in mm (also taken as the
            slice thickness for partial-volume blurring).
        origin_xyz_mm: Patient position (DICOM LPS, mm) of voxel (0, 0, 0).
    """

    shape_zyx: tuple[int, int, int]
    spacing_zyx_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape_zyx)
        spacing = tuple(float(s) for s in self.spacing_zyx_mm)
        origin = tuple(float(o) for o in self.origin_xyz_mm)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape_zyx must be three positive sizes, got {self.shape_zyx}")
        if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing_zyx_mm must be three positive mm, got {spacing}")
        if len(origin) != 3 or not all(math.isfinite(o) for o in origin):
            raise ValueError(f"origin_xyz_mm must be three finite mm, got {origin}")
        object.__setattr__(self, "shape_zyx", shape)
        object.__setattr__(self, "spacing_zyx_mm", spacing)
        object.__setattr__(self, "origin_xyz_mm", origin)

    def voxel_to_mm(self, kji: Sequence[float]) -> tuple[float, float, float]:
        """Patient position of a (possibly fractional) voxel index.

        Args:
            kji: Slice, row and column index.

        Returns:
            (x, y, z) in mm.
        """
        k, j, i = (float(v) for v in kji)
        dz, dy, dx = self.spacing_zyx_mm
        ox, oy, oz = self.origin_xyz_mm
        return (ox + i * dx, oy + j * dy, oz + k * dz)

    def mm_to_voxel(self, xyz: Sequence[float]) -> tuple[float, float, float]:
        """Fractional voxel index of a patient position.

        Args:
            xyz: (x, y, z) in mm.

        Returns:
            (k, j, i) as floats; round them to get the nearest voxel.
        """
        x, y, z = (float(v) for v in xyz)
        dz, dy, dx = self.spacing_zyx_mm
        ox, oy, oz = self.origin_xyz_mm
        return ((z - oz) / dz, (y - oy) / dy, (x - ox) / dx)

    def _axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates along x, y and z (1D float64 arrays, mm)."""
        nz, ny, nx = self.shape_zyx
        dz, dy, dx = self.spacing_zyx_mm
        ox, oy, oz = self.origin_xyz_mm
        return ox + dx * np.arange(nx), oy + dy * np.arange(ny), oz + dz * np.arange(nz)

    def _extent(self) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
        """(min, max) voxel-centre position along x, y and z."""
        x, y, z = self._axes()
        return (x[0], x[-1]), (y[0], y[-1]), (z[0], z[-1])


def centered_geometry(
    shape_zyx: tuple[int, int, int], spacing_zyx_mm: tuple[float, float, float]
) -> Geometry:
    """Geometry whose volume centre is at patient (0, 0, 0), where the phantom's chest is.

    Args:
        shape_zyx: Number of slices, rows and columns.
        spacing_zyx_mm: Slice step, row spacing and column spacing in mm.

    Returns:
        The geometry; a single-slice one sits at z = 0, through the lung hila.
    """
    nz, ny, nx = (int(n) for n in shape_zyx)
    dz, dy, dx = (float(s) for s in spacing_zyx_mm)
    origin = (-(nx - 1) * dx / 2, -(ny - 1) * dy / 2, -(nz - 1) * dz / 2)
    return Geometry((nz, ny, nx), (dz, dy, dx), origin)


@dataclass(frozen=True)
class Nodule:
    """One lung nodule, in patient mm.

    The fine shape (where the lobes and spicules point) is derived from a hash of these
    fields, so the same `Nodule` looks the same in every patient and at every spacing.

    Attributes:
        center_xyz_mm: Centre, DICOM LPS mm.
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


# --------------------------------------------------------------------------------------------
# Anatomy parameters


@dataclass(frozen=True, eq=False)
class _Anatomy:
    """One patient's analytic anatomy plus its rasterisable tube sets (all mm)."""

    body_c: tuple[float, float]  # body centre (x, y)
    body_ab: tuple[float, float]  # superellipse semi-axes
    body_n: float  # superellipse exponent: > 2 flattens the back and flanks
    fat: float  # subcutaneous fat thickness
    cav_c: tuple[float, float]  # thoracic cavity (inner rib surface) centre
    cav_ab: tuple[float, float]
    lung_cx: float  # |x| offset of each lung centre from the cavity centre
    lung_ab: tuple[float, float]  # in-plane semi-axes of the lung ellipses
    z_base: tuple[float, float]  # costophrenic floor (right, left)
    dome: tuple[float, float]  # dome height above the floor (right, left)
    z_mid: float  # lungs taper toward the apex above this
    z_apex: float
    med_c: tuple[float, float]  # mediastinal column centre, semi-axes
    med_ab: tuple[float, float]
    heart_c: tuple[float, float, float]
    heart_abc: tuple[float, float, float]
    heart_rot: float  # in-plane rotation of the heart's long axis (rad)
    vb_c: tuple[float, float]  # vertebral body centre, semi-axes
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


def _ellipse_sd(
    x: np.ndarray, y: np.ndarray, c: tuple[float, float], ab: tuple[float, float], n: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate signed distance (mm, negative inside) to a superellipse, measured along the
    ray from its centre, plus the ray length to the boundary (needed to scale the shape)."""
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


def _taper(z: np.ndarray, anat: _Anatomy) -> np.ndarray:
    """In-plane lung scale at height z: 1 up to z_mid, a round dome to 0 at the apex."""
    t = np.clip((z - anat.z_mid) / (anat.z_apex - anat.z_mid), 0.0, 1.0)
    return np.sqrt(1.0 - t**2.2)


def _heart_sd(anat: _Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signed distance to the heart ellipsoid (in-plane ray distance of its z cross-section)."""
    hx, hy, hz = anat.heart_c
    ca, sa = math.cos(anat.heart_rot), math.sin(anat.heart_rot)
    u = (x - hx) * ca + (y - hy) * sa
    v = -(x - hx) * sa + (y - hy) * ca
    sd, ray = _ellipse_sd(u, v, (0.0, 0.0), anat.heart_abc[:2])
    tz = np.clip((z - hz) / anat.heart_abc[2], -1.0, 1.0)
    out = ray * (1.0 - np.sqrt(1.0 - tz * tz))
    out += sd
    return out


def _diaphragm_z(anat: _Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height of the diaphragm: lowest in the costophrenic recesses, domed under each lung."""
    cx, cy = anat.cav_c
    side = (x > cx).astype(np.intp)  # 0: right lung (negative x), 1: left
    lx = cx + np.where(side == 1, anat.lung_cx, -anat.lung_cx)
    rho2 = ((x - lx) / anat.lung_ab[0]) ** 2 + ((y - cy) / anat.lung_ab[1]) ** 2
    base = np.asarray(anat.z_base, dtype=np.float32)[side]
    dome = np.asarray(anat.dome, dtype=np.float32)[side]
    return base + dome * (1.0 - np.clip(rho2, 0.0, 1.0))


def _lung_sd(anat: _Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signed distance (mm, negative inside) to the lungs, from broadcastable coordinates.

    Tubes (aorta and other mediastinal vessels) are not included; the renderer carves them
    out separately.
    """
    cx, cy = anat.cav_c
    sd_cav, _ = _ellipse_sd(x, y, anat.cav_c, anat.cav_ab, 2.3)
    sd_med, _ = _ellipse_sd(x, y, anat.med_c, anat.med_ab)
    sd_spine, _ = _ellipse_sd(x, y, anat.spine_zone_c, anat.spine_zone_ab)
    sd_vb, _ = _ellipse_sd(x, y, anat.vb_c, (anat.vb_ab[0] + 6, anat.vb_ab[1] + 6))
    flat = np.maximum(np.maximum(sd_cav + 1.5, -sd_med), -np.minimum(sd_spine, sd_vb))
    shrink = 1.0 - _taper(z, anat)
    sd_r, ray_r = _ellipse_sd(x, y, (cx - anat.lung_cx, cy), anat.lung_ab)
    sd_l, ray_l = _ellipse_sd(x, y, (cx + anat.lung_cx, cy), anat.lung_ab)
    # Scaling a shape about its centre by g moves its boundary along each ray to g * ray.
    # In-place steps: on a full grid each temporary is a volume-sized array.
    sd = ray_r * shrink
    sd += sd_r
    other = ray_l * shrink
    other += sd_l
    np.minimum(sd, other, out=sd)
    np.maximum(sd, flat, out=sd)
    np.subtract(_diaphragm_z(anat, x, y), z, out=other)
    np.maximum(sd, other, out=sd)
    del other
    np.maximum(sd, -_heart_sd(anat, x, y, z), out=sd)
    return sd


# --------------------------------------------------------------------------------------------
# Random anatomy


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _grow_tree(
    rng: np.random.Generator,
    anat_sd: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    starts: np.ndarray,
    dirs: np.ndarray,
    radii: np.ndarray,
    r_min: float,
    clearance: float,
    max_generations: int,
    length_per_radius: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grow bifurcating branches generation by generation (vectorised over branches).

    A branch whose end would leave the lung is shortened once, then dropped, so the tree
    fills the lung without piercing the pleura. Children are thinner (Murray-like ratios),
    shorter, and bend away from each other around a random axis.

    Returns:
        Branch starts (n, 3), ends (n, 3) and radii (n,).
    """
    out_s, out_e, out_r = [], [], []
    s, d, r = starts, _unit(dirs), radii
    for _ in range(max_generations):
        n = len(r)
        if n == 0:
            break
        length = (length_per_radius * r + 4.0) * rng.uniform(0.7, 1.3, n)
        ends = []
        ok = np.zeros(n, dtype=bool)
        e = s.copy()
        for frac in (1.0, 0.55):
            cand = s + d * (length * frac)[:, None]
            inside = anat_sd(cand[:, 0], cand[:, 1], cand[:, 2]) < -(r + clearance)
            take = inside & ~ok
            e[take] = cand[take]
            ok |= inside
            ends.append(cand)
        s, d, r, e = s[ok], d[ok], r[ok], e[ok]
        out_s.append(s)
        out_e.append(e)
        out_r.append(r)
        n = len(r)
        # Children: split around a random axis perpendicular to the parent.
        a = rng.normal(size=(n, 3))
        perp = _unit(a - np.sum(a * d, axis=1, keepdims=True) * d)
        angles = rng.uniform(0.3, 0.75, (n, 2)) * np.array([1.0, -1.0])
        child_d = (
            np.cos(angles)[..., None] * d[:, None, :]
            + np.sin(angles)[..., None] * (perp[:, None, :])
        )
        child_r = r[:, None] * rng.uniform(0.66, 0.9, (n, 2))
        s = np.repeat(e, 2, axis=0)
        d = _unit(child_d.reshape(-1, 3))
        r = child_r.reshape(-1)
        keep = r >= r_min
        s, d, r = s[keep], d[keep], r[keep]
    if not out_r:
        empty = np.zeros((0, 3))
        return empty, empty, np.zeros(0)
    return np.concatenate(out_s), np.concatenate(out_e), np.concatenate(out_r)


def _tortuous(
    rng: np.random.Generator, s: np.ndarray, e: np.ndarray, r: np.ndarray, wiggle: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split each branch into three pieces through two jittered points; taper the radius."""
    n = len(r)
    t = np.array([0.0, 1 / 3, 2 / 3, 1.0])
    pts = s[:, None, :] + t[None, :, None] * (e - s)[:, None, :]
    length = np.linalg.norm(e - s, axis=1)
    jitter = rng.normal(size=(n, 2, 3)) * (wiggle * length)[:, None, None]
    pts[:, 1:3] += jitter
    rad = r[:, None] * (1.0 - 0.12 * t)[None, :]
    p0 = pts[:, :-1].reshape(-1, 3)
    p1 = pts[:, 1:].reshape(-1, 3)
    return p0, p1, rad[:, :-1].reshape(-1), rad[:, 1:].reshape(-1)


def _draw_anatomy(rng: np.random.Generator) -> _Anatomy:
    """Draw one patient. Uses only `rng`, never the geometry, so anatomy is resolution-free."""
    u = rng.uniform
    # The rib cage varies less than the body: most body-size variation is fat.
    cav_a, cav_b = u(118.0, 138.0), u(80.0, 94.0)
    wall, wall_back, fat = u(12.0, 18.0), u(16.0, 22.0), u(6.0, 28.0)
    body_c = (u(-4.0, 4.0), u(-4.0, 4.0))
    body_a = cav_a + wall + fat
    body_b = (cav_b * 2 + wall + wall_back + 2 * fat) / 2
    cav_c = (body_c[0], body_c[1] - body_b + fat + wall + cav_b)
    cx, cy = cav_c
    lung_len = u(235.0, 275.0)
    z_base_r = -lung_len / 2 - u(0.0, 10.0)
    z_base = (z_base_r, z_base_r + u(-5.0, 5.0))
    dome = (u(55.0, 70.0), u(42.0, 55.0))
    z_apex = z_base_r + lung_len
    z_mid = z_apex - u(150.0, 170.0)
    vb_ab = (u(18.0, 22.0), u(15.0, 18.0))
    vb_c = (cx + u(-1.5, 1.5), cy + cav_b - u(26.0, 32.0))
    heart_c = (cx + u(18.0, 28.0), cy - u(12.0, 20.0), z_base[1] + dome[1] + u(10.0, 25.0))
    heart_abc = (u(62.0, 72.0), u(44.0, 52.0), u(55.0, 65.0))

    anat = _Anatomy(
        body_c=body_c,
        body_ab=(body_a, body_b),
        body_n=u(2.2, 2.6),
        fat=fat,
        cav_c=cav_c,
        cav_ab=(cav_a, cav_b),
        lung_cx=0.5 * cav_a,
        lung_ab=(0.62 * cav_a, 1.08 * cav_b),
        z_base=z_base,
        dome=dome,
        z_mid=z_mid,
        z_apex=z_apex,
        med_c=(cx + u(2.0, 6.0), cy - u(4.0, 10.0)),
        med_ab=(u(22.0, 28.0), cav_b * u(1.0, 1.1)),
        heart_c=heart_c,
        heart_abc=heart_abc,
        heart_rot=math.radians(u(-40.0, -25.0)),
        vb_c=vb_c,
        vb_ab=vb_ab,
        spine_zone_c=(vb_c[0], vb_c[1] + 28.0),
        spine_zone_ab=(u(30.0, 36.0), 40.0),
        disc_period=u(25.0, 29.0),
        disc_phase=u(0.0, 1.0),
        canal_r=u(6.5, 8.0),
        bone_hu=(u(750.0, 1000.0), u(280.0, 380.0)),
        rib_pitch=u(23.0, 28.0),
        rib_drop=u(55.0, 80.0),
        rib_phase=(u(0.0, 30.0), u(0.0, 30.0)),
        rib_half=(u(3.5, 4.8), u(5.0, 6.5)),
        lung_hu=u(-875.0, -840.0),
        lung_grad=u(15.0, 35.0),
        lung_waves=np.column_stack(
            [
                _unit(rng.normal(size=(4, 3))) * (2 * np.pi / u(35.0, 110.0, (4, 1))),
                u(0.0, 2 * np.pi, 4),
                u(4.0, 9.0, 4),
            ]
        ),
        vessels=(np.zeros((0, 3)),) * 2 + (np.zeros(0),) * 2,
        airways=(np.zeros((0, 3)),) * 2 + (np.zeros(0),) * 2,
        mediastinal=(np.zeros((0, 3)),) * 2 + (np.zeros(0),) * 2,
        hila=np.zeros((2, 3)),
    )

    def sd(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return _lung_sd(anat, x, y, z)

    # Airways: trachea down to the carina, two main bronchi, then a lobar/segmental tree.
    tr = u(8.0, 10.0)
    # Hila vary little between patients so that `sample_nodule` can keep clear of them.
    trachea = np.array([cx + u(-3.0, 1.0), cy + 0.18 * cav_b])
    z_car = u(15.0, 30.0)
    carina = np.array([*trachea, z_car])
    rmb = carina + np.array([-u(28.0, 36.0), u(4.0, 10.0), -u(16.0, 24.0)])
    lmb = carina + np.array([u(38.0, 48.0), u(6.0, 12.0), -u(26.0, 34.0)])
    big_p0 = np.array([[*trachea, z_apex + 400.0], carina, carina])
    big_p1 = np.array([carina, rmb, lmb])
    big_r = np.array([tr, 0.78 * tr, 0.7 * tr])
    lobar_dirs = np.array(
        [
            [-0.6, 0.1, 0.8],  # right upper
            [-0.5, -0.6, -0.5],  # right middle
            [-0.35, 0.45, -0.85],  # right lower
            [0.6, -0.2, 0.8],  # left upper
            [0.3, -0.7, -0.3],  # lingula
            [0.35, 0.45, -0.85],  # left lower
        ]
    )
    lobar_start = np.array([rmb, rmb, rmb, lmb, lmb, lmb])
    lobar_r = u(3.8, 5.0, 6)
    aw_s, aw_e, aw_r = _grow_tree(
        rng, sd, lobar_start, lobar_dirs + rng.normal(0, 0.12, (6, 3)), lobar_r, 1.6, 1.5, 4, 5.5
    )
    aw = _tortuous(rng, aw_s, aw_e, aw_r, 0.04)
    airways = tuple(
        np.concatenate([a, b])
        for a, b in zip(aw, (big_p0, big_p1, big_r, big_r * 0.97), strict=True)
    )

    # Pulmonary vessels: fans of roots from each hilum, bifurcating out to sub-mm twigs.
    hila = np.array([rmb, lmb]) + np.array([[-8.0, -6.0, -6.0], [8.0, -6.0, -4.0]])
    fan = _unit(
        np.array(
            [
                [1.0, 0.0, 0.0],
                [0.6, 0.0, 0.8],
                [0.5, -0.6, 0.6],
                [0.5, 0.6, 0.6],
                [0.6, -0.8, 0.0],
                [0.6, 0.8, 0.0],
                [0.4, -0.5, -0.75],
                [0.4, 0.6, -0.7],
                [0.3, 0.0, -1.0],
                [0.7, 0.3, -0.6],
                [0.2, 0.9, -0.4],
            ]
        )
    )
    roots_d = np.concatenate([fan * [-1.0, 1.0, 1.0], fan]) + rng.normal(0, 0.15, (2 * len(fan), 3))
    roots_s = np.repeat(hila, len(fan), axis=0) + rng.normal(0, 4.0, (2 * len(fan), 3))
    roots_r = u(3.0, 4.5, 2 * len(fan))
    v_s, v_e, v_r = _grow_tree(rng, sd, roots_s, roots_d, roots_r, 0.45, 0.8, 11, 6.0)
    vessels = _tortuous(rng, v_s, v_e, v_r, 0.05)
    # Peripheral twigs: unconnected short segments scattered through the lung, pointing away
    # from the nearest hilum. At sub-millimetre calibre they read as the fine vascular
    # pattern of real parenchyma, which a fully grown tree would need ~10x more branches for.
    box_lo = np.array([cx - anat.cav_ab[0], cy - anat.cav_ab[1], min(z_base)])
    box_hi = np.array([cx + anat.cav_ab[0], cy + anat.cav_ab[1], z_apex])
    cand = rng.uniform(box_lo, box_hi, (_TWIGS * 3, 3))
    cand = cand[sd(cand[:, 0], cand[:, 1], cand[:, 2]) < -2.0][:_TWIGS]
    near = hila[(cand[:, 0] > cx).astype(np.intp)]
    away = np.linalg.norm(cand - near, axis=1)
    tw_d = _unit(_unit(cand - near) + rng.normal(0, 0.35, cand.shape))
    tw_r = np.clip(1.3 - away / 110.0, 0.35, 1.0) * rng.uniform(0.7, 1.1, len(cand))
    tw_l = (5.0 * tw_r + 3.0) * rng.uniform(0.7, 1.3, len(cand))
    half = tw_d * (tw_l / 2)[:, None]
    vessels = tuple(
        np.concatenate([a, b])
        for a, b in zip(vessels, (cand - half, cand + half, tw_r, tw_r * 0.9), strict=True)
    )
    # Hilar trunks, mostly hidden in the mediastinum, visible where they enter the lung.
    trunk0 = np.array([[cx - 12.0, cy - 15.0, z_car - 30.0], [cx + 15.0, cy - 20.0, z_car - 25.0]])
    vessels = tuple(
        np.concatenate([a, b])
        for a, b in zip(vessels, (trunk0, hila, np.full(2, 8.0), np.full(2, 6.5)), strict=True)
    )

    # Aorta (ascending, arch, descending) and superior vena cava: soft tissue the lungs avoid.
    ar = u(12.0, 15.0)
    desc = np.array([vb_c[0] + vb_ab[0] + ar * 0.6, vb_c[1] - vb_ab[1] * 0.6])
    asc = np.array([cx + u(2.0, 8.0), cy - u(25.0, 35.0)])
    z_arch = z_car + u(20.0, 30.0)
    arch_mid = np.array([(asc[0] + desc[0]) / 2 - 4.0, (asc[1] + desc[1]) / 2, z_arch + 10.0])
    pts = np.array(
        [
            [*asc, heart_c[2]],
            [*asc, z_arch - 5.0],
            [asc[0] + 4.0, asc[1] + 10.0, z_arch + 8.0],
            arch_mid,
            [desc[0] - 2.0, desc[1] - 10.0, z_arch + 8.0],
            [*desc, z_arch - 5.0],
            [*desc, z_base[1] - 200.0],
        ]
    )
    svc = np.array(
        [
            [asc[0] - ar - 12.0, asc[1] + 4.0, z_apex + 200.0],
            [asc[0] - ar - 12.0, asc[1] + 4.0, heart_c[2]],
        ]
    )
    med_p0 = np.concatenate([pts[:-1], svc[:1]])
    med_p1 = np.concatenate([pts[1:], svc[1:]])
    med_r = np.concatenate([np.full(len(pts) - 1, ar), [u(8.0, 10.0)]])
    mediastinal = (med_p0, med_p1, med_r, med_r)

    return _Anatomy(
        **{
            **anat.__dict__,
            "vessels": vessels,
            "airways": airways,
            "mediastinal": mediastinal,
            "hila": hila,
        }
    )


# --------------------------------------------------------------------------------------------
# Rasterisation


def _ramp(sd: np.ndarray, width: float) -> np.ndarray:
    """Fraction of a voxel inside a surface at signed distance sd (box-filter partial volume)."""
    return np.clip(0.5 - sd / width, 0.0, 1.0).astype(np.float32, copy=False)


def _blend(vol: np.ndarray, frac: np.ndarray, hu: float | np.ndarray) -> None:
    """Paint `hu` over `vol` in place, weighted by the partial-volume fraction."""
    step = np.subtract(hu, vol, dtype=np.float32)
    step *= frac
    vol += step


def _rasterise_tubes(
    geometry: Geometry,
    tubes: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    out: np.ndarray,
    grow_mm: float = 0.0,
) -> None:
    """Max-accumulate the partial-volume fraction of tapered tubes (capsules) into `out`.

    Each segment only visits the voxels of its own bounding box; all boxes of a batch are
    enumerated together with repeat/cumsum arithmetic, so there is no loop over segments.

    Args:
        geometry: Grid of `out`.
        tubes: Segment starts (n, 3) and ends (n, 3) in mm xyz, radii at both ends (n,).
        out: float32 array of shape `geometry.shape_zyx`, updated in place.
        grow_mm: Added to every radius (airway walls reuse the lumen segments).
    """
    p0, p1, r0, r1 = tubes
    if len(r0) == 0:
        return
    r0 = r0 + grow_mm
    r1 = r1 + grow_mm
    shape = np.array(geometry.shape_zyx)
    spacing = np.array(geometry.spacing_zyx_mm)
    origin_zyx = np.array(geometry.origin_xyz_mm)[::-1]
    # A voxel is touched while dist < r + width/2, and width <= |spacing|.
    reach = np.maximum(r0, r1)[:, None] + 0.5 * np.linalg.norm(spacing)
    lo_mm = np.minimum(p0, p1)[:, ::-1] - reach
    hi_mm = np.maximum(p0, p1)[:, ::-1] + reach
    lo = np.maximum(np.ceil((lo_mm - origin_zyx) / spacing), 0).astype(np.int64)
    hi = np.minimum(np.floor((hi_mm - origin_zyx) / spacing), shape - 1).astype(np.int64)
    size = np.maximum(hi - lo + 1, 0)
    count = size.prod(axis=1)
    live = np.flatnonzero(count > 0)
    if len(live) == 0:
        return
    dz, dy, dx = geometry.spacing_zyx_mm
    _, ny, nx = geometry.shape_zyx
    flat_out = out.reshape(-1)
    f32 = np.float32
    # Per-segment values in voxel-relative float32, gathered once per visited voxel below.
    start_mm = (p0[:, ::-1] - origin_zyx - lo * spacing).astype(f32)  # p0 relative to box corner
    vec = (p1 - p0)[:, ::-1].astype(f32)
    vv = np.maximum(np.sum(vec.astype(np.float64) ** 2, axis=1), 1e-12)
    inv_vv = (1.0 / vv).astype(f32)
    inv_len = (1.0 / np.sqrt(vv)).astype(f32)
    base = (lo[:, 0] * ny + lo[:, 1]) * nx + lo[:, 2]
    # Batches bound memory when a fine grid makes the boxes large.
    batch_voxels = max(_MIN_BATCH_VOXELS, out.size // 32)
    csum = np.cumsum(count[live])
    batch_of = (csum - 1) // batch_voxels
    for b in np.unique(batch_of):
        segs = live[batch_of == b]
        cnt = count[segs]
        seg = np.repeat(segs, cnt)
        local = np.arange(int(cnt.sum()), dtype=np.int32) - np.repeat(
            (np.cumsum(cnt) - cnt).astype(np.int32), cnt
        )
        s_i = size[seg, 2].astype(np.int32)
        s_j = size[seg, 1].astype(np.int32)
        i = local % s_i
        rest = local // s_i
        j = rest % s_j
        k = rest // s_j
        del local, rest
        flat = base[seg] + (k * ny + j) * nx + i
        a = start_mm[seg]
        v = vec[seg]
        qz = k.astype(f32) * f32(dz) - a[:, 0]
        qy = j.astype(f32) * f32(dy) - a[:, 1]
        qx = i.astype(f32) * f32(dx) - a[:, 2]
        del i, j, k, a
        t = (qz * v[:, 0] + qy * v[:, 1] + qx * v[:, 2]) * inv_vv[seg]
        np.clip(t, 0.0, 1.0, out=t)
        qz -= t * v[:, 0]
        qy -= t * v[:, 1]
        qx -= t * v[:, 2]
        dist = np.sqrt(qx * qx + qy * qy + qz * qz)
        inv = 1.0 / np.maximum(dist, f32(1e-6))
        qx *= inv
        qy *= inv
        qz *= inv
        centre = dist < 1e-3
        qz[centre] = 1.0  # any normal will do on the axis itself
        # Voxel width along the normal n: the exact box filter of a planar edge.
        width = np.abs(qx) * f32(dx) + np.abs(qy) * f32(dy) + np.abs(qz) * f32(dz)
        np.maximum(width, f32(0.3), out=width)
        rad = r0[seg].astype(f32) + t * (r1 - r0)[seg].astype(f32)
        frac = (np.minimum(rad, dist + width / 2) - np.maximum(-rad, dist - width / 2)) / width
        np.clip(frac, 0.0, 1.0, out=frac)
        # A tube thinner than the voxel across the binormal b = axis x n fills only part of
        # it that way too; this keeps the mean HU of sub-voxel vessels right.
        ax = v * inv_len[seg][:, None]
        bx = ax[:, 1] * qz - ax[:, 0] * qy  # columns of v are z, y, x
        by = ax[:, 0] * qx - ax[:, 2] * qz
        bz = ax[:, 2] * qy - ax[:, 1] * qx
        across = np.abs(bx) * f32(dx) + np.abs(by) * f32(dy) + np.abs(bz) * f32(dz)
        frac *= np.minimum(f32(1.0), f32(np.pi / 2) * rad / np.maximum(across, f32(0.3)))
        hit = frac > 0
        np.maximum.at(flat_out, flat[hit], frac[hit])


# --------------------------------------------------------------------------------------------
# Nodules


def _fibonacci_sphere(n: int) -> np.ndarray:
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
    lobe_dirs = _unit(rng.normal(size=(n_lobes, 3)))
    lobe_amp = u(*amp, n_lobes)
    stretch = 1.0 + u(-0.1, 0.1, 3)
    if nodule.margin == "spiculated":
        # Many spicules: in any one slice only those running near its plane show.
        n_spikes = int(rng.integers(25, 45))
        spike_dirs = _unit(rng.normal(size=(n_spikes, 3)))
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
    return _NoduleShape(**{**shape.__dict__, "body_scale": float(scale)})


def _render_nodule(vol: np.ndarray, geometry: Geometry, nodule: Nodule) -> None:
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
        _blend(sub, frac(outer), shape.solid_hu)
    else:
        _blend(sub, frac(outer), shape.ggo_hu)
        _blend(sub, frac(body * shape.core_frac), shape.solid_hu)
    if nodule.calcified:
        _blend(sub, frac(body * shape.calc_frac), shape.calc_hu)


# --------------------------------------------------------------------------------------------
# Nodule placement

# A small, central patient; nodule centres go where its lungs are at least _SAFE_MARGIN_MM
# deep, which lies inside the lungs of every patient `_draw_anatomy` can produce.
_SAFE_MARGIN_MM = 10.0
_HILUM_CLEARANCE_MM = 38.0


def _safe_anatomy() -> _Anatomy:
    # Smallest rib cage, lowest apex, earliest taper, highest domes, biggest heart.
    cav_a, cav_b = 118.0, 80.0
    cy = -2.0
    z_apex = 235.0 / 2 - 10.0
    return _Anatomy(
        body_c=(0.0, 0.0),
        body_ab=(150.0, 110.0),
        body_n=2.4,
        fat=10.0,
        cav_c=(0.0, cy),
        cav_ab=(cav_a, cav_b),
        lung_cx=0.5 * cav_a,
        lung_ab=(0.62 * cav_a, 1.08 * cav_b),
        z_base=(-117.5, -112.5),
        dome=(70.0, 55.0),
        z_mid=z_apex - 170.0,
        z_apex=z_apex,
        med_c=(4.0, cy - 7.0),
        med_ab=(28.0, 94.0 * 1.1),
        heart_c=(23.0, cy - 16.0, -66.0),
        heart_abc=(80.0, 58.0, 100.0),
        heart_rot=math.radians(-32.0),
        vb_c=(0.0, cy + cav_b - 29.0),
        vb_ab=(22.0, 18.0),
        spine_zone_c=(0.0, cy + cav_b - 1.0),
        spine_zone_ab=(36.0, 40.0),
        disc_period=27.0,
        disc_phase=0.0,
        canal_r=7.0,
        bone_hu=(900.0, 330.0),
        rib_pitch=25.0,
        rib_drop=60.0,
        rib_phase=(0.0, 0.0),
        rib_half=(4.0, 6.0),
        lung_hu=-850.0,
        lung_grad=25.0,
        lung_waves=np.zeros((0, 5)),
        vessels=(np.zeros((0, 3)),) * 2 + (np.zeros(0),) * 2,
        airways=(np.zeros((0, 3)),) * 2 + (np.zeros(0),) * 2,
        mediastinal=(np.zeros((0, 3)),) * 2 + (np.zeros(0),) * 2,
        hila=np.array([[-41.0, 15.0, -3.0], [50.0, 16.0, -11.0]]),  # centres of their ranges
    )


_SAFE = _safe_anatomy()


def _safe_sd(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signed distance to the region where nodule centres may go (lung in every patient)."""
    sd = _lung_sd(_SAFE, x, y, z) + _SAFE_MARGIN_MM
    for h in _SAFE.hila:
        dist = np.sqrt((x - h[0]) ** 2 + (y - h[1]) ** 2 + (z - h[2]) ** 2)
        sd = np.maximum(sd, _HILUM_CLEARANCE_MM - dist)
    return sd


def sample_nodule(rng: np.random.Generator, geometry: Geometry, malignant: bool) -> Nodule:
    """Draw a random nodule whose centre lies in a lung of any phantom patient.

    Malignant: 8-30 mm, lobulated or spiculated, solid or part-solid, never calcified.
    Benign: 4-14 mm, mostly smooth, sometimes calcified, solid. The sizes overlap in 8-14 mm
    so size alone does not give the label away.

    The centre avoids the mediastinum, the hila and the chest wall, keeps the nodule inside
    the volume in-plane (and in z when the volume is thick enough), and lies on the slice of a
    single-slice geometry.

    Args:
        rng: Random source.
        geometry: Volume the nodule will be rendered into.
        malignant: Label of the nodule to draw.

    Returns:
        The nodule.

    Raises:
        ValueError: The volume shows no lung that can hold the nodule.
    """
    if malignant:
        diameter = 8.0 + 22.0 * rng.beta(1.6, 2.6)
        margin: Margin = "spiculated" if rng.uniform() < 0.55 else "lobulated"
        solid = bool(rng.uniform() < 0.7)
        calcified = False
    else:
        diameter = 4.0 + 10.0 * rng.beta(1.5, 2.2)
        margin = "lobulated" if rng.uniform() < 0.12 else "smooth"
        solid = True
        calcified = bool(rng.uniform() < 0.3)
    radius = diameter / 2
    # Spicules reach past the body; keep them in the field of view too.
    reach = radius * (2.0 if margin == "spiculated" else 1.3) + 1.0
    (x0, x1), (y0, y1), (z0, z1) = geometry._extent()
    bounds = []
    for lo, hi in ((x0, x1), (y0, y1), (z0, z1)):
        if hi - lo >= 2 * reach:
            bounds.append((lo + reach, hi - reach))
        elif hi - lo >= 2 * radius:
            bounds.append((lo + radius, hi - radius))
        else:
            bounds.append(((lo + hi) / 2, (lo + hi) / 2))
    if geometry.shape_zyx[1] == 1 or geometry.shape_zyx[2] == 1 or bounds[0][0] > bounds[0][1]:
        raise ValueError("the field of view is too small to hold a nodule")
    if geometry.shape_zyx[0] == 1:
        bounds[2] = (z0, z0)
    lows = np.array([b[0] for b in bounds])
    highs = np.array([b[1] for b in bounds])
    for _ in range(64):
        cand = rng.uniform(lows, highs, (256, 3))
        depth = -_safe_sd(cand[:, 0], cand[:, 1], cand[:, 2])
        ok = np.flatnonzero(depth > 0.3 * radius)
        if len(ok):
            center = tuple(float(c) for c in cand[ok[0]])
            return Nodule(center, float(diameter), bool(malignant), margin, solid, calcified)
    raise ValueError("no lung in this field of view can hold a nodule")


# --------------------------------------------------------------------------------------------
# Rendering


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
    anat = _draw_anatomy(np.random.default_rng(anat_seed))
    shape = geometry.shape_zyx
    dz, dy, dx = geometry.spacing_zyx_mm
    xs, ys, zs = geometry._axes()
    x2 = xs[None, :].astype(np.float32)
    y2 = ys[:, None].astype(np.float32)
    x3, y3, z3 = x2[None], y2[None], zs[:, None, None].astype(np.float32)
    edge = max(0.5 * (dx + dy), 0.5)
    edge_z = max(dz, edge)

    # Body wall, in-plane only: skin, subcutaneous fat, muscle.
    sd_body, _ = _ellipse_sd(x2, y2, anat.body_c, anat.body_ab, anat.body_n)
    wall = np.full(sd_body.shape, _AIR, dtype=np.float32)
    _blend(wall, _ramp(sd_body, edge), _SKIN)
    _blend(wall, _ramp(sd_body + 2.0, edge), _FAT)
    _blend(wall, _ramp(sd_body + anat.fat, edge), _MUSCLE)
    sd_cav, _ = _ellipse_sd(x2, y2, anat.cav_c, anat.cav_ab, 2.3)
    sd_med, _ = _ellipse_sd(x2, y2, anat.med_c, anat.med_ab)
    # Mediastinal fat around the great vessels, in the upper chest.
    _blend(wall, _ramp(np.maximum(sd_med + 3.0, sd_cav), edge), _FAT)
    vol = np.empty(shape, dtype=np.float32)
    vol[:] = wall[None]

    # Abdomen below the diaphragm: liver on the right.
    below = _ramp(z3 - _diaphragm_z(anat, x3, y3), edge_z) * _ramp(sd_cav, edge)[None]
    liver = np.where(x2 < anat.cav_c[0] + 30.0, _LIVER, _BLOOD).astype(np.float32)
    _blend(vol, below, liver[None])
    del below
    _blend(vol, _ramp(_heart_sd(anat, x3, y3, z3), edge), _BLOOD)

    scratch = np.zeros(shape, dtype=np.float32)
    _rasterise_tubes(geometry, anat.mediastinal, scratch)
    _blend(vol, scratch, _BLOOD)

    # Lungs: denser posteriorly (gravity) with a gentle low-frequency texture.
    lung = _ramp(_lung_sd(anat, x3, y3, z3), edge)
    np.subtract(1.0, scratch, out=scratch)
    lung *= scratch
    lung_hu = np.empty(shape, dtype=np.float32)
    lung_hu[:] = anat.lung_hu + anat.lung_grad * (y3 - anat.cav_c[1]) / anat.cav_ab[1]
    for kx, ky, kz, phase, amp in anat.lung_waves.tolist():  # Python floats keep float32
        np.add(kx * x3 + ky * y3, kz * z3 + phase, out=scratch)
        np.sin(scratch, out=scratch)
        scratch *= amp
        lung_hu += scratch
    _blend(vol, lung, lung_hu)
    del lung_hu

    scratch[:] = 0.0
    _rasterise_tubes(geometry, anat.vessels, scratch)
    scratch *= lung
    _blend(vol, scratch, _BLOOD)
    del lung

    scratch[:] = 0.0
    p0, p1, r0, r1 = anat.airways
    _rasterise_tubes(geometry, (p0, p1, r0 * 1.2 + 0.6, r1 * 1.2 + 0.6), scratch)
    _blend(vol, scratch, _MUSCLE)
    scratch[:] = 0.0
    _rasterise_tubes(geometry, anat.airways, scratch)
    _blend(vol, scratch, _AIR)
    del scratch

    # Bones need several 3D temporaries; slabs of slices keep them small.
    step = max(1, max(_MIN_SLAB_VOXELS, vol.size // 4) // (shape[1] * shape[2]))
    for k0 in range(0, shape[0], step):
        zslab = zs[k0 : k0 + step].astype(np.float32)
        _render_bones(vol[k0 : k0 + step], anat, x2, y2, zslab, sd_cav, edge, edge_z)

    for nodule in nodules:
        _render_nodule(vol, geometry, nodule)

    if noise_hu > 0:
        vol += _noise(np.random.default_rng(noise_seed), shape, noise_hu)
    np.clip(vol, HU_MIN, HU_MAX, out=vol)
    return vol


def _render_bones(
    vol: np.ndarray,
    anat: _Anatomy,
    x2: np.ndarray,
    y2: np.ndarray,
    z1: np.ndarray,
    sd_cav: np.ndarray,
    edge: float,
    edge_z: float,
) -> None:
    """Paint ribs, costal cartilage, sternum and spine in place.

    Args:
        vol: The slices to paint (a slab of the volume).
        anat: The patient.
        x2: Column coordinates, shape (1, W); y2: row coordinates, shape (H, 1).
        z1: Slice coordinates of `vol`, shape (D,).
        sd_cav: Signed distance to the thoracic cavity, shape (H, W).
        edge: In-plane partial-volume width (mm); edge_z: the same along z.
    """
    cortex, marrow = anat.bone_hu
    cx, cy = anat.cav_c
    z3 = z1[:, None, None]

    # Ribs: each rib is an elliptical hoop that descends from the spine to the front, so one
    # periodic phase in z covers all of them at once and every axial slice cuts arcs.
    theta = np.arctan2(np.abs(x2 - cx), y2 - cy)  # 0 at the back, pi at the front
    side = (x2 > cx).astype(np.intp)
    phase = np.asarray(anat.rib_phase, dtype=np.float32)[side]
    drop = anat.rib_drop * (theta / np.pi) ** 1.2
    half_t, half_h = anat.rib_half
    radial = sd_cav - half_t - 1.0  # rib centreline just outside the cavity
    u = (z3 + drop[None] - phase[None]) / anat.rib_pitch
    n = np.round(u)
    dzr = (u - n) * anat.rib_pitch
    rib_top = anat.z_apex - 10.0
    valid = (n * anat.rib_pitch + phase[None] <= rib_top) & (
        n * anat.rib_pitch + phase[None] >= anat.z_base[0] - 70.0
    )
    q = np.sqrt((radial / half_t)[None] ** 2 + (dzr / half_h) ** 2)
    scale = min(half_t, half_h)
    bony = (theta > 0.22) & (theta < np.pi - 0.55)
    cartilage = (theta >= np.pi - 0.55) & (theta < np.pi - 0.16)
    outer = _ramp((q - 1.0) * scale, edge) * valid
    inner = _ramp((q - 1.0) * scale + 1.6, edge) * valid
    _blend(vol, outer * bony[None], cortex * 0.85)
    _blend(vol, inner * bony[None], marrow)
    _blend(vol, outer * cartilage[None], _CARTILAGE)
    del q, outer, inner, u, n, dzr, valid

    # Sternum: a flat bone at the front, in the upper two thirds of the chest.
    st_c = (cx, cy - anat.cav_ab[1] - 5.0)
    sd_st, _ = _ellipse_sd(x2, y2, st_c, (16.0, 6.0))
    in_z = _ramp(z3 - (anat.z_apex - 25.0), edge_z) * _ramp(anat.z_base[0] + 90.0 - z3, edge_z)
    _blend(vol, _ramp(sd_st, edge)[None] * in_z, cortex * 0.8)
    _blend(vol, _ramp(sd_st + 1.5, edge)[None] * in_z, marrow)

    # Spine: vertebral bodies with a dense cortex, discs between them, the neural arch,
    # transverse and spinous processes, and the canal.
    sd_vb, _ = _ellipse_sd(x2, y2, anat.vb_c, anat.vb_ab)
    disc_u = (z1 / anat.disc_period + anat.disc_phase) % 1.0
    disc = _ramp((np.abs(disc_u - 0.5) * anat.disc_period - 3.0)[:, None, None], edge_z)
    vb_outer = _ramp(sd_vb, edge)[None]
    vb_inner = _ramp(sd_vb + 2.5, edge)[None]
    _blend(vol, vb_outer * (1.0 - disc), cortex)
    _blend(vol, vb_inner * (1.0 - disc), marrow + 60.0)
    _blend(vol, vb_outer * disc, _DISC)
    canal_c = (anat.vb_c[0], anat.vb_c[1] + anat.vb_ab[1] + anat.canal_r + 2.0)
    sd_canal, _ = _ellipse_sd(x2, y2, canal_c, (anat.canal_r, anat.canal_r))
    r_arch = anat.canal_r + 5.0
    sd_arch, _ = _ellipse_sd(x2, y2, (canal_c[0], canal_c[1] + 2.0), (r_arch, r_arch))
    sd_spinous, _ = _ellipse_sd(x2, y2, (canal_c[0], canal_c[1] + r_arch + 14.0), (4.0, 17.0))
    sd_trans_r, _ = _ellipse_sd(x2, y2, (canal_c[0] - 24.0, canal_c[1] - 1.0), (14.0, 5.0))
    sd_trans_l, _ = _ellipse_sd(x2, y2, (canal_c[0] + 24.0, canal_c[1] - 1.0), (14.0, 5.0))
    sd_post = np.minimum(np.minimum(sd_arch, sd_spinous), np.minimum(sd_trans_r, sd_trans_l))
    frac_post = _ramp(sd_post, edge)
    frac_marrow = _ramp(sd_post + 1.5, edge)
    frac_canal = _ramp(sd_canal, edge)
    _blend(vol, frac_post[None], cortex * 0.9)
    _blend(vol, frac_marrow[None], marrow)
    _blend(vol, frac_canal[None], _CSF)
