"""The training subsets of a learning curve: nested, class-stratified, one dataset version each.

One seeded order of the train items is built once per seed, and a fraction f trains on its
first ``round(f * N)`` items, so every smaller subset lies inside every larger one: the
curve then measures what the extra labels add, not the luck of a new draw. The order opens
with a few "cover" items that together hold every class (rarest class first), so any
subset at least that large has every class; after them, items are interleaved by their
rarest class so that each prefix keeps the classes' proportions.

Each subset becomes a dataset version of its own (``<name>.curve-f0.25-s1``) holding the
subset of train plus the untouched val and test items. The store is content-addressed, so
this copies no image, and the trainer, ``eval``, ``compare`` and the report need nothing
special to read it; a subset with the same content is reused rather than versioned again.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from tlsync.errors import TlsyncError
from tlsync.format import Item
from tlsync.manifest import INFO, ManifestWriter, atomic_write_json
from tlsync.store import DatasetVersion, Store


def labels(item: Item) -> set[str]:
    return {box.label for box in item.annotations}


def nested_order(items: list[Item], seed: int) -> list[Item]:
    """All of ``items`` in the seeded order whose prefixes are the subsets (see the module doc)."""
    rng = random.Random(f"tlsync-curve-{seed}")
    shuffled = sorted(items, key=lambda item: item.id)
    rng.shuffle(shuffled)
    counts = Counter(label for item in shuffled for label in labels(item))
    cover: list[Item] = []
    covered: set[str] = set()
    for cls in sorted(counts, key=lambda c: (counts[c], c)):
        if cls not in covered:
            pick = next(item for item in shuffled if cls in labels(item) and item not in cover)
            cover.append(pick)
            covered |= labels(pick)
    chosen = {id(item) for item in cover}
    strata: dict[str, list[Item]] = defaultdict(list)
    for item in shuffled:
        if id(item) not in chosen:
            own = labels(item)
            strata[min(own, key=lambda c: (counts[c], c)) if own else ""].append(item)
    keyed = [((j + rng.random()) / len(members), item) for members in strata.values()
             for j, item in enumerate(members)]
    return cover + [item for _, item in sorted(keyed, key=lambda pair: pair[0])]


def subset_size(fraction: float, total: int) -> int:
    return max(1, min(total, round(fraction * total)))


def subset_name(base: DatasetVersion, fraction: float, seed: int) -> str:
    return f"{base.name}.curve-f{fraction:g}-s{seed}"


def materialise(store: Store, base: DatasetVersion, train: list[Item], fraction: float,
                seed: int) -> DatasetVersion:
    """The dataset version of ``base`` whose train split is ``train`` (val and test unchanged)."""
    keep = {item.id for item in train}
    return write_version(store, base, subset_name(base, fraction, seed),
                         lambda item: item.split != "train" or item.id in keep,
                         {"of": base.ref, "fraction": fraction, "seed": seed})


def write_version(store: Store, base: DatasetVersion, name: str, keep: Callable[[Item], bool],
                  params: dict[str, Any]) -> DatasetVersion:
    """A version of dataset ``name`` holding the items of ``base`` that ``keep`` accepts (no image copied).

    Like a pull, it adds a version only when the content differs from the latest one.
    """
    with store.lock(name), store.staging(name) as staging:
        writer = ManifestWriter(staging)
        try:
            for item in base.items():
                if keep(item):
                    writer.write(item)
        finally:
            writer.close()
        if not writer.items:
            raise TlsyncError(f"{name}: no items of {base.ref} were kept")
        content_hash = writer.content_hash(base.categories)
        versions = store.versions(name)
        if versions and store.open(f"{name}@{versions[-1]}").content_hash == content_hash:
            return store.open(f"{name}@{versions[-1]}")
        version = versions[-1] + 1 if versions else 1
        writer.sync()
        atomic_write_json(staging / INFO, {
            **base.info, "name": name, "version": version, "counts": writer.counts(),
            "source": {"name": "subset", "params": params},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "content_hash": content_hash,
        })
        store.publish(name, staging, version)
    return store.open(f"{name}@{version}")


def parse_fractions(text: str) -> list[float]:
    """``"0.25,0.5,1"`` -> sorted distinct fractions in (0, 1]."""
    try:
        values = sorted({float(part) for part in text.split(",") if part.strip()})
    except ValueError:
        values = []
    if not values or any(not 0 < v <= 1 for v in values):
        raise TlsyncError(f"--fractions {text!r}: give fractions of the train split in (0, 1], as in 0.25,0.5,0.75,1")
    return values
