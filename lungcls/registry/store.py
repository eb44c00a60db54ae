"""The model registry on the storage root: immutable versions, aliases, decisions.

`models/<name>/v<N>/` holds the weights (`model.pt`, a state dict), a TorchScript copy for
serving (`model.ts`), and `model.json`: what it is, what it was trained on, how, and how
well. `model.json` is written last with an exclusive create: it is the commit point, and two
trainers racing for the same number cannot both win (the loser takes the next number).
Aliases (`champion`, `challenger`) point at versions and move by exclusive creates; every
promotion or rollback decision is logged, append-only, under `models/<name>/decisions/`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch

from lungcls.config import ModelSettings
from lungcls.errors import LungclsError
from lungcls.io.storage import Storage
from lungcls.io.versions import committed_versions, read_marker
from lungcls.train.models import build_model

MODEL_SCHEMA = "lungcls.model/1"
RECORD = "model.json"


class RegistryError(LungclsError):
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


def versions_trained_on(storage: Storage, name: str, dataset: dict[str, Any]) -> list[int]:
    """The model versions trained on a dataset version (`{"name", "version"}`), oldest first."""
    return [
        v
        for v in list_model_versions(storage, name)
        if load_record(storage, name, v)["dataset"] == dataset
    ]


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


# -- aliases and decisions ----------------------------------------------------------------
# An alias is a sequence of immutable pointer files `aliases/<alias>/<seq>.json`; the highest
# number is the current one. Moving it means creating the next number with an exclusive
# create, so of two concurrent moves from the same state exactly one wins, on any backend.

ALIASES = ("champion", "challenger")


@dataclass(frozen=True)
class AliasState:
    alias: str
    sequence: int  # 0: never set
    version: int | None
    previous_version: int | None


def read_alias(storage: Storage, name: str, alias: str) -> AliasState:
    """Where `alias` points now, and where it pointed before."""
    folder = f"models/{name}/aliases/{alias}"
    pointers = sorted(
        (int(info.path.rsplit("/", 1)[-1][: -len(".json")]), info.path)
        for info in storage.list_files(folder)
        if info.path.endswith(".json") and info.path.rsplit("/", 1)[-1][:-5].isdigit()
    )
    if not pointers:
        return AliasState(alias, 0, None, None)
    current = json.loads(storage.read_bytes(pointers[-1][1]))
    return AliasState(alias, pointers[-1][0], current["version"], current.get("previous_version"))


def move_alias(
    storage: Storage, name: str, state: AliasState, version: int, decision_id: str
) -> bool:
    """Point `state.alias` at `version` if nobody moved it since `state` was read."""
    pointer = {
        "alias": state.alias,
        "version": version,
        "previous_version": state.version,
        "decision": decision_id,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    rel = f"models/{name}/aliases/{state.alias}/{state.sequence + 1:08d}.json"
    return storage.create(rel, json.dumps(pointer, indent=2).encode())


def log_decision(storage: Storage, name: str, decision: dict[str, Any]) -> str:
    """Append a decision to the model's log (one immutable file per decision)."""
    stamp = decision["at"].replace(":", "").replace("-", "").replace("+0000", "Z")
    rel = f"models/{name}/decisions/{stamp}-{decision['id']}.json"
    storage.create(rel, json.dumps(decision, indent=2, default=str).encode())
    return rel


def read_decisions(storage: Storage, name: str) -> list[dict[str, Any]]:
    """Every decision ever logged for a model, oldest first."""
    decisions = [
        json.loads(storage.read_bytes(info.path))
        for info in storage.list_files(f"models/{name}/decisions")
        if info.path.endswith(".json")
    ]
    return sorted(decisions, key=lambda d: d["at"])
