"""Stage 5, registry: immutable model versions, aliases, decisions, the promotion gate."""
