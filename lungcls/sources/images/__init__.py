"""Folders of JPEG/PNG CT slices -> an inbox batch of DICOM archives plus `labels.csv`.

    lungcls import-images SRC --batch NAME --positive malignant[,other] [--out ROOT]
        [--group-size 10] [--window -600,1500] [--fov-mm 360]
        [--test-range 0.8:1 --val-fraction 0.15 --val-blocks 2 --gap-groups 1]

SRC holds one folder per class (`SRC/malignant/*.jpg`, `SRC/normal/*.png`, ...); classes
named by `--positive` are label 1, every other class 0. Then the normal pipeline takes the
batch in: `lungcls ingest`, `dataset build` in 2D mode with `preprocess.crop_center: image`.

Each image becomes one single-slice series, written as CT Image Storage (ImageType
DERIVED\\SECONDARY: it was re-encoded from a display image), because that is what ingest,
the contracts and predict take, and because a CT rescale lets the preprocessing window work
unchanged. Pixel mapping: the stored value is the 8-bit grey level g (16 bits allocated, 12
stored), and RescaleSlope/RescaleIntercept map it linearly onto the display window the
image is assumed to show, `--window C,W`: HU = C - W/2 + g * W/255 (g = 0 -> C - W/2,
g = 255 -> C + W/2), written as WindowCenter/WindowWidth too. The HU are nominal: a
JPEG has already lost the scanner's values, and sources differ in the window they used.
The default window equals `preprocess.windows`' default, so preprocessing turns g back into
g/255 exactly; a narrower `preprocess.windows` stretches a part of the grey range.

Geometry is nominal too: the longer side of each image spans `--fov-mm`, so pixel spacing
is fov / max(rows, columns) and every image covers the same field whatever its pixel count;
slice thickness `--slice-thickness-mm`; the image center is at the patient origin.

Patients: image sets like these carry no patient IDs, but consecutive case numbers tend to
come from one patient. The case number is the first integer in the file name; within a class,
numbers first..first+K-1 form one pseudonymous patient, the next K the next, and so on
(`--group-size K`; 1 makes every image its own patient). The DICOM PatientID names only the
batch, class and number range, and ingest turns it into a keyed pseudonym like any other.

Splits: by default none is written and the pipeline's keyed hash splits patients. With
`--test-range A:B`, the groups from share A to share B of each class's groups in case-number
order (0.8:1 = the highest fifth of the numbers, one contiguous range) are assigned to test;
with `--val-fraction V` a share V of the groups, in `--val-blocks` contiguous blocks spread
over the rest of the range, to validation; the others to train: a `split` column in
labels.csv. A patient's slices may run past a group boundary, so `--gap-groups` groups on
each side of a held-out block get no label (ingested, never used): no patient is then on
both sides. `--test-range 0:1` makes the whole batch a test set (an external set to score a
trained model on).

Refused images (not an image, unreadable, colour, 16-bit, no case number, a pixel-identical
duplicate of an earlier image) are quarantined under `quarantine/<run>/` with a reason; an
unknown `--positive` class or an empty class folder stops the import. The same source and
options give byte-identical archives, so importing twice makes ingest skip the second copy.

Modules: `options` (what is asked), `folders` (reading and checking SRC), `patients`
(groups, splits, labels.csv), `importer` (writing the batch through `dicom_writer`),
`report` (the summary and `runs/<run>/import.json`).
"""

from lungcls.sources.dicom_writer import nominal_rescale
from lungcls.sources.images.folders import case_number
from lungcls.sources.images.importer import import_images
from lungcls.sources.images.options import ImageImportError, ImportOptions
from lungcls.sources.images.patients import PatientGroup, assign_splits, labels_csv
from lungcls.sources.images.report import ImportReport, ImportResult

__all__ = [
    "ImageImportError",
    "ImportOptions",
    "ImportReport",
    "ImportResult",
    "PatientGroup",
    "assign_splits",
    "case_number",
    "import_images",
    "labels_csv",
    "nominal_rescale",
]
