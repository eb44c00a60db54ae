"""Random patients: draw an `Anatomy`, including its airway and vessel trees, from a seed.

Only the random generator is used, never the geometry, so one seed gives the same patient in
mm at any voxel spacing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from lungcls.sources.phantom.anatomy import Anatomy, lung_sd
from lungcls.sources.phantom.geometry import unit

# Number of unconnected peripheral vessel twigs scattered through the lungs.
_TWIGS = 12000


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
    s, d, r = starts, unit(dirs), radii
    for _ in range(max_generations):
        n = len(r)
        if n == 0:
            break
        length = (length_per_radius * r + 4.0) * rng.uniform(0.7, 1.3, n)
        ok = np.zeros(n, dtype=bool)
        e = s.copy()
        for frac in (1.0, 0.55):
            cand = s + d * (length * frac)[:, None]
            inside = anat_sd(cand[:, 0], cand[:, 1], cand[:, 2]) < -(r + clearance)
            take = inside & ~ok
            e[take] = cand[take]
            ok |= inside
        s, d, r, e = s[ok], d[ok], r[ok], e[ok]
        out_s.append(s)
        out_e.append(e)
        out_r.append(r)
        n = len(r)
        # Children: split around a random axis perpendicular to the parent.
        a = rng.normal(size=(n, 3))
        perp = unit(a - np.sum(a * d, axis=1, keepdims=True) * d)
        angles = rng.uniform(0.3, 0.75, (n, 2)) * np.array([1.0, -1.0])
        child_d = (
            np.cos(angles)[..., None] * d[:, None, :]
            + np.sin(angles)[..., None] * (perp[:, None, :])
        )
        child_r = r[:, None] * rng.uniform(0.66, 0.9, (n, 2))
        s = np.repeat(e, 2, axis=0)
        d = unit(child_d.reshape(-1, 3))
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


def draw_anatomy(rng: np.random.Generator) -> Anatomy:
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

    anat = Anatomy(
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
                unit(rng.normal(size=(4, 3))) * (2 * np.pi / u(35.0, 110.0, (4, 1))),
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
        return lung_sd(anat, x, y, z)

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
    fan = unit(
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
    tw_d = unit(unit(cand - near) + rng.normal(0, 0.35, cand.shape))
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

    return replace(anat, vessels=vessels, airways=airways, mediastinal=mediastinal, hila=hila)
