"""`import_images`: class folders of JPEG/PNG slices -> an inbox batch (see the package
docstring for the choices behind each step)."""

from __future__ import annotations

import posixpath

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lungcls.io.quarantine import write_quarantine
from lungcls.io.runs import new_run_id
from lungcls.io.storage import Storage
from lungcls.sources.dicom_writer import (
    PixelMapping,
    SeriesUids,
    SlicePlane,
    ct_series,
    dicom_bytes,
    nominal_rescale,
    pack_zip,
)
from lungcls.sources.images.folders import SourceImage, grey_pixels, read_class_folders
from lungcls.sources.images.options import ImportOptions
from lungcls.sources.images.patients import (
    PatientGroup,
    group_patients,
    labels_csv,
    split_counts,
)
from lungcls.sources.images.report import (
    ClassCount,
    GreyMapping,
    ImportReport,
    ImportResult,
    PatientGroupEntry,
    RefusedFile,
)


def import_images(
    source_url: str,
    storage: Storage,
    batch: str,
    options: ImportOptions,
    inbox: str = "inbox",
    s3_endpoint_url: str | None = None,
) -> ImportResult:
    """Import SRC's class folders as `<inbox>/<batch>/` of `storage`: archives, labels.csv;
    refused files go to quarantine, the report to `runs/<run>/import.json`."""
    options.check()
    source = Storage(source_url, s3_endpoint_url)
    images, refused = read_class_folders(source, options.positive)
    groups = group_patients(images, options)
    run_id = new_run_id("import")
    batch_dir = f"{inbox}/{batch}"
    for group in groups:
        archive = group_archive(source, group, batch, options)
        storage.write_atomic(f"{batch_dir}/{group.archive}", archive)
    # Last: a batch is complete once its labels are there (ingest reads them with it).
    storage.write_atomic(f"{batch_dir}/labels.csv", labels_csv(groups, batch).encode())
    write_quarantine(storage, run_id, refused)

    result = ImportResult(
        batch=batch,
        batch_url=storage.url(batch_dir),
        run_id=run_id,
        images=sum(len(g.images) for g in groups),
        patients=len(groups),
        archives=len(groups),
        classes=class_counts(images, groups, options),
        splits=split_counts(groups),
        quarantined=[RefusedFile.of(item) for item in refused],
        report=f"runs/{run_id}/import.json",
    )
    slope, intercept = nominal_rescale(options.window)
    report = ImportReport(
        **dict(result),
        source=source.root_url,
        options=options,
        pixel_mapping=GreyMapping(
            rescale_slope=slope, rescale_intercept=intercept, window_center_width=options.window
        ),
        groups=[
            PatientGroupEntry(
                patient=g.patient_id,
                label=g.label,
                split=g.split,
                images=len(g.images),
                archive=g.archive,
            )
            for g in groups
        ],
    )
    report.save(storage, result.report)
    return result


def class_counts(
    images: dict[str, list[SourceImage]], groups: list[PatientGroup], options: ImportOptions
) -> dict[str, ClassCount]:
    """Label, images and patient groups of each class folder."""
    return {
        name: ClassCount(
            label=int(name in options.positive),
            images=len(members),
            patients=sum(g.class_name == name for g in groups),
        )
        for name, members in images.items()
    }


def group_archive(
    source: Storage, group: PatientGroup, batch: str, options: ImportOptions
) -> bytes:
    """The zip of one patient group: one single-slice DICOM file per image."""
    members = []
    for image in group.images:
        grey = grey_pixels(source.read_bytes(image.rel))
        (dataset,) = image_series(image, grey, group, batch, options)
        members.append((f"{posixpath.splitext(image.name)[0]}.dcm", dicom_bytes(dataset)))
    return pack_zip(members)


def image_series(
    image: SourceImage,
    grey: np.ndarray,
    group: PatientGroup,
    batch: str,
    options: ImportOptions,
) -> list[Dataset]:
    """One image as a single-slice CT series: grey levels stored as they are, mapped onto
    the window; UIDs from the batch, class and file name, the study and frame of reference
    shared by the patient group."""

    def uid(kind: str) -> str:
        parts = [f"lungcls-import-{batch}", image.class_name, kind]
        if kind in ("study", "frame"):
            return generate_uid(entropy_srcs=[*parts, group.patient_id])
        return generate_uid(entropy_srcs=[*parts, image.name])

    rows, columns = grey.shape
    spacing_mm = options.fov_mm / max(rows, columns)
    plane = SlicePlane.centered_image(rows, columns, spacing_mm, options.slice_thickness_mm)
    uids = SeriesUids(uid("study"), uid("series"), uid("frame"), (uid("instance"),))
    header = Dataset()
    header.PatientID = f"{batch}:{group.patient_id}"  # no person behind it; ingest hashes it
    header.PatientName = header.PatientBirthDate = header.PatientSex = ""
    header.StudyDate = header.StudyTime = header.AccessionNumber = ""
    header.ReferringPhysicianName = header.StudyID = header.Manufacturer = ""
    header.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    header.DerivationDescription = (
        "8-bit display image re-encoded by lungcls import-images; HU nominal, "
        f"grey 0..255 mapped onto window {options.window[0]:g}/{options.window[1]:g}"
    )
    header.BurnedInAnnotation = "NO"
    header.SeriesNumber = image.number
    mapping = PixelMapping.grey_window(options.window)
    return ct_series(grey[None], plane, mapping, uids, header)
