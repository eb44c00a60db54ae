"""Stage 5, registry: immutable model versions, aliases, decisions, the promotion gate.

records (`model.json`) -> store (publish, load) -> aliases (`champion`, moved atomically) ->
decisions (the append-only log) -> promote (the gates, promotion and rollback)."""
