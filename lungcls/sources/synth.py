"""Synthetic CT batches: real DICOM files of phantom chests, packed as an inbox delivery.

    lungcls synth --batch demo-001 --scans 40 --positive-fraction 0.5 --seed 0

Writes `inbox/<batch>/archive-NNNN.zip|.tar.gz` (a mix, 1-2 series each) and `labels.csv`.
Each series is a stack of CT Image Storage files with full geometry and rescale tags, and
realistic *fake* identifiers (names, birth dates, addresses, institutions, accession
numbers) so that de-identification can be tested. Positives carry a malignant-looking
nodule; negatives none or a benign-looking one. The same seed gives byte-identical archives.
"""

from __future__ import annotations

import csv
import gzip
import io
import tarfile
import zipfile
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from lungcls.ingest.dicom_series import CT_IMAGE_STORAGE
from lungcls.io.storage import Storage
from lungcls.sources.phantom import Geometry, Nodule, centered_geometry, render_chest, sample_nodule

RESCALE_INTERCEPT = -1024.0
_FIXED_ZIP_TIME = (2020, 1, 1, 0, 0, 0)

_FIRST = [
    "Amira",
    "Jonas",
    "Leila",
    "Mateo",
    "Ingrid",
    "Kwame",
    "Sofia",
    "Hiroshi",
    "Noor",
    "Elena",
    "Tobias",
    "Priya",
    "Olusegun",
    "Marta",
    "Dmitri",
    "Aiko",
]
_LAST = [
    "Okafor",
    "Lindqvist",
    "Haddad",
    "Moreau",
    "Castillo",
    "Novak",
    "Tanaka",
    "Brennan",
    "Achterberg",
    "Delacroix",
    "Oyelaran",
    "Vasquez",
    "Kowalczyk",
    "Abernathy",
]
_STREETS = ["Juniper Lane", "Harbour Road", "Kestrel Avenue", "Quarry Street", "Linden Way"]
_CITIES = ["Eastbrook", "Marrowfield", "Port Ellison", "Castlereagh", "Wrenfold"]
_INSTITUTIONS = [
    "St. Wilfrid Regional Hospital",
    "Northgate Cancer Center",
    "Ashcombe University Clinic",
    "Riverside Thoracic Institute",
]
SCANNERS = [
    ("SIEMENS", "SOMATOM Definition AS", "B31f", 120.0),
    ("GE MEDICAL SYSTEMS", "LightSpeed VCT", "STANDARD", 120.0),
    ("Philips", "Brilliance 64", "B", 120.0),
    ("TOSHIBA", "Aquilion ONE", "FC07", 100.0),
]


@dataclass(frozen=True)
class SynthOptions:
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


@dataclass(frozen=True)
class FakeIdentity:
    """Identifying attributes of one fake patient: what de-identification must remove."""

    patient_id: str
    patient_name: str
    birth_date: str
    sex: str
    address: str
    telephone: str
    other_patient_id: str
    institution: str
    institution_address: str
    referring_physician: str
    operator: str

    def values(self) -> list[str]:
        """The distinctive values a leak test searches for."""
        return [
            self.patient_id,
            self.patient_name,
            self.birth_date,
            self.address,
            self.telephone,
            self.other_patient_id,
            self.institution,
            self.institution_address,
            self.referring_physician,
            self.operator,
        ]


@dataclass(frozen=True)
class ScanIdentity:
    """UIDs and study attributes of one series; all of them are identifiers too."""

    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    accession_number: str
    study_id: str
    study_date: str
    study_time: str
    station_name: str
    device_serial: str

    def values(self) -> list[str]:
        return [
            self.study_uid,
            self.series_uid,
            self.frame_of_reference_uid,
            self.accession_number,
            self.study_date,
            self.device_serial,
        ]


@dataclass
class SynthScan:
    """Ground truth for one generated series (tests compare ingest output against it)."""

    index: int
    patient: FakeIdentity
    scan: ScanIdentity
    label: int | None
    nodule: Nodule | None
    geometry: Geometry
    scanner: tuple[str, str, str, float]
    sop_uids: list[str] = field(default_factory=list)
    archive: str = ""


def fake_identity(rng: np.random.Generator, number: int) -> FakeIdentity:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    year, month, day = rng.integers(1938, 1990), rng.integers(1, 13), rng.integers(1, 29)
    house = rng.integers(2, 480)
    return FakeIdentity(
        patient_id=f"MRN{rng.integers(10**7, 10**8)}{number:03d}",
        patient_name=f"{last}^{first}",
        birth_date=f"{year:04d}{month:02d}{day:02d}",
        sex=str(rng.choice(["F", "M"])),
        address=f"{house} {rng.choice(_STREETS)}, {rng.choice(_CITIES)}",
        telephone=f"+44 {rng.integers(1000, 9999)} {rng.integers(100000, 999999)}",
        other_patient_id=f"NHS{rng.integers(10**9, 10**10)}",
        institution=str(rng.choice(_INSTITUTIONS)),
        institution_address=f"{rng.integers(1, 99)} Infirmary Road, {rng.choice(_CITIES)}",
        referring_physician=f"{rng.choice(_LAST)}^{rng.choice(_FIRST)}^^Dr",
        operator=f"{rng.choice(_LAST)}^{rng.choice(_FIRST)}",
    )


def scan_identity(rng: np.random.Generator, seed: int, index: int) -> ScanIdentity:
    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=[f"lungcls-synth-{seed}", kind, str(index)])

    return ScanIdentity(
        study_uid=uid("study"),
        series_uid=uid("series"),
        frame_of_reference_uid=uid("frame"),
        accession_number=f"ACC{rng.integers(10**8, 10**9)}",
        study_id=f"ST{rng.integers(10**5, 10**6)}",
        study_date=f"20{rng.integers(15, 25)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}",
        study_time=f"{rng.integers(7, 19):02d}{rng.integers(0, 60):02d}00",
        station_name=f"CTSTATION{rng.integers(10, 99)}",
        device_serial=f"SN{rng.integers(10**6, 10**7)}",
    )


def ct_datasets(
    hu: np.ndarray,
    geometry: Geometry,
    patient: FakeIdentity,
    scan: ScanIdentity,
    scanner: tuple[str, str, str, float],
    seed: int,
) -> list[Dataset]:
    """One CT Image Storage dataset per slice of an HU volume (z, y, x), ready to save."""
    manufacturer, model, kernel, kvp = scanner
    stored = np.clip(np.rint(hu) - RESCALE_INTERCEPT, 0, 4095).astype("<u2")
    ox, oy, oz = geometry.origin_xyz_mm
    dz, dy, dx = geometry.spacing_zyx_mm
    out = []
    for k in range(hu.shape[0]):
        sop_uid = generate_uid(entropy_srcs=[f"lungcls-synth-{seed}", scan.series_uid, str(k)])
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.preamble = b"\0" * 128
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = scan.study_uid
        ds.SeriesInstanceUID = scan.series_uid
        ds.FrameOfReferenceUID = scan.frame_of_reference_uid
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
        ds.SeriesDescription = f"AXIAL {dz:g}mm {kernel}"
        ds.Modality = "CT"
        ds.Manufacturer = manufacturer
        ds.ManufacturerModelName = model
        ds.ConvolutionKernel = kernel
        ds.KVP = kvp
        ds.BodyPartExamined = "CHEST"
        ds.SeriesNumber = 2
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{ox:.4f}", f"{oy:.4f}", f"{oz + k * dz:.4f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = f"{oz + k * dz:.4f}"
        ds.SliceThickness = f"{dz:g}"
        ds.PixelSpacing = [f"{dy:g}", f"{dx:g}"]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = f"{RESCALE_INTERCEPT:g}"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        ds.PixelData = stored[k].tobytes()
        out.append(ds)
    return out


def dicom_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def pack_zip(members: list[tuple[str, bytes]]) -> bytes:
    """A zip whose bytes depend only on the members (fixed timestamps and attributes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_FIXED_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def pack_tar_gz(members: list[tuple[str, bytes]]) -> bytes:
    """A tar.gz whose bytes depend only on the members (mtime 0, no owner names)."""
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as archive,
    ):
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def plan_scans(options: SynthOptions) -> list[SynthScan]:
    """Patients, labels, nodules and geometry for every scan, before any pixel is drawn."""
    rng = np.random.default_rng([options.seed, 0])
    scans: list[SynthScan] = []
    n_positive = round(options.scans * options.positive_fraction)
    positives = set(rng.permutation(options.scans)[:n_positive].tolist())
    shape = (options.slices, options.rows, options.columns)
    spacing = (options.slice_spacing_mm, options.pixel_spacing_mm, options.pixel_spacing_mm)
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
        scan = scan_identity(rng, options.seed, index)
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
                else volume_geometry.voxel_to_mm((rng.uniform(0.3, 0.7) * options.slices, 0, 0))[2]
            )
            origin = (*volume_geometry.origin_xyz_mm[:2], z_mm)
            geometry = Geometry((1, options.rows, options.columns), spacing, origin)
        unlabelled = rng.random() < options.unlabelled_fraction
        scanner = SCANNERS[int(rng.integers(len(SCANNERS)))]
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
    hu = render_chest(scan.geometry, rng, nodules, noise_hu=options.noise_hu)
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


def synth_batch(storage: Storage, batch: str, options: SynthOptions) -> list[SynthScan]:
    """Write one synthetic batch under `inbox/<batch>/`; returns the ground truth."""
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
        rel = f"inbox/{batch}/{name}"
        storage.write_atomic(rel, payload)
        for scan in group:
            scan.archive = rel
        number, start = number + 1, start + count
    storage.write_atomic(f"inbox/{batch}/labels.csv", labels_csv(scans).encode())
    return scans
