"""The `retrain` flow twice on one inbox: the rerun on an unchanged inbox must be cheap.

    .venv/bin/python bench/flows.py [--scans 160]

Prints, from one process (Prefect's ephemeral API, local Ray, the default settings):
- the first retrain's time (ingest, build, train, evaluate, gate) and the second's, on the
  same unchanged inbox, and their ratio (goal <= 3 %: the rerun reads a listing, the ledger
  and cached results, and trains nothing; also recorded for the summary table of `make
  bench`, `bench/goals.py`);
- the ephemeral API's start-up, measured separately, which only the first run pays.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

# `python bench/flows.py` puts bench/ first on sys.path, where this file would shadow the
# `flows` package: look in the repository instead, and in bench/ last (for `goals`, behind
# every installed package, so that bench/datasets.py etc. shadow nothing).
_BENCH = Path(__file__).resolve().parent
sys.path[0] = str(_BENCH.parent)
sys.path.append(str(_BENCH))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scans", type=int, default=160)
    args = parser.parse_args()
    work = Path(".lungcls-work").resolve()
    work.mkdir(exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

    from goals import Goal, record_goals
    from prefect import flow

    from flows.retrain import retrain
    from lungcls.flow_parameters import RetrainParameters
    from lungcls.io.storage import Storage
    from lungcls.sources.synth import SynthOptions, synth_batch

    @flow
    def noop() -> None:
        """Starts the ephemeral API, so that neither timed run pays for it."""

    start = time.perf_counter()
    noop()
    api_s = time.perf_counter() - start

    with tempfile.TemporaryDirectory(prefix="bench-flows-", dir=work) as tmp:
        config = Path(tmp) / "lungcls.yaml"
        config.write_text(f"pseudonym_key: bench-pseudonym-key-0123456789\nwork_dir: {tmp}/work\n")
        params = RetrainParameters(config_file=str(config), root=f"{tmp}/root")
        synth_batch(Storage(f"{tmp}/root"), "b1", SynthOptions(scans=args.scans, seed=0))
        print(f"retrain on {args.scans} synthetic scans…")
        start = time.perf_counter()
        first = retrain(params)
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        second = retrain(params)
        second_s = time.perf_counter() - start
        import ray

        ray.shutdown()  # before its folder under `tmp` goes away
    assert first.trained and not second.trained and not second.gated
    report = {
        "first_retrain_s": round(first_s, 1),
        "first_outcome": first.outcome,
        "second_retrain_unchanged_inbox_s": round(second_s, 2),
        "ratio_second_to_first": round(second_s / first_s, 4),
        "ephemeral_api_start_s": round(api_s, 1),
    }
    print(json.dumps(report, indent=2))
    ratio = Goal(
        "retrain rerun on an unchanged inbox / first", 100 * second_s / first_s, "<=", 3, "%"
    )
    record_goals("flows", [ratio])


if __name__ == "__main__":
    main()
