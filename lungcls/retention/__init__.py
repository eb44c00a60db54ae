"""Retention: what lungcls keeps, and what it removes on purpose.

- `gc` — files no committed record names (leftovers of killed runs, superseded series,
  old checkpoints, expired cache entries), listed by default and deleted with `--apply`.
- `erasure` — a patient's or an archive's data removed on request (withdrawn consent), an
  erasure log that every later ingest and build honours.
"""
