"""Fake people and scans for synthetic batches: what de-identification must remove.

Names, birth dates, addresses, institutions, accession numbers and UIDs are drawn from a
seeded generator, so a batch is reproducible, and are distinctive enough that a leak test
can search the outputs for them (`FakeIdentity.values`, `ScanIdentity.values`). No real
person is behind any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from pydicom.uid import generate_uid

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
# A proper name, spelled as it always was: the synthetic archives' bytes (and with them the
# ledger's SHA-256s and every dataset fingerprint) depend on it.
_INSTITUTIONS = [
    "St. Wilfrid Regional Hospital",
    "Northgate Cancer Centre",
    "Ashcombe University Clinic",
    "Riverside Thoracic Institute",
]


class Scanner(NamedTuple):
    """The equipment a synthetic series says it was acquired on."""

    manufacturer: str
    model: str
    kernel: str  # ConvolutionKernel
    kvp: float


SCANNERS = [
    Scanner("SIEMENS", "SOMATOM Definition AS", "B31f", 120.0),
    Scanner("GE MEDICAL SYSTEMS", "LightSpeed VCT", "STANDARD", 120.0),
    Scanner("Philips", "Brilliance 64", "B", 120.0),
    Scanner("TOSHIBA", "Aquilion ONE", "FC07", 100.0),
]
# The equipment of a shifted acquisition (`synth --shift`): a maker none of SCANNERS has,
# a sharp lung kernel and another tube voltage.
SHIFTED_SCANNER = Scanner("Canon Medical Systems", "Aquilion Prime SP", "FC52", 135.0)


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


def fake_identity(rng: np.random.Generator, number: int) -> FakeIdentity:
    """A fake patient; `number` ends the patient ID, so IDs stay unique within a batch."""
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


def scan_identity(
    rng: np.random.Generator, seed: int, index: int, namespace: str = ""
) -> ScanIdentity:
    """A fake study and series; the UIDs derive from the seed and the scan's index, so a
    batch written again has the same UIDs. `namespace` sets apart the UIDs of batches made
    otherwise from the same seed (a shifted acquisition: other pixels, so other series)."""

    def uid(kind: str) -> str:
        return generate_uid(entropy_srcs=[f"lungcls-synth-{seed}{namespace}", kind, str(index)])

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
