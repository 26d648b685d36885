"""Deterministic splits for sources that have none.

An item's split comes from a hash of its group (its id, or the photo it was augmented
from), so adding items never moves an existing item, and copies of one photo never
straddle train and val.
"""

from __future__ import annotations

import hashlib

from .errors import TlsyncError
from .format import SPLITS

DEFAULT_RATIOS = (0.8, 0.1, 0.1)


def parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        parts = ()
    # nan compares false with everything, so "p < 0" alone would let nan,1,1 through.
    if len(parts) != 3 or not all(0 <= p < float("inf") for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise TlsyncError(f"--split-ratios {text!r}: give three finite, non-negative numbers summing to 1, "
                          f"as in 0.8,0.1,0.1")
    return parts  # type: ignore[return-value]


def assign_split(group: str, ratios: tuple[float, float, float] = DEFAULT_RATIOS) -> str:
    digest = hashlib.sha256(group.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for split, ratio in zip(SPLITS, ratios):
        edge += ratio
        if u < edge:
            return split
    return SPLITS[-1] if ratios[-1] > 0 else SPLITS[0]
