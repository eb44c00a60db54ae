"""Bones of the chest wall and spine: ribs, costal cartilage, sternum and vertebrae."""

from __future__ import annotations

import numpy as np

from lungcls.sources.phantom.anatomy import Anatomy, ellipse_sd
from lungcls.sources.phantom.raster import blend, ramp

_CARTILAGE = 130.0
_CSF = 15.0
_DISC = 90.0


def render_bones(
    vol: np.ndarray,
    anat: Anatomy,
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
    radial = sd_cav - half_t - 1.0  # rib centerline just outside the cavity
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
    outer = ramp((q - 1.0) * scale, edge) * valid
    inner = ramp((q - 1.0) * scale + 1.6, edge) * valid
    blend(vol, outer * bony[None], cortex * 0.85)
    blend(vol, inner * bony[None], marrow)
    blend(vol, outer * cartilage[None], _CARTILAGE)
    del q, outer, inner, u, n, dzr, valid

    # Sternum: a flat bone at the front, in the upper two thirds of the chest.
    st_c = (cx, cy - anat.cav_ab[1] - 5.0)
    sd_st, _ = ellipse_sd(x2, y2, st_c, (16.0, 6.0))
    in_z = ramp(z3 - (anat.z_apex - 25.0), edge_z) * ramp(anat.z_base[0] + 90.0 - z3, edge_z)
    blend(vol, ramp(sd_st, edge)[None] * in_z, cortex * 0.8)
    blend(vol, ramp(sd_st + 1.5, edge)[None] * in_z, marrow)

    # Spine: vertebral bodies with a dense cortex, discs between them, the neural arch,
    # transverse and spinous processes, and the canal.
    sd_vb, _ = ellipse_sd(x2, y2, anat.vb_c, anat.vb_ab)
    disc_u = (z1 / anat.disc_period + anat.disc_phase) % 1.0
    disc = ramp((np.abs(disc_u - 0.5) * anat.disc_period - 3.0)[:, None, None], edge_z)
    vb_outer = ramp(sd_vb, edge)[None]
    vb_inner = ramp(sd_vb + 2.5, edge)[None]
    blend(vol, vb_outer * (1.0 - disc), cortex)
    blend(vol, vb_inner * (1.0 - disc), marrow + 60.0)
    blend(vol, vb_outer * disc, _DISC)
    canal_c = (anat.vb_c[0], anat.vb_c[1] + anat.vb_ab[1] + anat.canal_r + 2.0)
    sd_canal, _ = ellipse_sd(x2, y2, canal_c, (anat.canal_r, anat.canal_r))
    r_arch = anat.canal_r + 5.0
    sd_arch, _ = ellipse_sd(x2, y2, (canal_c[0], canal_c[1] + 2.0), (r_arch, r_arch))
    sd_spinous, _ = ellipse_sd(x2, y2, (canal_c[0], canal_c[1] + r_arch + 14.0), (4.0, 17.0))
    sd_trans_r, _ = ellipse_sd(x2, y2, (canal_c[0] - 24.0, canal_c[1] - 1.0), (14.0, 5.0))
    sd_trans_l, _ = ellipse_sd(x2, y2, (canal_c[0] + 24.0, canal_c[1] - 1.0), (14.0, 5.0))
    sd_post = np.minimum(np.minimum(sd_arch, sd_spinous), np.minimum(sd_trans_r, sd_trans_l))
    frac_post = ramp(sd_post, edge)
    frac_marrow = ramp(sd_post + 1.5, edge)
    frac_canal = ramp(sd_canal, edge)
    blend(vol, frac_post[None], cortex * 0.9)
    blend(vol, frac_marrow[None], marrow)
    blend(vol, frac_canal[None], _CSF)
