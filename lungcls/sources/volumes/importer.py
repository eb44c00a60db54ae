"""`import_volumes`: volumes and SRC/labels.csv -> an inbox batch (the package docstring says
why each step is as it is)."""

from __future__ import annotations

import hashlib
import hmac
from collections import defaultdict
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from lungcls.io.quarantine import QuarantineItem, write_quarantine
from lungcls.io.runs import new_run_id
from lungcls.io.storage import Storage
from lungcls.sources.dicom_writer import (
    SIGNED_16,
    PixelMapping,
    SeriesUids,
    ct_series,
    dicom_bytes,
    pack_zip,
)
from lungcls.sources.volumes.options import VolumeImportError, VolumeImportOptions
from lungcls.sources.volumes.patients import (
    Patient,
    assign_splits,
    labels_csv,
    patient_pseudonym,
    split_counts,
)
from lungcls.sources.volumes.reader import (
    SourceVolume,
    VolumeRefused,
    mask_center_mm,
    read_mask,
    read_volume,
)
from lungcls.sources.volumes.report import (
    CenterSource,
    ImportedVolume,
    RefusedVolume,
    VolumeImportReport,
    VolumeImportResult,
    centers_of,
)
from lungcls.sources.volumes.rows import (
    LABELS_FILE,
    Refusal,
    SourceRow,
    read_source_rows,
    unlisted_volumes,
)
from lungcls.sources.volumes.slices import slice_stack

# HU as they are (any int16), shown in a lung window.
HU_MAPPING = PixelMapping(slope=1.0, intercept=0.0, window_center=-600.0, window_width=1500.0)


def import_volumes(
    source: str | Path,
    storage: Storage,
    batch: str,
    options: VolumeImportOptions,
    key: bytes,
    inbox: str = "inbox",
) -> VolumeImportResult:
    """Import the volumes SRC/labels.csv lists as `<inbox>/<batch>/` of `storage`: one zip of
    DICOM CT series per pseudonymous patient, then labels.csv. Refused rows and files go to
    quarantine (and `result.refused`), the report to `runs/<run>/import.json`.

    Args:
        source: SRC, a local folder (SimpleITK reads files).
        key: the root's pseudonym key (`lungcls.ingest.deid.pseudonym_key`): patient
            pseudonyms and UIDs are keyed hashes, the same for the same input and key.
    """
    options.check()
    src = Path(str(source).removeprefix("file://"))
    if not src.is_dir():
        raise VolumeImportError(f"SRC {source} is not a local folder")
    rows, refusals, named = read_source_rows(src)
    refusals += unlisted_volumes(src, named)
    run_id = new_run_id("import")
    batch_dir = f"{inbox}/{batch}"

    imported, patients = write_patient_archives(src, storage, batch, batch_dir, key, rows, refusals)
    imported = with_splits(imported, patients, options)
    if imported:  # last: a batch is complete once its labels are there
        storage.write_atomic(f"{batch_dir}/labels.csv", labels_csv(imported, patients).encode())
    refusals.sort(key=lambda r: (r.row is None, r.row or 0, r.file or ""))
    write_quarantine(storage, run_id, [quarantine_item(src, r) for r in refusals])

    result = VolumeImportResult(
        batch=batch,
        batch_url=storage.url(batch_dir),
        run_id=run_id,
        volumes=len(imported),
        patients=len(patients),
        archives=len(patients),
        splits=split_counts(imported),
        centers=centers_of(imported),
        refused=[
            RefusedVolume(code=r.code, message=r.message, row=r.row, file=r.file) for r in refusals
        ],
        report=f"runs/{run_id}/import.json",
        imported=imported,
    )
    VolumeImportReport.of(result, options).save(storage, result.report)
    return result


def write_patient_archives(
    src: Path,
    storage: Storage,
    batch: str,
    batch_dir: str,
    key: bytes,
    rows: list[SourceRow],
    refusals: list[Refusal],
) -> tuple[list[ImportedVolume], list[Patient]]:
    """Write one zip of DICOM series per pseudonymous patient with a usable row; returns the
    imported volumes (no split yet) and the patients. Refused rows are added to `refusals`."""
    by_patient: dict[str, list[SourceRow]] = defaultdict(list)
    for row in rows:
        by_patient[patient_pseudonym(key, row.patient_id)].append(row)
    imported: list[ImportedVolume] = []
    patients: list[Patient] = []
    for pseudonym in sorted(by_patient):
        series, members = patient_series(
            src, key, batch, pseudonym, by_patient[pseudonym], refusals
        )
        if not series:
            continue
        storage.write_atomic(f"{batch_dir}/{pseudonym}.zip", pack_zip(members))
        imported += series
        # The split its rows give (they agree: conflicts were refused); label: any positive.
        given = next((r.split for r in by_patient[pseudonym] if r.split), None)
        patients.append(Patient(pseudonym, max(s.label for s in series), given))
    return imported, patients


def with_splits(
    imported: list[ImportedVolume], patients: list[Patient], options: VolumeImportOptions
) -> list[ImportedVolume]:
    """Assign each patient a split (set on `patients`); their volumes with it, in rows' order."""
    assign_splits(patients, options)
    split_of = {p.pseudonym: p.split for p in patients}
    return sorted(
        (item.model_copy(update={"split": split_of[item.patient]}) for item in imported),
        key=lambda item: item.row,
    )


def patient_series(
    src: Path,
    key: bytes,
    batch: str,
    pseudonym: str,
    rows: list[SourceRow],
    refusals: list[Refusal],
) -> tuple[list[ImportedVolume], list[tuple[str, bytes]]]:
    """The series of one patient's rows, and their DICOM files as archive members; refused
    rows are added to `refusals`."""
    imported: list[ImportedVolume] = []
    members: list[tuple[str, bytes]] = []
    for row in sorted(rows, key=lambda r: r.file):
        try:
            volume = read_volume(src / row.file)
            center, center_from = nodule_center(src, row, volume)
            stack = slice_stack(volume)
        except VolumeRefused as error:
            refusals.append(Refusal(error.code, str(error), row.row, row.file))
            continue
        number = len(imported) + 1
        uids = series_uids(key, batch, row.file, volume, stack.hu.shape[0])
        header = series_header(pseudonym, number)
        datasets = ct_series(stack.hu, stack.plane, HU_MAPPING, uids, header, SIGNED_16)
        members += [
            (f"s{number:03d}/{k + 1:04d}.dcm", dicom_bytes(ds)) for k, ds in enumerate(datasets)
        ]
        imported.append(
            ImportedVolume(
                row=row.row,
                file=row.file,
                series_uid=uids.series,
                patient=pseudonym,
                label=row.label,
                split=None,
                nodule_center_xyz_mm=(float(center[0]), float(center[1]), float(center[2])),
                center_from=center_from,
                nodule_diameter_mm=row.diameter_mm,
                slices=stack.hu.shape[0],
            )
        )
    return imported, members


def nodule_center(
    src: Path, row: SourceRow, volume: SourceVolume
) -> tuple[np.ndarray, CenterSource]:
    """The nodule center in LPS mm: as given (mm or voxels), else the mask's, else the
    volume's center. A mask named by the row is read and checked even beside a given center.

    Raises:
        VolumeRefused: `center_outside_volume`, or the mask's codes.
    """
    grid = volume.grid
    mask = read_mask(src / row.mask, grid) if row.mask else None
    if row.center_mm is not None or row.center_voxel is not None:
        given: CenterSource = "mm" if row.center_mm is not None else "voxel"
        if row.center_mm is not None:
            center, index = np.asarray(row.center_mm), grid.to_index(row.center_mm)
        else:
            index = np.asarray(row.center_voxel, dtype=np.float64)
            center = grid.to_mm(index)
        if not grid.contains(index):
            raise VolumeRefused(
                "center_outside_volume",
                f"the nodule center given in {given} lies outside the volume (voxel index "
                f"{', '.join(f'{v:.1f}' for v in index)} of a {'x'.join(map(str, grid.size))} "
                "grid; mm are SimpleITK's LPS coordinates: negate x and y of RAS ones)",
            )
        return center, given
    if mask is not None:
        return mask_center_mm(mask, grid), "mask"
    return grid.center_mm, "volume_center"


def series_uids(key: bytes, batch: str, file: str, volume: SourceVolume, slices: int) -> SeriesUids:
    """UIDs from a keyed hash of the batch, the path in SRC and the voxels and grid: the
    same input and key give the same UIDs (a re-import is skipped by ingest), and nobody
    without the key can tell which file a UID came from. One study per volume: which
    volumes of a patient come from one scan is not known."""
    content = hashlib.sha256(volume.hu.tobytes())
    for part in (volume.grid.size, volume.grid.origin, volume.grid.spacing, volume.grid.direction):
        content.update(np.asarray(part, dtype=np.float64).tobytes())
    message = f"lungcls import-volumes volume:{batch}:{file}:{content.hexdigest()}"
    digest = hmac.new(key, message.encode(), hashlib.sha256).hexdigest()

    def uid(kind: str, *extra: str) -> str:
        return generate_uid(entropy_srcs=["lungcls-import-volumes", digest, kind, *extra])

    instances = tuple(uid("instance", str(k)) for k in range(slices))
    return SeriesUids(uid("study"), uid("series"), uid("frame"), instances)


def series_header(pseudonym: str, series_number: int) -> Dataset:
    """What every slice of a volume carries besides the image: a pseudonymous patient and
    nothing else that could name the source (no file name, date or institution)."""
    header = Dataset()
    header.PatientID = pseudonym
    header.PatientName = header.PatientBirthDate = header.PatientSex = ""
    header.StudyDate = header.StudyTime = header.AccessionNumber = ""
    header.ReferringPhysicianName = header.StudyID = header.Manufacturer = ""
    header.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    header.DerivationDescription = (
        "volume file re-encoded by lungcls import-volumes; HU and geometry as read "
        "(SimpleITK, LPS), voxels reordered only"
    )
    header.BurnedInAnnotation = "NO"
    header.SeriesNumber = series_number
    return header


def quarantine_item(src: Path, refusal: Refusal) -> QuarantineItem:
    """The operator's record of a refusal: a labels row (with the path it names), or a file
    no row names. Like every import's records, it holds paths in SRC."""
    if refusal.row is not None:
        return QuarantineItem(
            level="labels",
            code=refusal.code,
            message=refusal.message,
            source_url=(src / LABELS_FILE).resolve().as_uri(),
            member=refusal.file,
            row=refusal.row,
        )
    return QuarantineItem(
        level="file",
        code=refusal.code,
        message=refusal.message,
        source_url=(src / str(refusal.file)).resolve().as_uri(),
        member=refusal.file,
    )
