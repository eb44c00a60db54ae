"""Stage 4, evaluate: a model version -> metrics with CIs, an operating point, a report.

metrics (point estimates, subgroups) -> bootstrap (patient-level intervals) ->
operating_point and calibration (fitted on val) -> evaluation (scoring, the report) ->
report (the `EvaluationReport` record) -> plots and render (PNG, Markdown, HTML)."""
