"""For `bench/scale.py`: the RSS of a process tree; what it makes of its sizes (spreads
across sizes, tables, goals).

A stage's wall seconds are a fixed start-up (process start, imports, Ray) plus a cost per
series. Seconds per series (wall / series) then fall as the size grows even when the cost
is linear, so the spreads give both: the raw seconds per series, and the *marginal* seconds
per series between consecutive sizes (seconds added / series added), which the fixed part
does not touch. Linear cost means equal slopes; their max/min is a goal only with three
sizes or more (two sizes give one slope, nothing to compare it with).
"""

from __future__ import annotations

import importlib.util
import math
import sys
from contextlib import suppress
from itertools import pairwise
from pathlib import Path
from typing import Any

from goals import Goal

try:
    import psutil
except ImportError:  # Ray ships a copy (ray/thirdparty_files), on sys.path once Ray is imported
    _ray = importlib.util.find_spec("ray")
    assert _ray is not None and _ray.origin is not None, "psutil or Ray is needed"
    sys.path.append(str(Path(_ray.origin).parent / "thirdparty_files"))
    import psutil

FLAT = 1.2  # issue 16: per series cost and memory flat within 20 %
RERUN = 3.0  # the rerun on an unchanged inbox, as a share of the first


class ProcessTree:
    """A process and every process it started (Ray's included): their RSS summed, and what
    is left of them killed, by pid, at the end. Processes stay counted once seen, even when a
    parent exits before them and they are handed to init."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.seen: dict[int, Any] = {pid: self.root}
        self.now = self.peak = self.at_peak = 0

    def sample(self) -> None:
        with suppress(psutil.Error):  # the root ended meanwhile
            self.seen.update((p.pid, p) for p in self.root.children(recursive=True))
        sizes: list[int] = []
        for process in self.seen.values():
            with suppress(psutil.Error):  # ended meanwhile; is_running: not a reused pid
                if process.is_running():
                    sizes.append(process.memory_info().rss)
        self.now = sum(sizes)
        if self.now > self.peak:
            self.peak, self.at_peak = self.now, len(sizes)

    def kill_leftovers(self) -> None:
        for process in self.seen.values():
            with suppress(psutil.Error):
                process.kill()


def ratio(values: list[float]) -> float:
    """max/min; infinite when the smallest is not positive (a slope that fell or stood)."""
    return max(values) / min(values) if min(values) > 0 else math.inf


def spreads(sizes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per stage: max/min over the sizes of s/series and of peak RSS; the marginal s/series
    between consecutive sizes and, from three sizes on, their max/min."""
    result: dict[str, dict[str, Any]] = {}
    for index, stage in enumerate(s["stage"] for s in sizes[0]["stages"]):
        rows = [size["stages"][index] for size in sizes]
        points = [(size["series"], row["seconds"]) for size, row in zip(sizes, rows, strict=True)]
        marginal = [(s2 - s1) / (n2 - n1) for (n1, s1), (n2, s2) in pairwise(points)]
        result[stage] = {
            "s_per_series_spread": ratio([row["s_per_series"] for row in rows]),
            "peak_rss_spread": ratio([row["peak_rss_mib"] for row in rows]),
            "marginal_s_per_series": marginal,
            "marginal_spread": ratio(marginal) if len(marginal) > 1 else None,
        }
    return result


def _row(*cells: object) -> None:
    print("| " + " | ".join(str(cell) for cell in cells) + " |")


def print_tables(report: dict[str, Any]) -> None:
    """A table per size, then one of the spreads across sizes."""
    for size in report["sizes"]:
        samples = ", ".join(f"{k} {sum(v.values())}" for k, v in size["samples"].items())
        print(
            f"\n{size['series']} series ({report['geometry']}, {size['hu_gib']:.1f} GiB of HU; "
            f"samples {samples}); synth {size['synth_s']:.0f} s, not a stage"
        )
        _row("stage", "seconds", "s/series", "peak RSS (MiB)", "processes at peak")
        _row(*["---"] * 5)
        for s in size["stages"]:
            _row(
                s["stage"],
                f"{s['seconds']:.1f}",
                f"{s['s_per_series']:.3f}",
                f"{s['peak_rss_mib']:.0f}",
                s["processes_at_peak"],
            )
        rerun = size["rerun"]
        seconds = rerun["ingest_s"] + rerun["build_s"]
        _row("rerun: ingest + build", f"{seconds:.1f} = {100 * rerun['fraction']:.1f} % of first")
    counts = [size["series"] for size in report["sizes"]]
    steps = ", ".join(f"{a}→{b}" for a, b in pairwise(counts))
    print()
    _row("stage", "s/series max/min", "peak RSS max/min", f"marginal s/series ({steps})", "max/min")
    _row(*["---"] * 5)
    for stage, spread in report["spreads"].items():
        marginal = spread["marginal_s_per_series"]
        _row(
            stage,
            f"{spread['s_per_series_spread']:.2f}",
            f"{spread['peak_rss_spread']:.2f}",
            ", ".join(f"{m:.3f}" for m in marginal),
            "—" if spread["marginal_spread"] is None else f"{spread['marginal_spread']:.2f}",
        )


def goals(report: dict[str, Any]) -> list[Goal]:
    """Per stage, each spread <= 1.2 (the marginal one from three sizes on); the rerun
    <= 3 % of the first ingest + build, at the largest size and at the worst."""
    sizes = report["sizes"]
    counts = "/".join(str(size["series"]) for size in sizes)
    over = f"max/min over {counts} series"
    found: list[Goal] = []
    for stage, row in report["spreads"].items() if len(sizes) > 1 else ():
        found.append(Goal(f"{stage}: s/series, {over}", row["s_per_series_spread"], "<=", FLAT))
        found.append(Goal(f"{stage}: peak RSS, {over}", row["peak_rss_spread"], "<=", FLAT))
        if row["marginal_spread"] is not None:
            what = f"{stage}: marginal s/series (between consecutive sizes), {over}"
            found.append(Goal(what, row["marginal_spread"], "<=", FLAT))
    fractions = [100 * size["rerun"]["fraction"] for size in sizes]
    what = "rerun of ingest + build on the unchanged inbox / first"
    largest = sizes[-1]["series"]
    found.append(Goal(f"{what}, {largest} series", fractions[-1], "<=", RERUN, "%"))
    found.append(Goal(f"{what}, worst of {counts} series", max(fractions), "<=", RERUN, "%"))
    return found
