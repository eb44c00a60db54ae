"""Partial-volume rasterisation: edge ramps, in-place blending and tapered tubes.

Edges are box-filtered ramps whose width follows the voxel size, which keeps thin vessels
and small structures visible at coarse spacing without aliasing.
"""

from __future__ import annotations

import numpy as np

from lungcls.sources.phantom.geometry import Geometry

# Tube rasterisation is batched: a batch visits at most 1/32 as many voxels as the volume
# has (or this many), which keeps its ~150 bytes of temporaries per visit to ~1 volume copy.
_MIN_BATCH_VOXELS = 50_000


def ramp(sd: np.ndarray, width: float, overwrite_sd: bool = False) -> np.ndarray:
    """Fraction of a voxel inside a surface at signed distance sd (box-filter partial volume).

    Args:
        sd: Signed distance (mm, negative inside).
        width: Width of the ramp (mm), about one voxel across the surface.
        overwrite_sd: Compute in `sd` itself (a temporary the caller no longer needs), which
            saves one copy of it.

    Returns:
        float32 fractions in [0, 1]; `sd` itself when it is float32 and overwrite_sd is set.
    """
    frac = np.divide(sd, width, out=sd if overwrite_sd else None)
    np.subtract(0.5, frac, out=frac)
    np.clip(frac, 0.0, 1.0, out=frac)
    return frac.astype(np.float32, copy=False)


def blend(vol: np.ndarray, frac: np.ndarray, hu: float | np.ndarray) -> None:
    """Paint `hu` over `vol` in place, weighted by the partial-volume fraction."""
    step = np.subtract(hu, vol, dtype=np.float32)
    step *= frac
    vol += step


def rasterise_tubes(
    geometry: Geometry,
    tubes: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    out: np.ndarray,
) -> None:
    """Max-accumulate the partial-volume fraction of tapered tubes (capsules) into `out`.

    Each segment only visits the voxels of its own bounding box; all boxes of a batch are
    enumerated together with repeat/cumsum arithmetic, so there is no loop over segments.

    Args:
        geometry: Grid of `out`.
        tubes: Segment starts (n, 3) and ends (n, 3) in mm xyz, radii at both ends (n,).
        out: float32 array of shape `geometry.shape_zyx`, updated in place.
    """
    p0, p1, r0, r1 = tubes
    if len(r0) == 0:
        return
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
        center = dist < 1e-3
        qz[center] = 1.0  # any normal will do on the axis itself
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
