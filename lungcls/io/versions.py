"""Numbered versions `<folder>/v<N>/`, each committed by a marker file written last.

Datasets (`manifest.json`) and models (`model.json`) share this rule: a version exists only
once its marker does; folders without one are unfinished work and are never read. Listing
is shared here; each stage loads its marker as its own record class.
"""

from __future__ import annotations

from lungcls.io.storage import Storage


def committed_versions(storage: Storage, folder: str, marker: str) -> list[int]:
    """Numbers of the committed versions under `folder`, oldest first."""
    versions = []
    for path in storage.list_dirs(folder):
        tail = path.rsplit("/", 1)[-1]
        if tail.startswith("v") and tail[1:].isdigit() and storage.exists(f"{path}/{marker}"):
            versions.append(int(tail[1:]))
    return sorted(versions)


def latest_version(storage: Storage, folder: str, marker: str) -> int | None:
    """The highest committed version under `folder`, or None when there is none yet."""
    versions = committed_versions(storage, folder, marker)
    return versions[-1] if versions else None


def marker_path(storage: Storage, folder: str, marker: str, version: int | None) -> str | None:
    """Where the marker of `version` (`None`: the latest) is, or None when that version is
    not committed."""
    number = latest_version(storage, folder, marker) if version is None else version
    path = f"{folder}/v{number}/{marker}"
    return path if number is not None and storage.exists(path) else None


def missing_version(what: str, version: int | None, command: str) -> str:
    """The message for a version that `marker_path` did not find."""
    if version is None:
        return f"{what} has no version yet: run `{command}`"
    return f"{what} has no version {version}"
