"""The pool ``tlsync select`` chooses from: a dataset, or a folder pulled into one, minus what
is labelled already.

Exclusion is by image content (sha256), not by id: the same photo pulled from Nucleus and
from a folder has two ids but one hash, and it must not be sent for labelling twice.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlsync.errors import TlsyncError
from tlsync.format import Item
from tlsync.store import DatasetVersion, Store


@dataclass
class Pool:
    """The candidates (one per distinct image, in id order) and what was left out, with counts."""

    version: DatasetVersion
    items: list[Item] = field(default_factory=list)
    pool_items: int = 0
    labelled: int = 0  # already in the run's dataset
    excluded: dict[str, int] = field(default_factory=dict)  # --exclude dataset ref -> items removed
    duplicates: int = 0  # further copies of an image already in the pool
    no_image: int = 0  # items the store holds no image for

    def counts(self) -> dict[str, Any]:
        return {"pool_items": self.pool_items, "candidates": len(self.items), "already_labelled": self.labelled,
                "excluded": dict(self.excluded), "duplicates": self.duplicates, "without_image": self.no_image}


def pool_dataset_name(folder: Path) -> str:
    """``pool-<folder>``: a valid dataset name derived from the folder's own name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.expanduser().resolve().name).strip("-._") or "images"
    return f"pool-{stem}"


def pull_folder(store: Store, folder: Path, progress: Callable[[int], None] | None = None) -> tuple[str, Any]:
    """Pull a folder of images through the ``images`` source; an unreadable file is skipped and counted."""
    from tlsync import plugins
    from tlsync.pull import pull

    if not folder.is_dir():
        raise TlsyncError(f"--pool-path {folder}: not a folder")
    result = pull(store, plugins.get_source("images"), {"path": folder}, pool_dataset_name(folder),
                  on_error="skip", progress=progress)
    return result.ref, result


def hashes(versions: Iterable[DatasetVersion]) -> set[str]:
    return {item.image.sha256 for version in versions for item in version.items() if item.image.sha256}


def build_pool(version: DatasetVersion, labelled: DatasetVersion, exclude: list[DatasetVersion]) -> Pool:
    """The distinct images of ``version`` that are neither in ``labelled`` nor in ``exclude``."""
    pool = Pool(version)
    known = hashes([labelled])
    others = {v.ref: hashes([v]) for v in exclude}
    seen: set[str] = set()
    for item in sorted(version.items(), key=lambda i: i.id):
        pool.pool_items += 1
        sha = item.image.sha256
        if not sha or not item.image.path:
            pool.no_image += 1
            continue
        if sha in known:
            pool.labelled += 1
            continue
        hit = next((ref for ref, found in others.items() if sha in found), None)
        if hit is not None:
            pool.excluded[hit] = pool.excluded.get(hit, 0) + 1
            continue
        if sha in seen:
            pool.duplicates += 1
            continue
        seen.add(sha)
        pool.items.append(item)
    return pool


def describe(pool: Pool) -> str:
    """One line: how many candidates are left of the pool, and why the others are not."""
    parts = [f"{pool.labelled} already labelled"] + [f"{n} in {ref}" for ref, n in pool.excluded.items()]
    parts += [f"{pool.duplicates} duplicate images"] if pool.duplicates else []
    parts += [f"{pool.no_image} without a stored image"] if pool.no_image else []
    return f"pool {pool.version.ref}: {pool.pool_items} items, {len(pool.items)} candidates ({', '.join(parts)})"
