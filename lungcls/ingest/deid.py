"""De-identification at the door: keyed pseudonyms and an allow-list of kept attributes.

Nothing from a DICOM header reaches storage unless it is named in `KEPT_ATTRIBUTES`
(an allow-list is safer than removing the PS3.15 Basic Profile's list one by one: an
identifier in a private tag or an unexpected attribute can never slip through).
Patient IDs and study/series/instance UIDs become HMAC-SHA256 pseudonyms under a secret
key, so the same patient gets the same pseudonym in every batch, and nobody without the
key can go back. One root, one key: the key's fingerprint is recorded in the ledger on first
use and any other key is refused (`pseudonym_key`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import uuid
from datetime import UTC, datetime
from typing import ClassVar

from pydicom.dataset import Dataset

from lungcls.config import ConfigError, Settings
from lungcls.io.records import Record
from lungcls.io.storage import Storage

log = logging.getLogger(__name__)

LOCAL_KEY_PATH = ".lungcls/pseudonym.key"
KEY_FINGERPRINT_PATH = "ledger/pseudonym-key.json"
# The fingerprint is the HMAC of this fixed message under the key (a new message would need
# a new KeyFingerprint schema version: every recorded fingerprint would change).
_FINGERPRINT_MESSAGE = b"lungcls pseudonym-key fingerprint/1"
# The key `lungcls demo` uses (`lungcls.sources.demo` says why): public, so it is refused on
# any root but a local one holding nothing but the demo batch.
DEMO_KEY_BYTES = b"lungcls-demo-key-synthetic-only-13"

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
    """The allow-listed attributes of one slice as plain Python values (missing ones absent).

    A value that does not fit its column (a KVP of "120kV", a multi-valued or non-finite
    number, bytes, an element pydicom cannot read) is dropped, never fatal and never quoted:
    these columns describe the scan, the volume does not depend on them, and they are read
    from the first file of a series only, so refusing the file would make a series' fate
    depend on the order of its files.
    """
    numeric: dict[str, type[float] | type[int]] = {
        "KVP": float,
        "SliceThickness": float,
        "BitsStored": int,
        "PixelRepresentation": int,
    }
    out: dict[str, str | float | int] = {}
    for keyword, column in KEPT_ATTRIBUTES.items():
        try:
            value = ds.get(keyword)
            multiple = isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"
            if value is None or value == "" or isinstance(value, bytes):
                continue
            if keyword in numeric:
                number = float(value)  # raises on text, lists and multi-values
                if not abs(number) < float("inf"):  # NaN and infinities
                    continue
                if numeric[keyword] is int:
                    if not number.is_integer():
                        continue
                    number = int(number)
                out[column] = number
            elif keyword == "ContrastBolusAgent":
                # PS3.15 Basic Profile: D (free text, may name people or sites). Only
                # whether contrast was given is kept.
                out[column] = "given"
            elif multiple:
                out[column] = "\\".join(str(v) for v in value)
            else:
                out[column] = str(value)
        except Exception:  # pydicom converts on access and raises many types: drop the value
            continue
    return out


class KeyRefused(ConfigError):
    """The pseudonym key cannot be used on this root; `code` is stable, the message says
    what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class KeyFingerprint(Record):
    """Which key a root's pseudonyms are made with (`ledger/pseudonym-key.json`).

    A truncated HMAC of a fixed message under the key: enough to tell whether a key is the
    recorded one, no help in finding it (whatever could be tried against it can already be
    tried against any pseudonym in the series store).
    """

    SCHEMA: ClassVar[str] = "lungcls.pseudonym-key/1"

    fingerprint: str
    method: str = f"HMAC-SHA256(key, {_FINGERPRINT_MESSAGE.decode()!r}), first 16 hex digits"
    key_source: str  # where the key came from when it was recorded
    recorded_at: str  # ISO 8601, UTC


def key_fingerprint(key: bytes) -> str:
    """The fingerprint `KeyFingerprint` records for `key` (never the key)."""
    return hmac.new(key, _FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()[:16]


def pseudonym_key(settings: Settings, storage: Storage) -> bytes:
    """The pseudonymisation key, checked against the one this root's pseudonyms are made with.

    The key is `LUNGCLS_PSEUDONYM_KEY`, or for a local root a generated per-root key file
    readable by its owner only. Shared object storage refuses to run without an explicit key:
    a key generated there and stored beside the data would let anyone who reads the bucket
    re-link pseudonyms. Every stage (ingest, dataset build, predict) gets its key here, so
    the checks hold for all of them: the first use records the key's fingerprint in the
    ledger and another key is refused from then on (the same patient would get a second
    pseudonym: two patients, perhaps in two splits); the public demo key is refused on any
    root but a local one that holds nothing but the demo batch.
    """
    key, source = _configured_key(settings, storage)
    if hmac.compare_digest(key, DEMO_KEY_BYTES):
        check_demo_root(settings, storage)
        source = "the public demo key"
    _check_fingerprint(storage, key, source)
    return key


def _configured_key(settings: Settings, storage: Storage) -> tuple[bytes, str]:
    """The key and where it came from (for messages: never the key itself)."""
    if settings.pseudonym_key is not None:
        key = settings.pseudonym_key.get_secret_value().encode()
        if len(key) < 16:
            raise KeyRefused(
                "pseudonym_key_too_short",
                "LUNGCLS_PSEUDONYM_KEY is too short: use at least 16 characters",
            )
        return key, "LUNGCLS_PSEUDONYM_KEY"
    if not (storage.is_local or storage.root_url.startswith("memory://")):
        raise KeyRefused(
            "pseudonym_key_required",
            f"root {storage.root_url} is shared object storage: set LUNGCLS_PSEUDONYM_KEY "
            "(a secret of at least 16 characters, e.g. from a Prefect Secret block or the "
            "environment) so that pseudonyms are stable and not stored beside the data",
        )
    # Exclusive: two processes starting on a new root agree on one key.
    if not storage.exists(LOCAL_KEY_PATH) and _create_owner_only(
        storage, LOCAL_KEY_PATH, secrets.token_hex(32).encode()
    ):
        log.warning(
            "no LUNGCLS_PSEUDONYM_KEY set: generated a per-root key at %s (readable by its "
            "owner only); set the variable to use the same pseudonyms across roots",
            storage.url(LOCAL_KEY_PATH),
        )
    _keep_owner_only(storage, LOCAL_KEY_PATH)
    key = storage.read_bytes(LOCAL_KEY_PATH).strip()
    if len(key) < 16:
        raise KeyRefused(
            "pseudonym_key_too_short",
            f"{storage.url(LOCAL_KEY_PATH)} holds no usable key (under 16 characters): "
            "restore it from a backup, or set LUNGCLS_PSEUDONYM_KEY to the key it held",
        )
    return key, f"the root's key file {LOCAL_KEY_PATH}"


def _create_owner_only(storage: Storage, rel: str, data: bytes) -> bool:
    """Create `rel` with mode 0o600 (only if it does not exist); False if another process
    created it first. Written whole before it appears: nobody reads half a key."""
    if not storage.is_local:
        return storage.create(rel, data)  # memory://: no permissions to set
    path = storage.path(rel)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    temp = f"{path}.{uuid.uuid4().hex}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(temp)


def _keep_owner_only(storage: Storage, rel: str) -> None:
    """Tighten a key file that others can read (one written by lungcls before 0.2)."""
    if not storage.is_local:
        return
    path = storage.path(rel)
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o600)
        log.warning("%s was readable by others: made it readable by its owner only", path)


def check_demo_root(settings: Settings, storage: Storage) -> None:
    """Refuse the public demo key anywhere but a local root holding only the demo batch:
    pseudonyms under a published key protect nothing. `lungcls demo` asks before it writes
    the demo batch; `pseudonym_key` asks again in every stage."""
    from lungcls.sources.demo import demo_root_problem

    what_to_do = (
        "use the demo key only for `lungcls demo` on a root of its own; for any other data "
        "set LUNGCLS_PSEUDONYM_KEY to a secret of your own (at least 16 characters), or "
        "leave it unset on a local root to have a per-root key generated"
    )
    if not (storage.is_local or storage.root_url.startswith("memory://")):
        raise KeyRefused(
            "demo_key_on_shared_storage",
            f"the public demo pseudonym key is set for {storage.root_url}: {what_to_do}",
        )
    problem = demo_root_problem(storage, settings.ingest.inbox)
    if problem is not None:
        raise KeyRefused(
            "demo_key_on_real_root",
            f"the public demo pseudonym key is set, but {storage.root_url} holds more than "
            f"the demo batch ({problem}): {what_to_do}",
        )


def _check_fingerprint(storage: Storage, key: bytes, source: str) -> None:
    """Record the key's fingerprint on first use; refuse a key that is not the recorded one."""
    fingerprint = key_fingerprint(key)
    if not storage.exists(KEY_FINGERPRINT_PATH):
        first = KeyFingerprint(
            fingerprint=fingerprint,
            key_source=source,
            recorded_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        if first.save(storage, KEY_FINGERPRINT_PATH, exclusive=True):
            return
    recorded = KeyFingerprint.load(storage, KEY_FINGERPRINT_PATH)
    if not hmac.compare_digest(recorded.fingerprint, fingerprint):
        raise KeyRefused(
            "pseudonym_key_mismatch",
            f"{source} is not the key the pseudonyms of {storage.root_url} are made with "
            f"(its fingerprint is {fingerprint}; {storage.url(KEY_FINGERPRINT_PATH)} records "
            f"{recorded.fingerprint}, from {recorded.key_source} on {recorded.recorded_at}): "
            "the same patient would get a second pseudonym. Use that key (set "
            "LUNGCLS_PSEUDONYM_KEY to it, or unset it if the root's key file made it), or "
            "start a new root for the new key",
        )
