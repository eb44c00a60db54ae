"""Numbered versions `<folder>/v<N>/`, each committed by a marker file written last.

Datasets (`manifest.json`) and models (`model.json`) share this rule: a version exists only
once its marker does; folders without one are unfinished work and are never read.
"""

from __future__ import annotations

import json
from typing import Any

from lungcls.io.storage import Storage


def committed_versions(storage: Storage, folder: str, marker: str) -> list[int]:
    """Numbers of the committed versions under `folder`, oldest first."""
    versions = []
    for path in storage.list_dirs(folder):
        tail = path.rsplit("/", 1)[-1]
        if tail.startswith("v") and tail[1:].isdigit() and storage.exists(f"{path}/{marker}"):
            versions.append(int(tail[1:]))
    return sorted(versions)


def read_marker(
    storage: Storage, folder: str, marker: str, version: int | None
) -> dict[str, Any] | None:
    """The marker of `version` (`None`: the latest), or None when there is no such version."""
    if version is None:
        versions = committed_versions(storage, folder, marker)
        if not versions:
            return None
        version = versions[-1]
    path = f"{folder}/v{version}/{marker}"
    return json.loads(storage.read_bytes(path)) if storage.exists(path) else None
