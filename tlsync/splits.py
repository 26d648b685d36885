"""Deterministic splits for sources that have none.

An item's split comes from a hash of its group (its id, or the photo it was augmented
from), so adding items never moves an existing item, and copies of one photo never
straddle train and val. Byte-identical images under different ids (real exports carry
them) follow the first copy pulled: ``SplitGrouper`` remembers each image's split by
sha256, so a copy can never sit in test while its twin trains.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from .errors import TlsyncError
from .format import SPLITS, Item

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
    return parts


def assign_split(group: str, ratios: tuple[float, float, float] = DEFAULT_RATIOS) -> str:
    digest = hashlib.sha256(group.encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    edge = 0.0
    for split, ratio in zip(SPLITS, ratios, strict=True):
        edge += ratio
        if u < edge:
            return split
    return SPLITS[-1] if ratios[-1] > 0 else SPLITS[0]


class SplitGrouper:
    """Splits for one pull: by group hash, with copies of one image (same sha256) kept together.

    The first copy in the source's order decides; sources yield in a stable order, so a
    re-pull assigns the same splits. Copies whose splits the source itself gave are left as
    the source put them, and counted in ``crossing`` so the pull can warn about them.
    """

    def __init__(self, ratios: tuple[float, float, float] = DEFAULT_RATIOS):
        self.ratios = ratios
        self._split_of: dict[str, str] = {}
        self._source_splits: dict[str, set[str]] = defaultdict(set)

    def assign(self, item: Item) -> None:
        """Give ``item`` a split if the source gave none, and remember where its image went."""
        sha = item.image.sha256
        if item.split is None:
            item.split = self._split_of.get(sha) if sha else None
            if item.split is None:
                item.split = assign_split(item.group, self.ratios)
        elif sha:
            self._source_splits[sha].add(item.split)
        if sha:
            self._split_of.setdefault(sha, item.split)

    def crossing(self, a: str = "train", b: str = "test") -> int:
        """How many images the source's own splits put copies of in both ``a`` and ``b``."""
        return sum(1 for splits in self._source_splits.values() if a in splits and b in splits)

    def warning(self) -> str | None:
        """One line for the pull summary when the source's splits leak copies into test (or val)."""
        test, val = self.crossing("train", "test"), self.crossing("train", "val")
        if not test and not val:
            return None
        parts = [f"{n} in train and {split}" for n, split in ((test, "test"), (val, "val")) if n]
        return (f"warning: the source's own splits put copies of one image in different splits "
                f"({', '.join(parts)}); test scores will be optimistic (tlsync datasets check NAME lists them)")
