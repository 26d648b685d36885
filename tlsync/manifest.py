"""A dataset version on disk: ``items.jsonl`` (one item a line) and ``dataset.json``.

JSON Lines keeps reading streaming: the trainer and the exporters walk a 100k-item dataset
with constant memory. ``dataset.json`` is written last, so a version folder that has one is
complete; the store only ever renames finished folders into place.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from .atomic import atomic_write_json, atomic_write_text  # noqa: F401  (re-exported)
from .errors import TlsyncError
from .format import Item, content_key, item_from_store

ITEMS = "items.jsonl"
INFO = "dataset.json"


class ManifestWriter:
    """Streams items to ``items.jsonl`` while keeping the counts and content hash."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._file = open(folder / ITEMS, "wb", buffering=1 << 20)
        self._hash = hashlib.sha256()
        self.items = 0
        self.boxes = 0
        self.per_split: Counter[str] = Counter()
        self.boxes_per_split: Counter[str] = Counter()
        self.per_class: Counter[str] = Counter()
        self.labels_seen: set[str] = set()
        self.negatives = 0

    def write(self, item: Item) -> None:
        self._file.write(orjson.dumps(item.to_dict()) + b"\n")
        self._hash.update(repr(content_key(item)).encode())
        split = item.split or "none"
        self.items += 1
        self.boxes += len(item.annotations)
        self.per_split[split] += 1
        self.boxes_per_split[split] += len(item.annotations)
        if not item.annotations:
            self.negatives += 1
        for box in item.annotations:
            self.per_class[box.label] += 1
            self.labels_seen.add(box.label)

    def close(self) -> None:
        self._file.close()

    def sync(self) -> None:
        """Make the items durable before the version is published (skipped when unchanged)."""
        fd = os.open(self.folder / ITEMS, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def content_hash(self, categories: list[str]) -> str:
        h = self._hash.copy()
        h.update(repr(categories).encode())
        return "sha256:" + h.hexdigest()

    def counts(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "boxes": self.boxes,
            "negatives": self.negatives,
            "splits": {s: {"items": n, "boxes": self.boxes_per_split[s]} for s, n in sorted(self.per_split.items())},
            "classes": dict(sorted(self.per_class.items())),
        }


def read_items(path: Path) -> Iterator[Item]:
    """Yield the items of an ``items.jsonl`` one at a time (constant memory)."""
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            try:
                yield item_from_store(orjson.loads(line))
            except (orjson.JSONDecodeError, KeyError, TypeError) as e:
                raise TlsyncError(f"{path}: line {n} is not a valid item ({e})") from None


def read_info(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / INFO).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TlsyncError(f"{folder}: not a dataset version (no {INFO})") from None
    except json.JSONDecodeError as e:
        raise TlsyncError(f"{folder / INFO}: not valid JSON ({e.msg})") from None
