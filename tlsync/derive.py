"""``tlsync datasets derive``: a new dataset version made from versions already in the store.

Nothing is downloaded or copied: an item's image is named by its sha256 in the shared image
store, so a derived item points at the very file its source item points at. What changes is
the manifest: classes renamed, merged or dropped (``class_rules.py``), items from several
versions put side by side, and, with ``dedupe``, one item per picture with the copies' boxes
unioned. ``dataset.json`` records where everything came from (``derived_from``): every
source version and its content hash, the rules, and what they dropped and merged, so a
derived version can always be traced back and rebuilt.

Two copies of one picture in different splits would put the same pixels in train and test;
that is an error unless ``split_from`` names whose split wins.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import __version__
from .class_rules import ClassRules, near_duplicates
from .errors import TlsyncError
from .format import Box, Item
from .manifest import INFO, ManifestWriter, VersionResult, atomic_write_json
from .sink import store_write_error
from .store import DatasetVersion, Store, parse_ref

SAME_OBJECT_IOU = 0.7  # two copies' boxes overlapping this much outline the same object
MAX_CONFLICTS_LISTED = 20  # in dataset.json and the summary; the count is always complete


@dataclass(frozen=True)
class DeriveSpec:
    """What to derive from: source refs (``NAME`` or ``NAME@N``) and the rules."""

    sources: tuple[str, ...]
    class_map: dict[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    strict: bool = False
    split_from: str | None = None
    dedupe: bool = False


@dataclass
class DeriveResult(VersionResult):
    provenance: dict[str, Any]
    near_duplicates: dict[str, str]

    @property
    def ref(self) -> str:
        return f"{self.dataset}@{self.version}"


@dataclass
class _Tally:
    """What the rules did, for ``dataset.json`` and the summary line."""

    boxes_dropped: Counter[str] = field(default_factory=Counter)
    items_merged: int = 0
    boxes_merged: int = 0
    splits_changed: int = 0
    conflicts: list[str] = field(default_factory=list)
    conflict_count: int = 0


def open_sources(store: Store, refs: tuple[str, ...]) -> list[DatasetVersion]:
    """Each ``--from`` opened at a fixed version; one dataset twice is refused (ids would collide)."""
    if not refs:
        raise TlsyncError("give at least one --from NAME[@N]")
    versions = [store.open(ref) for ref in refs]
    names = [v.name for v in versions]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TlsyncError(f"--from names dataset {twice[0]!r} twice; derive from each dataset once")
    return versions


def derive(store: Store, name: str, spec: DeriveSpec) -> DeriveResult:
    """Write ``name@N+1`` from ``spec``, or answer unchanged when ``name@N`` already holds exactly that."""
    new_name, version = parse_ref(name)
    if version is not None:
        raise TlsyncError(f"derive {name!r}: give a name; derive picks the next version itself")
    sources = open_sources(store, spec.sources)
    if new_name in {s.name for s in sources}:
        raise TlsyncError(f"derive {new_name!r}: a derived dataset needs a name of its own, not one of its sources'")
    split_source = _split_source(sources, spec.split_from)
    classes = list(dict.fromkeys(c for s in sources for c in [*s.categories, *s.info["counts"]["classes"]]))
    rules = ClassRules(classes, dict(spec.class_map), spec.drop, spec.keep, spec.strict)
    copies = _copies_by_image(sources)
    splits = _decide_splits(sources, copies, split_source)
    with store.lock(new_name), store.staging(new_name) as staging:
        try:
            writer = ManifestWriter(staging)
            tally = _write_items(writer, sources, copies, splits, rules, spec.dedupe)
            writer.close()
        except OSError as e:
            raise store_write_error(e, staging) from None
        if writer.items == 0:
            raise TlsyncError(f"derive {new_name!r}: the sources hold no items")
        content_hash = writer.content_hash(rules.categories)
        provenance = _provenance(sources, spec, rules, tally)
        existing = store.versions(new_name)
        result = DeriveResult(new_name, existing[-1] if existing else 1, True, writer.items, writer.boxes,
                              rules.categories, provenance, near_duplicates(rules.categories))
        if existing and store.open(f"{new_name}@{existing[-1]}").content_hash == content_hash:
            return result
        result.version, result.unchanged = (existing[-1] + 1) if existing else 1, False
        try:
            writer.sync()
            atomic_write_json(staging / INFO, _info(new_name, result.version, spec, writer, rules, content_hash,
                                                    provenance))
        except OSError as e:
            raise store_write_error(e, staging) from None
        store.publish(new_name, staging, result.version)
        return result


def _split_source(sources: list[DatasetVersion], split_from: str | None) -> int | None:
    """The index of ``--split-from`` among the sources (by name or ref), or None."""
    if split_from is None:
        return None
    for i, source in enumerate(sources):
        if split_from in (source.name, source.ref):
            return i
    raise TlsyncError(f"--split-from {split_from!r} is not one of the --from datasets "
                      f"({', '.join(s.ref for s in sources)})")


def _copies_by_image(sources: list[DatasetVersion]) -> dict[str, list[tuple[int, str, str | None]]]:
    """sha256 -> every ``(source index, item id, split)`` showing that picture (one pass, no boxes kept)."""
    copies: dict[str, list[tuple[int, str, str | None]]] = {}
    for index, source in enumerate(sources):
        for item in source.items():
            if not item.image.sha256:
                raise TlsyncError(f"{source.ref}: item '{item.id}' has no image sha256 (re-pull the dataset)")
            copies.setdefault(item.image.sha256, []).append((index, item.id, item.split))
    return copies


def _decide_splits(sources: list[DatasetVersion], copies: dict[str, list[tuple[int, str, str | None]]],
                   split_source: int | None) -> dict[str, str | None]:
    """The split of every picture whose copies disagree: ``--split-from``'s, else an error naming both."""
    decided: dict[str, str | None] = {}
    for sha, found in copies.items():
        splits = {split for _, _, split in found}
        if len(splits) < 2:
            continue
        winner = next((split for index, _, split in found if index == split_source), None) \
            if split_source is not None else None
        if winner is None:
            a, b = found[0], next(c for c in found if c[2] != found[0][2])
            why = (f"; --split-from {sources[split_source].name} has no copy of it" if split_source is not None
                   else "; give --split-from NAME to say whose split wins")
            raise TlsyncError(f"image sha256 {sha[:12]} is '{a[1]}' in {sources[a[0]].ref} ({a[2]}) and '{b[1]}' "
                              f"in {sources[b[0]].ref} ({b[2]}): one picture in two splits{why}")
        decided[sha] = winner
    return decided


def _write_items(writer: ManifestWriter, sources: list[DatasetVersion],
                 copies: dict[str, list[tuple[int, str, str | None]]], splits: dict[str, str | None],
                 rules: ClassRules, dedupe: bool) -> _Tally:
    """Stream every source item through the rules into ``writer``; with ``dedupe``, hold a picture's
    copies until its last one is read, then write them as one item."""
    tally = _Tally()
    held: dict[str, list[Item]] = {}
    prefix = len(sources) > 1
    for source in sources:
        for item in source.items():
            sha = item.image.sha256 or ""
            item = _translated(item, source, rules, tally, prefix)
            if sha in splits and item.split != splits[sha]:
                item.split = splits[sha]
                tally.splits_changed += 1
            group = copies[sha]
            if not dedupe or len(group) == 1:
                writer.write(item)
                continue
            held.setdefault(sha, []).append(item)
            if len(held[sha]) == len(group):
                writer.write(_merge(held.pop(sha), tally))
    return tally


def _translated(item: Item, source: DatasetVersion, rules: ClassRules, tally: _Tally, prefix: bool) -> Item:
    """The item with its boxes renamed or dropped, its id prefixed by its dataset when there are several."""
    boxes = []
    for box in item.annotations:
        label = rules.translate(box.label)
        if label is None:
            tally.boxes_dropped[box.label] += 1
            continue
        boxes.append(box if label == box.label else
                     Box(label, box.x, box.y, box.width, box.height, box.id, box.confidence, box.metadata))
    item_id = f"{source.name}/{item.id}" if prefix else item.id
    metadata = {**item.metadata, "derived_from": [f"{source.ref}:{item.id}"]}
    return Item(item_id, item.image, boxes, item.split, metadata)


def _merge(copies: list[Item], tally: _Tally) -> Item:
    """One item for one picture: the first copy's id and split, every copy's boxes once.

    A box that outlines the same object as a kept one (IoU >= ``SAME_OBJECT_IOU``) is merged
    into it when the labels agree; when they differ the copies disagree about what the object
    is: the earlier source's box stays and the conflict is reported.
    """
    first = copies[0]
    kept: list[Box] = list(first.annotations)
    for other in copies[1:]:
        for box in other.annotations:
            same = [k for k in kept if _iou(k, box) >= SAME_OBJECT_IOU]
            if any(k.label == box.label for k in same):
                tally.boxes_merged += 1
            elif same:
                tally.conflict_count += 1
                if len(tally.conflicts) < MAX_CONFLICTS_LISTED:
                    tally.conflicts.append(f"{first.id}: '{same[0].label}' in {first.metadata['derived_from'][0]} "
                                           f"vs '{box.label}' in {other.metadata['derived_from'][0]}")
            else:
                kept.append(box)
    tally.items_merged += len(copies) - 1
    derived_from = [ref for c in copies for ref in c.metadata["derived_from"]]
    return Item(first.id, first.image, kept, first.split, {**first.metadata, "derived_from": derived_from})


def _iou(a: Box, b: Box) -> float:
    w = min(a.x + a.width, b.x + b.width) - max(a.x, b.x)
    h = min(a.y + a.height, b.y + b.height) - max(a.y, b.y)
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / (a.width * a.height + b.width * b.height - inter)


def _provenance(sources: list[DatasetVersion], spec: DeriveSpec, rules: ClassRules, tally: _Tally) -> dict[str, Any]:
    return {
        "sources": [{"ref": s.ref, "content_hash": s.content_hash, "items": s.info["counts"]["items"],
                     "boxes": s.info["counts"]["boxes"]} for s in sources],
        "class_map": dict(spec.class_map), "drop_class": list(spec.drop), "keep_class": list(spec.keep),
        "strict": spec.strict, "split_from": spec.split_from, "dedupe": spec.dedupe,
        "classes_merged": rules.merged(),
        "boxes_dropped": dict(sorted(tally.boxes_dropped.items())),
        "items_merged": tally.items_merged, "boxes_merged": tally.boxes_merged,
        "splits_changed": tally.splits_changed,
        "conflicts": tally.conflict_count, "conflict_examples": tally.conflicts,
    }


def _info(name: str, version: int, spec: DeriveSpec, writer: ManifestWriter, rules: ClassRules,
          content_hash: str, provenance: dict[str, Any]) -> dict[str, Any]:
    """``dataset.json`` as a pull writes it, with ``source`` = derive and the ``derived_from`` record."""
    params: dict[str, Any] = {"from": ",".join(s["ref"] for s in provenance["sources"])}
    if spec.class_map:
        params["class_map"] = ",".join(f"{k}={v}" for k, v in spec.class_map.items())
    for key, value in (("drop_class", spec.drop), ("keep_class", spec.keep)):
        if value:
            params[key] = ",".join(value)
    for key, flag in (("strict", spec.strict), ("dedupe", spec.dedupe)):
        if flag:
            params[key] = True
    if spec.split_from:
        params["split_from"] = spec.split_from
    return {
        "name": name, "version": version, "categories": rules.categories, "counts": writer.counts(),
        "source": {"name": "derive", "params": params}, "derived_from": provenance,
        "skipped": {}, "not_used": {},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "content_hash": content_hash, "tlsync_version": __version__,
    }


def union_name(sources: list[DatasetVersion]) -> str:
    """The name ``tlsync train --dataset A --dataset B`` gives the union it trains on."""
    return "union-" + "-".join(s.name for s in sources)


def train_union(store: Store, refs: tuple[str, ...], class_map: dict[str, str] | None = None) -> DeriveResult:
    """The union that ``tlsync train --dataset A --dataset B ...`` trains on, derived under the usual rules.

    Classes whose names differ only in case or spacing (``Car`` in one dataset, ``car`` in the
    other) would silently train as two classes that fight over the same objects; they stop
    the run before it starts, with the ``--class-map`` that would merge them. Only the map's
    keys that some dataset has are applied here (the rest may name a parent run's classes).
    """
    sources = open_sources(store, refs)
    classes = list(dict.fromkeys(c for s in sources for c in [*s.categories, *s.info["counts"]["classes"]]))
    applied = {old: new for old, new in (class_map or {}).items() if old in classes}
    rules = ClassRules(classes, applied)
    near = near_duplicates(rules.categories)
    if near:
        pairs = ", ".join(f"{old!r} and {new!r}" for old, new in near.items())
        suggestion = ",".join(f"{old}={new}" for old, new in {**applied, **near}.items())
        raise TlsyncError(f"--dataset {' --dataset '.join(refs)}: classes {pairs} differ only in case or spacing "
                          f"and would train as different classes; merge them with --class-map '{suggestion}' "
                          f"(or derive the union yourself: tlsync datasets derive NAME --from ...)")
    return derive(store, union_name(sources), DeriveSpec(tuple(refs), applied))
