"""Duplicate images in a dataset version: exact (same sha256) and near (perceptual hash).

Test scores are only honest when no test image also trains. Exact copies are found from
the sha256 the store already keeps. Near copies (the same photo resized, re-encoded or
lightly edited) are found with a 64-bit pHash: the sign pattern of the lowest 8x8 DCT
frequencies of the 32x32 grey image, which resizing and JPEG re-encoding barely move.
Two images are near duplicates when their hashes differ in at most ``threshold`` bits
(default 6 of 64: resized and re-encoded copies measure 0-4, unrelated photos ~32). Photos
of one scene (a chess board shot from one spot, consecutive video frames) also measure
close: for a test split they leak as much as copies do.

Torch-free (PIL + numpy), so ``tlsync datasets check`` and ``pull`` stay light. Hashes are
cached by sha256 under ``$TLSYNC_HOME/cache/phash.json``: an image's content never changes.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import atomic_write_json
from .store import DatasetVersion

DEFAULT_THRESHOLD = 6
HASH_SIDE = 32
LOW = 8


@dataclass
class Copy:
    item_id: str
    split: str

    def to_dict(self) -> dict[str, str]:
        return {"item": self.item_id, "split": self.split}


@dataclass
class DuplicateGroup:
    """Items whose images are one picture; ``distance`` is the largest hash distance inside (0: exact)."""

    copies: list[Copy]
    distance: int = 0

    @property
    def splits(self) -> list[str]:
        return sorted({c.split for c in self.copies})

    @property
    def crosses(self) -> bool:
        return len(self.splits) > 1

    def to_dict(self) -> dict[str, Any]:
        return {"copies": [c.to_dict() for c in self.copies], "splits": self.splits, "crosses_splits": self.crosses,
                "distance": self.distance}


@dataclass
class DuplicateReport:
    ref: str
    items: int
    threshold: int
    exact: list[DuplicateGroup] = field(default_factory=list)
    near: list[DuplicateGroup] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.ref, "items": self.items, "threshold": self.threshold,
                "exact": [g.to_dict() for g in self.exact], "near": [g.to_dict() for g in self.near],
                "exact_crossing_splits": sum(g.crosses for g in self.exact),
                "near_crossing_splits": sum(g.crosses for g in self.near), "unreadable": self.unreadable}


def phash(path: Path) -> int:
    """The 64-bit perceptual hash of an image file (raises OSError/ValueError when unreadable)."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft("L", (HASH_SIDE * 4, HASH_SIDE * 4))  # JPEG: decode at a fraction of full size
        grey = ImageOps.exif_transpose(im).convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS)
    pixels = np.asarray(grey, dtype=np.float64)
    basis = _dct_basis(HASH_SIDE)
    low = (basis @ pixels @ basis.T)[:LOW, :LOW].flatten()
    bits = low[1:] > np.median(low[1:])  # the DC term says how bright, not what is where
    return int(sum(1 << i for i, bit in enumerate(bits) if bit))


def _dct_basis(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    basis = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))
    basis[0] *= 1 / np.sqrt(2)
    return basis * np.sqrt(2 / n)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def exact_groups(version: DatasetVersion) -> list[DuplicateGroup]:
    """Items that share a sha256 (two or more), in manifest order."""
    by_sha: dict[str, list[Copy]] = defaultdict(list)
    for item in version.items():
        if item.image.sha256:
            by_sha[item.image.sha256].append(Copy(item.id, item.split or "none"))
    return [DuplicateGroup(copies) for copies in by_sha.values() if len(copies) > 1]


def shared_images(version: DatasetVersion, split: str, other: str = "train") -> int:
    """How many distinct images of ``split`` are byte-identical to one in ``other`` (a leak)."""
    shas = {item.image.sha256 for item in version.items(other) if item.image.sha256}
    return len({item.image.sha256 for item in version.items(split) if item.image.sha256 in shas})


def leak_warning(version: DatasetVersion, split: str, other: str = "train") -> str | None:
    """One line when ``split`` shares images with ``other``, for ``eval`` and ``curve``."""
    if split == other:
        return None
    n = shared_images(version, split, other)
    if not n:
        return None
    return (f"warning: {n} image(s) of {version.ref} {split} are byte-identical copies of {other} images, "
            f"so these scores are optimistic (tlsync datasets check {version.ref} lists them)")


def check(version: DatasetVersion, threshold: int = DEFAULT_THRESHOLD) -> DuplicateReport:
    """Exact and near duplicates of ``version``; near groups exclude pairs that are exact copies."""
    report = DuplicateReport(version.ref, 0, threshold, exact=exact_groups(version))
    hashes, first_copy = _hashes(version, report)
    shas = list(hashes)
    if shas:
        values = np.array([hashes[s] for s in shas], dtype=np.uint64)
        neighbours: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for i, j, d in _close_pairs(values, threshold):
            neighbours[i].append((j, d))
        # Leader clustering: a group is an image and the not-yet-grouped images close to *it*, so
        # a chain of small steps (consecutive video frames) cannot merge a whole dataset into one.
        grouped: set[int] = set()
        for i in range(len(shas)):
            if i in grouped:
                continue
            members = [(j, d) for j, d in neighbours[i] if j not in grouped]
            if members:
                grouped.update([i, *(j for j, _ in members)])
                copies = [c for k in [i, *(j for j, _ in members)] for c in first_copy[shas[k]]]
                report.near.append(DuplicateGroup(copies, max(d for _, d in members)))
    return report


def _hashes(version: DatasetVersion, report: DuplicateReport) -> tuple[dict[str, int], dict[str, list[Copy]]]:
    """pHash per distinct image (cached by sha256), and the items showing each image."""
    cache_path = version.store.home / "cache" / "phash.json"
    try:
        cache: dict[str, int] = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    hashes: dict[str, int] = {}
    copies: dict[str, list[Copy]] = defaultdict(list)
    added = False
    for item in version.items():
        report.items += 1
        sha = item.image.sha256
        if not sha:
            continue
        copies[sha].append(Copy(item.id, item.split or "none"))
        if sha in hashes:
            continue
        if sha not in cache:
            try:
                cache[sha] = phash(version.image_path(item))
                added = True
            except (OSError, ValueError) as e:
                report.unreadable.append(f"item '{item.id}': {type(e).__name__}")
                continue
        hashes[sha] = cache[sha]
    if added:
        atomic_write_json(cache_path, cache)
    return hashes, copies


def _close_pairs(values: np.ndarray, threshold: int, block: int = 2048) -> list[tuple[int, int, int]]:
    """Index pairs ``i < j`` whose hashes differ in at most ``threshold`` bits (blocked, vectorised)."""
    pairs = []
    for start in range(0, len(values), block):
        chunk = values[start:start + block]
        distances = _popcount(chunk[:, None] ^ values[None, :])
        rows, cols = np.nonzero(distances <= threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            if start + r < c:
                pairs.append((start + r, c, int(distances[r, c])))
    return pairs


_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 (``np.bitwise_count`` where numpy has it, >= 2.0; a byte table before)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return _BITS[x.view(np.uint8).reshape(*x.shape, 8)].sum(axis=-1)
