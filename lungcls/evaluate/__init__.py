"""Stage 4, evaluate: a model version -> metrics with CIs, an operating point, a report.

metrics (medical metrics, patient bootstrap, operating point, subgroups) -> evaluation
(scoring, calibration, the report record) -> report (plots, Markdown, HTML)."""
