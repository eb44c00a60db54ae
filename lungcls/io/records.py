"""Typed records: what crosses a stage boundary, with a schema tag checked on every read.

A record is a pydantic model with a class-level `SCHEMA` (`lungcls.dataset/1`): the name
of the record and the version of its layout. It is written as strict JSON (`null`, never
`NaN`) with its tag in the `schema` field, and read back through `from_json` or `load`,
which refuse a file whose tag is another record's or a version this lungcls does not know,
naming the file, the schema found and the one expected. A renamed field is then a type
error at the writer and the readers, not a search across files.

    manifest = Manifest.load(storage, "datasets/lung-nodules/v3/manifest.json")
    manifest.save(storage, path, exclusive=True)   # False when someone created it first

Records written before a file had a tag (the first layouts of `build.json`, `train.json`,
alias pointers and decisions) have `LEGACY_UNTAGGED = True`: an untagged file reads as
version 1 of that record.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lungcls.errors import LungclsError
from lungcls.io.storage import Storage


class RecordError(LungclsError):
    """A stored record is not what its reader expects; the message names the file."""


def strict_json_value(value: Any) -> Any:
    """`value` with every NaN or infinity replaced by None (JSON has no such numbers)."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: strict_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json_value(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return strict_json_value(value.item())
    return value


def dumps(value: Any) -> bytes:
    """Strict, readable JSON: NaN and infinities become null, anything else unknown fails."""
    return json.dumps(strict_json_value(value), indent=2, allow_nan=False).encode()


class Part(BaseModel):
    """A typed part of a record (no tag of its own); unknown fields are refused, and NaN or
    infinite numbers arrive as None: "not estimable" is null in JSON, never NaN."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _finite_or_none(cls, data: Any) -> Any:
        return strict_json_value(data) if isinstance(data, dict) else data

    def to_json(self) -> bytes:
        """Strict JSON (what `--json` prints and `Record.save` writes)."""
        return dumps(self.model_dump(mode="json", by_alias=True))


class Record(Part):
    """A JSON record with a schema tag (see the module docstring)."""

    SCHEMA: ClassVar[str]
    LEGACY_UNTAGGED: ClassVar[bool] = False

    schema_tag: str = Field("", alias="schema")

    def model_post_init(self, _context: Any) -> None:
        if not self.schema_tag:
            self.schema_tag = self.SCHEMA

    @classmethod
    def from_json(cls, data: bytes | str | dict[str, Any], source: str = "<record>") -> Self:
        """Parse and check a record; `source` names the file in errors."""
        try:
            raw = cls.upgrade(json.loads(data) if isinstance(data, (bytes, str)) else data)
        except json.JSONDecodeError as error:
            raise RecordError(f"{source}: not JSON ({error})") from None
        if not isinstance(raw, dict):
            raise RecordError(f"{source}: expected a JSON object for {cls.SCHEMA}")
        found = raw.get("schema")
        if found is None and cls.LEGACY_UNTAGGED:
            raw["schema"] = found = cls.SCHEMA
        if found != cls.SCHEMA:
            raise RecordError(
                f"{source}: schema {found!r} is not the one this lungcls reads "
                f"({cls.SCHEMA!r}); a newer lungcls wrote it, or it is another record"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            raise RecordError(f"{source}: not a valid {cls.SCHEMA} record: {error}") from None

    @classmethod
    def upgrade(cls, raw: object) -> object:
        """An older layout of this record in the current one; a record whose layout changed
        without a new schema version overrides this (default: as it is)."""
        return dict(raw) if isinstance(raw, dict) else raw

    @classmethod
    def load(cls, storage: Storage, rel: str) -> Self:
        return cls.from_json(storage.read_bytes(rel), storage.url(rel))

    def save(self, storage: Storage, rel: str, exclusive: bool = False) -> bool:
        """Write the record (atomically); with `exclusive`, only if `rel` does not exist yet
        (returns False when another writer created it first)."""
        if exclusive:
            return storage.create(rel, self.to_json())
        storage.write_atomic(rel, self.to_json())
        return True
