"""Deterministic seeds derived from names: every random choice in robustlab takes a
``torch.Generator`` seeded from the run's seed and what the randomness is for."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived deterministically from ``parts`` (stable across runs,
    machines and Python versions: sha256 of their JSON)."""
    digest = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


__all__ = ["derive_seed"]
