"""The model registry on the storage root: immutable model versions.

`models/<name>/v<N>/` holds the weights (`model.pt`, a state dict), a TorchScript copy for
serving (`model.ts`), and `model.json`: what it is, what it was trained on, how, and how
well. `model.json` is written last with an exclusive create: it is the commit point, and two
trainers racing for the same number cannot both win (the loser takes the next number).
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch

from lungcls.config import ModelSettings
from lungcls.models import build_model
from lungcls.storage import Storage
from lungcls.versions import committed_versions, read_marker

MODEL_SCHEMA = "lungcls.model/1"
RECORD = "model.json"


class RegistryError(RuntimeError):
    """A model version does not exist or cannot be written."""


def model_dir(name: str, version: int) -> str:
    return f"models/{name}/v{version}"


def list_model_versions(storage: Storage, name: str) -> list[int]:
    """Committed versions (those with a model.json), oldest first."""
    return committed_versions(storage, f"models/{name}", RECORD)


def publish_model(
    storage: Storage, name: str, files: dict[str, bytes], record: dict[str, Any]
) -> int:
    """Write a new version: files first, the record last; returns its number."""
    for _ in range(20):
        versions = list_model_versions(storage, name)
        version = (versions[-1] if versions else 0) + 1
        folder = model_dir(name, version)
        for file_name, data in files.items():
            storage.write_atomic(f"{folder}/{file_name}", data)
        body = {"schema": MODEL_SCHEMA, **record, "name": name, "version": version}
        if storage.create(f"{folder}/{RECORD}", json.dumps(body, indent=2).encode()):
            return version
    raise RegistryError(f"could not claim a version number for model {name!r}")


def load_record(storage: Storage, name: str, version: int | None = None) -> dict[str, Any]:
    """A version's model.json (`None`: the latest)."""
    record = read_marker(storage, f"models/{name}", RECORD, version)
    if record is None:
        if version is None:
            raise RegistryError(f"model {name!r} has no version yet: run `lungcls train`")
        raise RegistryError(f"model {name!r} has no version {version}")
    return record


def load_model(storage: Storage, record: dict[str, Any]) -> torch.nn.Module:
    """The network of a model version, weights loaded, in eval mode."""
    model = build_model(ModelSettings(**record["model"]), record["tensor_shape"], seed=0)
    folder = model_dir(record["name"], record["version"])
    state = torch.load(io.BytesIO(storage.read_bytes(f"{folder}/model.pt")), weights_only=True)
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
