"""Run identifiers: sortable by time, unique across machines."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


def new_run_id(stage: str) -> str:
    """`<stage>-20261126T190501Z-3fa9c2`: sorts by start time, never collides in practice."""
    return f"{stage}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
