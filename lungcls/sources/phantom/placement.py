"""Random nodule placement: draw a `Nodule` whose center lies in a lung of any patient.

Nodules are drawn before (and independently of) the patient they are rendered into, so the
center must be lung in every patient `random_anatomy.draw_anatomy` can produce. A fixed
"safe" patient, built from the extremes of its parameter ranges, stands in for all of them;
keep the two in step when changing either.
"""

from __future__ import annotations

import math

import numpy as np

from lungcls.sources.phantom.anatomy import Anatomy, lung_sd
from lungcls.sources.phantom.geometry import Geometry
from lungcls.sources.phantom.nodules import Margin, Nodule

# A small, central patient; nodule centers go where its lungs are at least _SAFE_MARGIN_MM
# deep, which lies inside the lungs of every patient `draw_anatomy` can produce.
_SAFE_MARGIN_MM = 10.0
_HILUM_CLEARANCE_MM = 38.0


def _safe_anatomy() -> Anatomy:
    # Smallest rib cage, lowest apex, earliest taper, highest domes, biggest heart.
    cav_a, cav_b = 118.0, 80.0
    cy = -2.0
    z_apex = 235.0 / 2 - 10.0
    return Anatomy(
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
        hila=np.array([[-41.0, 15.0, -3.0], [50.0, 16.0, -11.0]]),  # centers of their ranges
    )


_SAFE = _safe_anatomy()


def _safe_sd(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signed distance to the region where nodule centers may go (lung in every patient)."""
    sd = lung_sd(_SAFE, x, y, z) + _SAFE_MARGIN_MM
    for h in _SAFE.hila:
        dist = np.sqrt((x - h[0]) ** 2 + (y - h[1]) ** 2 + (z - h[2]) ** 2)
        sd = np.maximum(sd, _HILUM_CLEARANCE_MM - dist)
    return sd


def sample_nodule(rng: np.random.Generator, geometry: Geometry, malignant: bool) -> Nodule:
    """Draw a random nodule whose center lies in a lung of any phantom patient.

    Malignant: 9-30 mm, lobulated or spiculated, solid or part-solid, never calcified.
    Benign: 4-12 mm, mostly smooth, sometimes calcified, solid. The sizes overlap in 9-12 mm
    so size alone does not give the label away, while a small CNN can still reach a useful
    AUC on the demo's coarse (2.8 mm) phantoms: with an 8-14 mm overlap it stalled near 0.9.

    The center avoids the mediastinum, the hila and the chest wall, keeps the nodule inside
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
        diameter = 9.0 + 21.0 * rng.beta(1.6, 2.6)
        margin: Margin = "spiculated" if rng.uniform() < 0.55 else "lobulated"
        solid = bool(rng.uniform() < 0.7)
        calcified = False
    else:
        diameter = 4.0 + 8.0 * rng.beta(1.5, 2.2)
        margin = "lobulated" if rng.uniform() < 0.12 else "smooth"
        solid = True
        calcified = bool(rng.uniform() < 0.3)
    radius = diameter / 2
    # Spicules reach past the body; keep them in the field of view too.
    reach = radius * (2.0 if margin == "spiculated" else 1.3) + 1.0
    (x0, x1), (y0, y1), (z0, z1) = geometry.extent_mm()
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
