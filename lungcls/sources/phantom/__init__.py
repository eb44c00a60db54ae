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

Modules:
    geometry: `Geometry` (voxel grid in patient mm) and `centered_geometry`.
    anatomy: one patient's analytic anatomy and its signed-distance functions.
    random_anatomy: drawing a random patient, with its airway and vessel trees.
    raster: partial-volume ramps, blending and tube rasterisation.
    nodules: `Nodule`, its hash-derived shape and its rasterisation.
    placement: `sample_nodule`, which puts a random nodule in a lung of any patient.
    bones: ribs, sternum and spine.
    render: `render_chest`, which paints all of the above plus noise.
"""

from lungcls.sources.phantom.geometry import Geometry, centered_geometry
from lungcls.sources.phantom.nodules import Margin, Nodule
from lungcls.sources.phantom.placement import sample_nodule
from lungcls.sources.phantom.render import HU_MAX, HU_MIN, render_chest

__all__ = [
    "HU_MAX",
    "HU_MIN",
    "Geometry",
    "Margin",
    "Nodule",
    "centered_geometry",
    "render_chest",
    "sample_nodule",
]
