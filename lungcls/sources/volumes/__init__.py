"""CT volumes (NIfTI, MetaImage, NRRD) plus `SRC/labels.csv` -> an inbox batch of DICOM CT
series and the batch's `labels.csv`.

    lungcls import-volumes SRC --batch NAME [--out ROOT]
        [--test-fraction F] [--val-fraction V] | [--split train|val|test]

SRC is a local folder holding `labels.csv` and the volumes it names (`.nii`, `.nii.gz`,
`.mha`, `.mhd`, `.nrrd`, `.nhdr`), read with SimpleITK. Columns (case-insensitive; others,
e.g. LIDC's `nodule_id` or `reader_malignancy`, are ignored):

    file, patient_id, label          required: the volume (path relative to SRC), its
                                     patient, 0/1 (or negative/positive, benign/malignant)
    mask                             a mask volume on the same grid (voxels > 0: the nodule)
    nodule_x_mm, nodule_y_mm,        the nodule center in SimpleITK's physical coordinates,
      nodule_z_mm                    which are LPS for every format (for NIfTI: the RAS
                                     affine's x and y negated, as DICOM has them)
    nodule_i, nodule_j, nodule_k     or the center as a voxel index (0-based, i fastest,
                                     as SimpleITK and nibabel index a NIfTI file)
    diameter_mm | nodule_diameter_mm the nodule diameter
    split                            train, val or test; one split per patient

Each volume becomes one DICOM CT series (CT Image Storage, ImageType DERIVED\\SECONDARY,
written by `dicom_writer`, the writer of `synth` and `import-images`), the series of one
patient one zip; then the normal pipeline takes the batch in (`lungcls ingest`, `dataset
build`).

Geometry is kept exactly, no voxel resampled: SimpleITK's origin, spacing and direction
become ImagePositionPatient per slice, ImageOrientationPatient, PixelSpacing, SliceThickness
and SpacingBetweenSlices. The index axis closest to the patient's z is cut into slices and
the slices are ordered along the normal (`slices`), so a flipped or permuted volume is
stored as ingest sorts it; a volume with no axis within 45° of z is refused. HU are kept
exactly: int16 values stored as they are (16 bits signed, slope 1, intercept 0); float
voxels are rounded to whole HU (ingest stores int16); values outside int16 or not finite
are refused (`hu_out_of_range`), never clipped.

The nodule center written to labels.csv (LPS mm): the one given; else the mask's centroid
(or, when that voxel is outside the mask, the mask voxel nearest to it); else the center of
the volume.

Patients are pseudonymous: PatientID `vol-<HMAC of the source patient_id under the root's
pseudonym key>`, the same in every batch; no source patient ID, file name or date reaches a
DICOM file, labels.csv or the report. All volumes of a source patient are one patient; each
volume is its own study (which volumes come from one scan is not known). UIDs are keyed
hashes of the batch, the path and the voxels: the same input and key give byte-identical
archives, so ingest skips a re-import.

Splits are patient-level, as `import-images` has them: a `split` column wins; the other
patients all get `--split` (`--split test`: an external set to score a trained model on),
or `--test-fraction`/`--val-fraction` of each label's patients (label: positive when any of
the patient's volumes is), the rest train; neither leaves the split to the pipeline's keyed
hash. Splits are written on patient rows of labels.csv; labels, centers and diameters on
series rows.

Refusals (the row or file is left out, the rest imported; quarantined with its code, and
listed by the CLI, which exits non-zero only when nothing could be imported):

    volume_missing         the row names no volume file, or the file is not in SRC
    volume_unreadable      SimpleITK cannot read the file as its suffix says
    unsupported_format     the file or mask is not .nii/.nii.gz/.mha/.mhd/.nrrd/.nhdr
    unsupported_volume     not one 3-D grey volume, non-numeric voxels, or a sheared grid
    non_axial_volume       no voxel axis within 45° of the patient's z (oblique volume)
    hu_out_of_range        values outside -32768..32767, NaN or infinite
    unlisted_volume        a volume file in SRC that no row names (as file or mask)
    duplicate_file         several rows name one volume (all of them are refused)
    path_outside_source    a file or mask path that is absolute or leaves SRC
    bad_label              the label is not 0/1/negative/positive/benign/malignant
    bad_value              empty patient_id, a bad number, a partial center, a center in
                           mm and voxels, a bad diameter or split
    conflicting_split      a patient's rows give different splits (all its rows refused)
    mask_missing           the mask file is not in SRC
    mask_unreadable        SimpleITK cannot read the mask
    mask_grid_mismatch     the mask is not on the volume's grid
    empty_mask             the mask marks no voxel
    center_outside_volume  the given center lies outside the volume

No SRC/labels.csv, or one without `file`, `patient_id` and `label`, stops the import
(`VolumeImportError`). `import_volumes` returns which series each source row became
(`VolumeImportResult.imported`), in memory only: that mapping names source files, so it is
written nowhere.

Modules: `options` (what is asked), `rows` (SRC/labels.csv), `reader` (SimpleITK: HU, grid,
masks), `slices` (a grid as DICOM slices), `patients` (pseudonyms, splits, labels.csv),
`importer` (writing the batch), `report` (the result and `runs/<run>/import.json`).
"""

from lungcls.sources.volumes.importer import import_volumes
from lungcls.sources.volumes.options import VolumeImportError, VolumeImportOptions
from lungcls.sources.volumes.patients import patient_pseudonym
from lungcls.sources.volumes.reader import Grid, SourceVolume, read_volume
from lungcls.sources.volumes.report import (
    ImportedVolume,
    RefusedVolume,
    VolumeImportReport,
    VolumeImportResult,
)

__all__ = [
    "Grid",
    "ImportedVolume",
    "RefusedVolume",
    "SourceVolume",
    "VolumeImportError",
    "VolumeImportOptions",
    "VolumeImportReport",
    "VolumeImportResult",
    "import_volumes",
    "patient_pseudonym",
    "read_volume",
]
