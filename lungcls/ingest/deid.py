"""De-identification at the door: keyed pseudonyms and an allow-list of kept attributes.

Nothing from a DICOM header reaches storage unless it is named in `KEPT_ATTRIBUTES`
(an allow-list is safer than removing the PS3.15 Basic Profile's list one by one: an
identifier in a private tag or an unexpected attribute can never slip through).
Patient IDs and study/series/instance UIDs become HMAC-SHA256 pseudonyms under a secret
key, so the same patient gets the same pseudonym in every batch, and nobody without the
key can go back.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets

from pydicom.dataset import Dataset

from lungcls.config import ConfigError, Settings
from lungcls.io.storage import Storage

log = logging.getLogger(__name__)

LOCAL_KEY_PATH = ".lungcls/pseudonym.key"

# Attribute keyword -> column name. What training, evaluation subgroups and audit need;
# dates, names, institutions, device serial numbers and free text are deliberately absent.
KEPT_ATTRIBUTES: dict[str, str] = {
    "Modality": "modality",
    "SOPClassUID": "sop_class_uid",
    "Manufacturer": "manufacturer",
    "ManufacturerModelName": "manufacturer_model",
    "ConvolutionKernel": "convolution_kernel",
    "KVP": "kvp",
    "SliceThickness": "slice_thickness_mm",
    "BodyPartExamined": "body_part",
    "ContrastBolusAgent": "contrast_agent",
    "BitsStored": "bits_stored",
    "PixelRepresentation": "pixel_representation",
    "PhotometricInterpretation": "photometric",
}


def pseudonym(key: bytes, kind: str, value: str) -> str:
    """A stable, keyed pseudonym such as `patient-3f2a…` for one identifier value."""
    digest = hmac.new(key, f"{kind}:{value.strip()}".encode(), hashlib.sha256).hexdigest()
    return f"{kind}-{digest[:24]}"


def kept_metadata(ds: Dataset) -> dict[str, str | float | int]:
    """The allow-listed attributes of one slice as plain Python values (missing ones absent)."""
    out: dict[str, str | float | int] = {}
    for keyword, column in KEPT_ATTRIBUTES.items():
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = "\\".join(str(v) for v in value)
        elif keyword in {"KVP", "SliceThickness"}:
            value = float(value)
        elif keyword in {"BitsStored", "PixelRepresentation"}:
            value = int(value)
        else:
            value = str(value)
        out[column] = value
    return out


def pseudonym_key(settings: Settings, storage: Storage) -> bytes:
    """The pseudonymisation key: from `LUNGCLS_PSEUDONYM_KEY`, or a per-root key for local roots.

    Shared object storage refuses to run without an explicit key: a key generated there and
    stored beside the data would let anyone who reads the bucket re-link pseudonyms.
    """
    if settings.pseudonym_key is not None:
        key = settings.pseudonym_key.get_secret_value().encode()
        if len(key) < 16:
            raise ConfigError("LUNGCLS_PSEUDONYM_KEY is too short: use at least 16 characters")
        return key
    if not (storage.is_local or storage.root_url.startswith("memory://")):
        raise ConfigError(
            f"root {storage.root_url} is shared object storage: set LUNGCLS_PSEUDONYM_KEY "
            "(a secret of at least 16 characters, e.g. from a Prefect Secret block or the "
            "environment) so that pseudonyms are stable and not stored beside the data"
        )
    # create() is exclusive: two processes starting on a new root agree on one key.
    if not storage.exists(LOCAL_KEY_PATH) and storage.create(
        LOCAL_KEY_PATH, secrets.token_hex(32).encode()
    ):
        log.warning(
            "no LUNGCLS_PSEUDONYM_KEY set: generated a per-root key at %s; "
            "set the variable to use the same pseudonyms across roots",
            storage.url(LOCAL_KEY_PATH),
        )
    return storage.read_bytes(LOCAL_KEY_PATH).strip()
