"""What a volume import did: the result `import_volumes` returns, and the report it leaves.

`VolumeImportResult` is for the caller: the summary `lungcls import-volumes` prints, the
refusals with their rows and paths in SRC, and, in memory only (never serialised), which
series each source row became (`imported`), so that a benchmark can join its samples back
to the source's own columns. `VolumeImportReport` (`runs/<run>/import.json`) keeps counts
and options only: no path, row or identifier of the source.
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar, Literal

from pydantic import Field

from lungcls.dataset.manifest import SplitCounts, count_lines
from lungcls.io.records import Part, Record
from lungcls.sources.volumes.options import VolumeImportOptions

CenterSource = Literal["mm", "voxel", "mask", "volume_center"]


class RefusedVolume(Part):
    """A row of SRC/labels.csv or a file in SRC that was not imported, and why."""

    code: str
    message: str
    row: int | None = None  # data row of SRC/labels.csv (1 = the first after the header)
    file: str | None = None  # the path in SRC

    def line(self) -> str:
        where = " ".join(p for p in (f"row {self.row}" if self.row else "", self.file or "") if p)
        return f"  refused {where}: {self.code}: {self.message}"


class ImportedVolume(Part):
    """One source row as imported (in memory only: it names the source file)."""

    row: int
    file: str
    series_uid: str  # the DICOM SeriesInstanceUID written (ingest pseudonymises it)
    patient: str  # the pseudonymous PatientID written
    label: int
    split: str | None  # None: the pipeline's keyed hash decides
    nodule_center_xyz_mm: tuple[float, float, float]  # LPS, as written to labels.csv
    center_from: CenterSource
    nodule_diameter_mm: float | None
    slices: int


class VolumeImportResult(Part):
    """The summary of one volume import."""

    batch: str
    batch_url: str
    run_id: str
    volumes: int
    patients: int
    archives: int
    splits: SplitCounts  # volumes by assigned split and label; empty when none assigned
    centers: dict[str, int]  # volumes by where their nodule center came from
    refused: list[RefusedVolume]
    report: str  # the VolumeImportReport, under the storage root
    imported: list[ImportedVolume] = Field(default_factory=list, exclude=True)

    def by_file(self) -> dict[str, ImportedVolume]:
        """The imported volumes by their path in SRC."""
        return {item.file: item for item in self.imported}

    def summary_lines(self, report_url: str) -> list[str]:
        """What `lungcls import-volumes` prints; `report_url`: where the report is."""
        centers = ", ".join(f"{n} from {where}" for where, n in sorted(self.centers.items()))
        return [
            f"{self.run_id}: {self.volumes} volumes of {self.patients} pseudonymous patients "
            f"in {self.archives} archives, {len(self.refused)} refused; batch at "
            f"{self.batch_url}; report {report_url}",
            *([f"  nodule centers: {centers}"] if centers else []),
            *count_lines(self.splits),
            *(r.line() for r in self.refused),
        ]


def centers_of(imported: list[ImportedVolume]) -> dict[str, int]:
    return dict(sorted(Counter(item.center_from for item in imported).items()))


class VolumeImportReport(Record):
    """`runs/<run>/import.json` of an import-volumes run: counts and options, nothing that
    names the source."""

    SCHEMA: ClassVar[str] = "lungcls.import-volumes/1"

    batch: str
    run_id: str
    volumes: int
    patients: int
    archives: int
    splits: SplitCounts
    centers: dict[str, int]
    refused: dict[str, int]  # by code
    options: VolumeImportOptions
    pixel_mapping: str = "int16 HU stored as they are: 16 bits signed, slope 1, intercept 0"
    geometry: str = (
        "SimpleITK's origin, spacing and direction (LPS) as ImagePositionPatient per slice, "
        "ImageOrientationPatient, PixelSpacing, SliceThickness = SpacingBetweenSlices"
    )

    @classmethod
    def of(cls, result: VolumeImportResult, options: VolumeImportOptions) -> VolumeImportReport:
        return cls(
            **result.model_dump(exclude={"batch_url", "refused", "report", "imported"}),
            refused=dict(sorted(Counter(r.code for r in result.refused).items())),
            options=options,
        )
