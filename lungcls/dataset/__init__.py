"""Stage 2, dataset: series store -> a validated, preprocessed, patient-split version.

contracts (Great Expectations suites from data_contracts/) -> splits (keyed patient hash) ->
preprocess (HU -> spacing -> window -> crop) -> shards (Parquet) -> manifest (the commit
record). `build.build_dataset` wires them together."""
