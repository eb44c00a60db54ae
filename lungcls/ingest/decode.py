"""DICOM archives -> checked CT volumes: the one way lungcls opens DICOM (ingest and predict).

Members are streamed from the archive, decoded one by one (`read_slice`), grouped by
SeriesInstanceUID and assembled into volumes (`assemble_series`). Whatever cannot be used
becomes a quarantine item with a stable code; raw UIDs stay inside the volumes, for the
caller to pseudonymise.
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from dataclasses import dataclass

from lungcls.config import IngestSettings
from lungcls.ingest.archive import ArchiveReader, ArchiveRef, Member
from lungcls.ingest.deid import pseudonym
from lungcls.ingest.dicom_series import CTSlice, CTVolume, Problem, assemble_series, read_slice
from lungcls.io.quarantine import QuarantineItem
from lungcls.io.storage import Storage

IGNORED_MEMBERS = {"DICOMDIR"}  # an index of the files beside it, not an image


@dataclass
class DecodedArchive:
    """The checked CT volumes of one archive and what was refused; raw UIDs still inside."""

    volumes: list[CTVolume]
    quarantined: list[QuarantineItem]
    sha256: str
    bytes_read: int


def decode_archive(
    storage: Storage, ref: ArchiveRef, options: IngestSettings, key: bytes
) -> DecodedArchive:
    """Stream an archive's members into checked series (the one way lungcls opens DICOM).

    Raises ArchiveRejected when the whole archive is refused.
    """
    source = storage.url(ref.key)
    reader = ArchiveReader(storage, ref, options.limits)
    by_series: dict[str, list[CTSlice]] = defaultdict(list)
    quarantined: list[QuarantineItem] = []
    for item in reader.members():
        if isinstance(item, Member):
            if posixpath.basename(item.name) in IGNORED_MEMBERS:
                continue
            decoded = read_slice(item.name, item.data, item.sha256, by_series.keys())
            if isinstance(decoded, Problem):
                quarantined.append(
                    QuarantineItem(
                        level="file",
                        code=decoded.code,
                        message=decoded.message,
                        source_url=source,
                        member=item.name,
                        sha256=item.sha256,
                    )
                )
            else:
                by_series[decoded.series_uid].append(decoded)
        else:
            quarantined.append(
                QuarantineItem(
                    level="file",
                    code=item.code,
                    message=item.message,
                    source_url=source,
                    member=item.name,
                )
            )
    volumes = []
    for series_uid, slices in by_series.items():
        volume = assemble_series(slices, options.slice_position_tolerance_mm)
        if isinstance(volume, Problem):
            message = f"{volume.message} ({len(slices)} files)"
            series_id = pseudonym(key, "series", series_uid)
            quarantined.append(
                QuarantineItem(
                    level="series",
                    code=volume.code,
                    message=message,
                    source_url=source,
                    series_id=series_id,
                )
            )
        else:
            volumes.append(volume)
    return DecodedArchive(volumes, quarantined, reader.sha256, reader.bytes_read)
