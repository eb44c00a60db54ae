"""What a run shows of its results in the Prefect UI, as plain records, and the two number
formats every view of a record uses (terminal, Markdown, UI tables).

Each stage's result has an `artifacts(storage)` method that returns these views, built by the
same renderers the CLI prints with; `flows/` publishes them as Prefect artifacts without
composing anything itself. Artifacts carry counts, codes, metrics and storage locations
only: never patient data, and never inbox paths (users sometimes name folders after
patients).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from lungcls.io.records import Part

Cell = str | int | float | None


def rounded(value: float | None) -> float | None:
    """A table cell: 4 decimals (counts stay integers); None when not estimable."""
    return None if value is None or not math.isfinite(value) else round(value, 4)


def number(value: float | None, digits: int = 3) -> str:
    """A number in text: `digits` decimals, "n/a" when not estimable."""
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


class Artifact(Part):
    """One view under a stable key: Markdown text, or a table (rows of cells)."""

    key: str
    description: str
    markdown: str | None = None
    table: list[dict[str, Cell]] | None = None

    @classmethod
    def of_table(
        cls, key: str, description: str, rows: Sequence[Mapping[str, Cell]], empty: str
    ) -> Artifact:
        # Prefect shows an empty table as nothing at all: say that there is nothing instead.
        return cls(
            key=key, description=description, table=[dict(r) for r in rows] or [{"result": empty}]
        )
