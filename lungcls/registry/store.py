"""The model registry on the storage root: immutable, numbered model versions.

`models/<name>/v<N>/` holds the weights (`model.pt`, a state dict), a TorchScript copy for
serving (`model.ts`), and `model.json` (`records.ModelRecord`): what it is, what it was
trained on, how, and how well. A trainer claims the number first (`io.versions`), writes
the files into its own folder, and commits with `model.json` last (exclusive create), which
names every file with its SHA-256: two trainers never write into one folder, and a file
changed after the commit is refused at load. Aliases live in `aliases.py`, promotion
decisions in `decisions.py`.
"""

from __future__ import annotations

import io
from typing import Protocol

import torch

from lungcls.errors import LungclsError
from lungcls.io.guard import stage_lease
from lungcls.io.integrity import checked_bytes, sha256_of
from lungcls.io.storage import Storage
from lungcls.io.versions import claim_version, committed_versions, marker_path, missing_version
from lungcls.registry.records import ModelRecord, model_dir
from lungcls.train.ensemble import build_network

RECORD = "model.json"


class RegistryError(LungclsError):
    """A model version does not exist or cannot be written."""


class NamedVersion(Protocol):
    """Anything naming a dataset version (`DatasetRef`, a manifest)."""

    name: str
    version: int


def list_model_versions(storage: Storage, name: str) -> list[int]:
    """Committed versions (those with a model.json), oldest first."""
    return committed_versions(storage, f"models/{name}", RECORD)


def publish_model(
    storage: Storage,
    name: str,
    files: dict[str, bytes],
    record: ModelRecord,
    lease_only: bool = False,
) -> int:
    """Claim a new version, write its files, commit the record last; returns its number."""
    with stage_lease(storage, "train-publish", record.train_run, lease_only):
        return _publish(storage, name, files, record)


def _publish(storage: Storage, name: str, files: dict[str, bytes], record: ModelRecord) -> int:
    version = claim_version(storage, f"models/{name}", record.train_run)
    folder = model_dir(name, version)
    for file_name, data in files.items():
        storage.write_atomic(f"{folder}/{file_name}", data)
    claimed = record.model_copy(
        update={
            "name": name,
            "version": version,
            "files": {file_name: sha256_of(data) for file_name, data in files.items()},
        }
    )
    if not claimed.save(storage, f"{folder}/{RECORD}", exclusive=True):
        raise RegistryError(f"{storage.url(folder)} was committed by another writer")
    return version


def read_model_file(storage: Storage, record: ModelRecord, file_name: str) -> bytes:
    """A file of a committed model version, verified against the SHA-256 its record names
    (records written before files were hashed name none: read unverified)."""
    expected = record.files.get(file_name) if record.files else None
    return checked_bytes(storage, f"{record.folder}/{file_name}", expected)


def load_record(storage: Storage, name: str, version: int | None = None) -> ModelRecord:
    """A version's model.json (`None`: the latest)."""
    path = marker_path(storage, f"models/{name}", RECORD, version)
    if path is None:
        raise RegistryError(missing_version(f"model {name!r}", version, "lungcls train"))
    return ModelRecord.load(storage, path)


def versions_trained_on(storage: Storage, name: str, dataset: NamedVersion) -> list[int]:
    """The model versions trained on a dataset version, oldest first."""
    return [
        v
        for v in list_model_versions(storage, name)
        if _same_version(load_record(storage, name, v).dataset, dataset)
    ]


def _same_version(a: NamedVersion, b: NamedVersion) -> bool:
    return (a.name, a.version) == (b.name, b.version)


def load_model(storage: Storage, record: ModelRecord) -> torch.nn.Module:
    """The network of a model version, weights loaded, in eval mode."""
    model = build_network(record.model, record.tensor_shape, 0, record.members)
    state = torch.load(io.BytesIO(read_model_file(storage, record, "model.pt")), weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def serialise_model(model: torch.nn.Module, tensor_shape: list[int]) -> dict[str, bytes]:
    """The files of a model version: state dict and TorchScript (traced on CPU)."""
    model = model.to("cpu").eval()
    weights = io.BytesIO()
    torch.save(model.state_dict(), weights)
    scripted = io.BytesIO()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.zeros(1, *tensor_shape))
    torch.jit.save(traced, scripted)
    return {"model.pt": weights.getvalue(), "model.ts": scripted.getvalue()}
