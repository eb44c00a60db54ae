"""Prefect flows: thin orchestration around `lungcls` (one library call per task).

    ingest                 inbox -> series store, ledger, quarantine
    monitor                the champion on the new batches, and their drift
    build_dataset          series store -> a new dataset version (if anything changed)
    train                  dataset version -> a candidate model version (Ray Train)
    evaluate_and_promote   candidate -> report -> gate -> champion (or not)
    retrain                all of the above, skipping what has nothing new to do

Tasks pass URIs, versions and small JSON summaries, never arrays; their results are
persisted under the storage root and cached on content, so a new run after a crash picks up
where the last one stopped.
"""
