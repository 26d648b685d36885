"""A dataset version on disk: ``items.jsonl`` (one item a line) and ``dataset.json``.

JSON Lines keeps reading streaming: the trainer and the exporters walk a 100k-item dataset
with constant memory. ``dataset.json`` is written last, so a version folder that has one is
complete; the store only ever renames finished folders into place.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .atomic import atomic_write_json, atomic_write_text  # noqa: F401  (re-exported)
from .errors import TlsyncError
from .format import Item, content_key, item_from_store
from .secrets import stored_uri

ITEMS = "items.jsonl"
INFO = "dataset.json"


@dataclass
class VersionResult:
    """What a command that writes a dataset version reports (``pull``, ``datasets derive``): the
    version, whether it was unchanged (nothing written), and its counts."""

    dataset: str
    version: int
    unchanged: bool
    items: int
    boxes: int
    categories: list[str]


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
        """Append one item; its URI is stored without signing parameters (``secrets.stored_uri``)."""
        record = item.to_dict()
        if "?" in item.image.uri or "@" in item.image.uri:
            record["image"]["uri"] = stored_uri(item.image.uri)
        self._file.write(orjson.dumps(record) + b"\n")
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
            except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as e:
                raise TlsyncError(f"{path}: line {n} is not a valid item ({e})") from None


def read_info(folder: Path) -> dict[str, Any]:
    """``dataset.json``, or a one-line ``TlsyncError`` saying why it cannot be used.

    The store's own files are read as untrusted too: bytes that are not UTF-8, JSON
    nested thousands deep (``orjson`` refuses past 1024 levels, where ``json`` would raise
    ``RecursionError``) or a document of the wrong shape is an error naming the file.
    """
    path = folder / INFO
    try:
        info = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise TlsyncError(f"{folder}: not a dataset version (no {INFO})") from None
    except OSError as e:
        raise TlsyncError(f"{path}: cannot read it ({e.strerror or e})") from None
    except orjson.JSONDecodeError as e:
        why = "nested too deep" if "depth" in str(e) or "recursion" in str(e) else \
            "not UTF-8 text" if "utf-8" in str(e).lower() else f"not valid JSON ({e.msg})"
        raise TlsyncError(f"{path}: {why}") from None
    problem = info_problem(info)
    if problem:
        raise TlsyncError(f"{path}: {problem}")
    return info


def info_problem(info: Any) -> str | None:
    """What makes a parsed ``dataset.json`` unusable, or None."""
    if not isinstance(info, dict):
        return f"expected a JSON object, got {type(info).__name__}"
    wanted = {"version": int, "categories": list, "counts": dict, "content_hash": str, "source": dict}
    for key, kind in wanted.items():
        if not isinstance(info.get(key), kind):
            return f"field '{key}' is missing or not {'an' if kind is int else 'a'} {kind.__name__}"
    if not all(isinstance(c, str) for c in info["categories"]):
        return "field 'categories' must list class names (strings)"
    counts = info["counts"]
    if not all(isinstance(counts.get(k), int) for k in ("items", "boxes")):
        return "field 'counts' lacks integer 'items' and 'boxes'"
    return None
