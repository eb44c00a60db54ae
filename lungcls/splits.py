"""Patient-level splits from a keyed hash: stable across dataset versions, never leaking.

A patient's split depends only on its pseudonym and the key, so adding batches never moves
a patient, and all series of one patient share one split.
"""

from __future__ import annotations

import hashlib
import hmac

SPLITS = ("train", "val", "test")


def patient_split(patient_id: str, key: bytes, fractions: tuple[float, float, float]) -> str:
    """`train`, `val` or `test` for one patient pseudonym."""
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions {fractions} must be non-negative and sum to 1")
    digest = hmac.new(key, f"split:{patient_id}".encode(), hashlib.sha256).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    cumulative = 0.0
    for name, fraction in zip(SPLITS, fractions, strict=True):
        cumulative += fraction
        if position < cumulative:
            return name
    return SPLITS[-1]
