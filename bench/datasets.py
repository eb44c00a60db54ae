"""Dataset builds: first build, rebuild with no new data, and an incremental build.

    .venv/bin/python bench/datasets.py [--scans 80] [--new-scans 20]

Prints, from one run on one synthetic inbox (in-process, one core):
- the first build's time, the no-new-data rebuild's time and their ratio (goal <= 3 %:
  a rebuild must only notice that nothing changed);
- an incremental build after a new batch: its time, how many series it preprocessed (goal:
  only the new ones) and how many shards it reused.
Both goals also go to the summary table of `make bench` (`bench/goals.py`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from goals import Goal, record_goals

from lungcls.config import Settings
from lungcls.dataset.build import build_dataset
from lungcls.ingest.run import ingest
from lungcls.io.storage import Storage
from lungcls.sources.synth import SynthOptions, synth_batch


def timed_build(settings: Settings):
    start = time.perf_counter()
    result = build_dataset(settings, progress=False)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=80)
    parser.add_argument("--new-scans", type=int, default=20)
    args = parser.parse_args()
    Path(".lungcls-work").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-datasets-", dir=".lungcls-work") as tmp:
        settings = Settings(
            root=f"{tmp}/root",
            pseudonym_key="bench-pseudonym-key-0123456789",
            work_dir=f"{tmp}/work",
            ray={"executor": "local"},
        )
        storage = Storage.from_settings(settings)
        print(f"writing and ingesting {args.scans} synthetic series…")
        synth_batch(storage, "b1", SynthOptions(scans=args.scans, seed=1))
        ingest(settings, progress=False)
        first, first_s = timed_build(settings)
        again, again_s = timed_build(settings)
        assert first.created and not again.created
        synth_batch(storage, "b2", SynthOptions(scans=args.new_scans, seed=2))
        ingest(settings, progress=False)
        third, third_s = timed_build(settings)
    report = {
        "first_build_s": round(first_s, 2),
        "first_build_series": first.preprocessed,
        "rebuild_no_new_data_s": round(again_s, 3),
        "rebuild_ratio": round(again_s / first_s, 4),
        "incremental_build_s": round(third_s, 2),
        "incremental_preprocessed": third.preprocessed,
        "incremental_reused_shards": third.reused_shards,
    }
    print(json.dumps(report, indent=2))
    print(
        f"rebuild with no new data: {again_s:.3f} s = {report['rebuild_ratio']:.1%} of the first "
        f"build ({first_s:.1f} s; goal <= 3 %); new batch of {args.new_scans}: "
        f"{third.preprocessed} series preprocessed, {third.reused_shards} shards reused"
    )
    record_goals(
        "datasets",
        [
            Goal("rebuild with no new data / first build", 100 * again_s / first_s, "<=", 3, "%"),
            Goal(
                f"series preprocessed by the build after {args.new_scans} new ones",
                third.preprocessed,
                "<=",
                args.new_scans,
                "series",
            ),
        ],
    )


if __name__ == "__main__":
    main()
