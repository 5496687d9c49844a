"""Deterministic identifiers: the same inputs give the same id in every run and process.

Replays and at-least-once recovery rely on this: sinks deduplicate on these ids.
"""

from __future__ import annotations

import hashlib


def stable_id(*parts: object, size: int = 16) -> str:
    """Hex digest (``size`` bytes) of the parts joined unambiguously."""
    text = "".join([f"{len(s)}:{s}" for s in map(str, parts)])  # length-prefixed: unambiguous
    return hashlib.blake2b(text.encode(), digest_size=size).hexdigest()


def stable_fraction(*parts: object) -> float:
    """A number in [0, 1) fixed by the parts: used for splits (variants, holdout)."""
    return int(stable_id(*parts, size=8), 16) / 2**64
