"""Stage 2, dataset: series store -> a validated, preprocessed, patient-split version.

contracts (Great Expectations suites from data_contracts/) + validation (what they see, and
quarantine for what they refuse) -> labelling (the labels table applied; what changed since
the parent) -> splits (keyed patient hash) -> preprocess (HU -> spacing
-> window -> crop) -> sharding + shards (reuse, preprocess, Parquet) -> manifest (the commit
record, and the records read downstream). `build.build_dataset` wires them together and
returns a `summary.BuildSummary`."""
