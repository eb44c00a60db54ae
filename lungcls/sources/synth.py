"""Synthetic CT batches: real DICOM files of phantom chests, packed as an inbox delivery.

    lungcls synth --batch demo-001 --scans 40 --positive-fraction 0.5 --seed 0

Writes `<inbox>/<batch>/archive-NNNN.zip|.tar.gz` (a mix, 1-2 series each) and `labels.csv`,
under the inbox folder of the settings (`ingest.inbox`). Each series is a stack of CT Image
Storage files with full geometry and rescale tags (`dicom_writer`), and realistic *fake*
identifiers (`fake_identities`: names, birth dates, addresses, institutions, accession
numbers) so that de-identification can be tested. Positives carry a malignant-looking
nodule; negatives none or a benign-looking one. The same seed gives byte-identical archives.

    lungcls synth --batch later-001 --seed 1 --shift

`--shift` (`AcquisitionShift`) writes the batch as another site would have acquired it:
another manufacturer, model, kernel and tube voltage, thicker slices over the same length
of chest, every HU offset and more noise. Drift monitoring (`lungcls.monitor`) must flag it.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lungcls.io.storage import Storage
from lungcls.sources.dicom_writer import (
    STORED_MAX,
    PixelMapping,
    SeriesUids,
    SlicePlane,
    ct_series,
    dicom_bytes,
    pack_tar_gz,
    pack_zip,
)
from lungcls.sources.fake_identities import (
    SCANNERS,
    SHIFTED_SCANNER,
    FakeIdentity,
    ScanIdentity,
    Scanner,
    fake_identity,
    scan_identity,
)
from lungcls.sources.phantom import Geometry, Nodule, centered_geometry, render_chest, sample_nodule

# A 12-bit scanner's mapping (slope 1: stored = HU + 1024), shown in a lung window.
SCANNER_MAPPING = PixelMapping(
    slope=1.0, intercept=-1024.0, window_center=-600.0, window_width=1500.0
)


@dataclass(frozen=True)
class AcquisitionShift:
    """An acquisition unlike that of unshifted batches, whose scanners are `SCANNERS`: all
    series from `scanner`, slices `slice_thickness_mm` thick (as many fewer as cover the
    same length), every HU raised by `hu_offset` (a miscalibrated scanner) and Gaussian
    noise of `extra_noise_hu` added to the usual (a sharp kernel, a lower dose). The
    defaults make each of these plain in a drift report: an unseen maker and kernel, 5 mm
    slices instead of 2.5 mm (the thickest the series contract admits), lung parenchyma
    60 HU denser and about 2.7 times as noisy."""

    scanner: Scanner = SHIFTED_SCANNER
    slice_thickness_mm: float = 5.0
    hu_offset: float = 60.0
    extra_noise_hu: float = 50.0

    def namespace(self) -> str:
        """Sets apart the UIDs of a shifted batch from those of the same seed unshifted (or
        shifted otherwise): the same series UID must never carry other pixels."""
        return (
            f"-shift-{self.scanner.model}-{self.slice_thickness_mm:g}-{self.hu_offset:g}-"
            f"{self.extra_noise_hu:g}"
        )


@dataclass(frozen=True)
class SynthOptions:
    """What a synthetic batch holds: how many scans, their grid, noise and labels."""

    scans: int = 40
    positive_fraction: float = 0.5
    slices: int = 48
    rows: int = 128
    columns: int = 128
    pixel_spacing_mm: float = 2.8
    slice_spacing_mm: float = 2.5
    noise_hu: float = 20.0
    mode: Literal["volume", "slice"] = "volume"
    unlabelled_fraction: float = 0.0
    seed: int = 0
    shift: AcquisitionShift | None = None  # None: the usual acquisition (`SCANNERS`)


@dataclass
class SynthScan:
    """Ground truth for one generated series (tests compare ingest output against it)."""

    index: int
    patient: FakeIdentity
    scan: ScanIdentity
    label: int | None
    nodule: Nodule | None
    geometry: Geometry
    scanner: Scanner
    sop_uids: list[str] = field(default_factory=list)
    archive: str = ""


def ct_datasets(
    hu: np.ndarray,
    geometry: Geometry,
    patient: FakeIdentity,
    scan: ScanIdentity,
    scanner: Scanner,
    seed: int,
) -> list[Dataset]:
    """One CT Image Storage dataset per slice of an HU volume (z, y, x), ready to save."""
    stored = np.clip(np.rint(hu) - SCANNER_MAPPING.intercept, 0, STORED_MAX).astype("<u2")
    instances = tuple(
        generate_uid(entropy_srcs=[f"lungcls-synth-{seed}", scan.series_uid, str(k)])
        for k in range(hu.shape[0])
    )
    uids = SeriesUids(scan.study_uid, scan.series_uid, scan.frame_of_reference_uid, instances)
    header = series_header(patient, scan, scanner, geometry.spacing_zyx_mm[0])
    return ct_series(stored, SlicePlane.axial_stack(geometry), SCANNER_MAPPING, uids, header)


def series_header(
    patient: FakeIdentity, scan: ScanIdentity, scanner: Scanner, slice_step_mm: float
) -> Dataset:
    """Who and what a synthetic series is: the fake patient, study, equipment."""
    ds = Dataset()
    ds.PatientName = patient.patient_name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAddress = patient.address
    ds.PatientTelephoneNumbers = patient.telephone
    ds.OtherPatientIDs = patient.other_patient_id
    ds.InstitutionName = patient.institution
    ds.InstitutionAddress = patient.institution_address
    ds.ReferringPhysicianName = patient.referring_physician
    ds.OperatorsName = patient.operator
    ds.AccessionNumber = scan.accession_number
    ds.StudyID = scan.study_id
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = scan.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = scan.study_time
    ds.StationName = scan.station_name
    ds.DeviceSerialNumber = scan.device_serial
    ds.StudyDescription = "CT CHEST LOW DOSE"
    ds.SeriesDescription = f"AXIAL {slice_step_mm:g}mm {scanner.kernel}"
    ds.Manufacturer = scanner.manufacturer
    ds.ManufacturerModelName = scanner.model
    ds.ConvolutionKernel = scanner.kernel
    ds.KVP = scanner.kvp
    ds.BodyPartExamined = "CHEST"
    ds.SeriesNumber = 2
    return ds


def plan_scans(options: SynthOptions) -> list[SynthScan]:
    """Patients, labels, nodules and geometry for every scan, before any pixel is drawn."""
    rng = np.random.default_rng([options.seed, 0])
    scans: list[SynthScan] = []
    n_positive = round(options.scans * options.positive_fraction)
    positives = set(rng.permutation(options.scans)[:n_positive].tolist())
    shift = options.shift
    slices, slice_step = options.slices, options.slice_spacing_mm
    if shift is not None:  # thicker slices over the same length of chest
        slices = max(1, round(options.slices * slice_step / shift.slice_thickness_mm))
        slice_step = shift.slice_thickness_mm
    shape = (slices, options.rows, options.columns)
    spacing = (slice_step, options.pixel_spacing_mm, options.pixel_spacing_mm)
    volume_geometry = centered_geometry(shape, spacing)
    patient, patient_number = None, 0
    for index in range(options.scans):
        label = 1 if index in positives else 0
        previous = scans[-1] if scans else None
        # Every fifth scan is a second series of the previous patient, in the same study.
        second_series = previous is not None and index % 5 == 4 and previous.label == label
        if not second_series:
            patient = fake_identity(rng, patient_number)
            patient_number += 1
        scan = scan_identity(rng, options.seed, index, shift.namespace() if shift else "")
        if second_series and previous is not None:
            scan = replace(scan, study_uid=previous.scan.study_uid)
            nodule = previous.nodule
        elif label == 1:
            nodule = sample_nodule(rng, volume_geometry, malignant=True)
        else:
            nodule = sample_nodule(rng, volume_geometry, malignant=False)
            nodule = nodule if rng.random() < 0.6 else None
        geometry = volume_geometry
        if options.mode == "slice":
            z_mm = (
                nodule.center_xyz_mm[2]
                if nodule
                else volume_geometry.voxel_to_mm((rng.uniform(0.3, 0.7) * slices, 0, 0))[2]
            )
            origin = (*volume_geometry.origin_xyz_mm[:2], z_mm)
            geometry = Geometry((1, options.rows, options.columns), spacing, origin)
        unlabelled = rng.random() < options.unlabelled_fraction
        scanner = SCANNERS[int(rng.integers(len(SCANNERS)))]  # drawn even when shifted
        scanner = shift.scanner if shift is not None else scanner
        assert patient is not None
        scans.append(
            SynthScan(
                index, patient, scan, None if unlabelled else label, nodule, geometry, scanner
            )
        )
    return scans


def render_scan(scan: SynthScan, options: SynthOptions) -> list[tuple[str, bytes]]:
    """The DICOM files of one scan as (member name, bytes), named without identifiers."""
    rng = np.random.default_rng([options.seed, 1, scan.index])
    nodules = [scan.nodule] if scan.nodule else []
    shift = options.shift
    noise_hu = (
        options.noise_hu if shift is None else math.hypot(options.noise_hu, shift.extra_noise_hu)
    )
    hu = render_chest(scan.geometry, rng, nodules, noise_hu=noise_hu)
    if shift is not None:
        hu += shift.hu_offset  # ct_datasets clips to the 12-bit range, as a scanner would
    datasets = ct_datasets(hu, scan.geometry, scan.patient, scan.scan, scan.scanner, options.seed)
    scan.sop_uids = [str(ds.SOPInstanceUID) for ds in datasets]
    folder = f"scan-{scan.index:04d}"
    return [(f"{folder}/{k + 1:04d}.dcm", dicom_bytes(ds)) for k, ds in enumerate(datasets)]


def labels_csv(scans: list[SynthScan]) -> str:
    """labels.csv for a batch, keyed mostly by series UID, some rows by study or patient."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "series_uid",
            "study_uid",
            "patient_id",
            "label",
            "nodule_x_mm",
            "nodule_y_mm",
            "nodule_z_mm",
            "nodule_diameter_mm",
        ]
    )
    patients = [s.patient.patient_id for s in scans]
    for scan in scans:
        if scan.label is None:
            continue
        key = [scan.scan.series_uid, "", ""]
        if patients.count(scan.patient.patient_id) == 1 and scan.index % 7 == 3:
            key = ["", "", scan.patient.patient_id]
        value = str(scan.label) if scan.index % 11 != 5 else ["negative", "positive"][scan.label]
        center = ["", "", "", ""]
        if scan.nodule is not None:
            center = [f"{v:.2f}" for v in scan.nodule.center_xyz_mm]
            center.append(f"{scan.nodule.diameter_mm:.2f}")
        writer.writerow([*key, value, *center])
    return buffer.getvalue()


def synth_batch(
    storage: Storage, batch: str, options: SynthOptions, inbox: str = "inbox"
) -> list[SynthScan]:
    """Write one synthetic batch under `<inbox>/<batch>/` (`inbox`: the settings'
    `ingest.inbox`); returns the ground truth."""
    scans = plan_scans(options)
    rng = np.random.default_rng([options.seed, 2])
    number, start = 0, 0
    while start < len(scans):
        count = int(rng.integers(1, 3))
        group = scans[start : start + count]
        members = [m for scan in group for m in render_scan(scan, options)]
        use_zip = number % 2 == 0
        name = f"archive-{number:04d}" + (".zip" if use_zip else ".tar.gz")
        payload = pack_zip(members) if use_zip else pack_tar_gz(members)
        rel = f"{inbox}/{batch}/{name}"
        storage.write_atomic(rel, payload)
        for scan in group:
            scan.archive = rel
        number, start = number + 1, start + count
    storage.write_atomic(f"{inbox}/{batch}/labels.csv", labels_csv(scans).encode())
    return scans
