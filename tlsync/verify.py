"""``tlsync datasets verify NAME[@N]``: check a version's own files against what they promise.

A store is a folder on a disk: a bad copy, a disk error, a user's editor or an attacker
with write access can change it after a pull. Reading commands already refuse a changed
image when they meet it (``Store.checked_image``); this walks a whole version at once and
lists every problem: ``dataset.json`` unreadable or of the wrong shape, ``items.jsonl``
lines that are not valid items (checked as strictly as a pull checks a source's), an
image path that is not where its sha256 puts it, images missing or whose bytes changed,
and counts or a content hash that no longer match the items.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from .errors import TlsyncError
from .format import Item, content_key
from .manifest import INFO, ITEMS, read_info
from .store import Store, file_sha256, parse_ref

MAX_SHOWN = 200  # problems printed; the count says how many more


@dataclass
class Report:
    ref: str
    items: int = 0
    images: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, problem: str) -> None:
        self.problems.append(problem)


def verify(store: Store, ref: str) -> Report:
    """Every problem of ``ref`` (the latest version when no ``@N``); an empty list when sound."""
    name, version = parse_ref(ref)
    versions = store.versions(name)
    if not versions:
        raise TlsyncError(f"dataset '{name}' not found in {store.datasets_dir}")
    if version is not None and version not in versions:
        raise TlsyncError(f"dataset '{name}' has no version {version} (versions: {', '.join(map(str, versions))})")
    version = version or versions[-1]
    folder = store.datasets_dir / name / str(version)
    report = Report(f"{name}@{version}")
    try:
        info = read_info(folder)
    except TlsyncError as e:
        report.add(str(e))
        info = None
    _check_items(store, folder, report, info)
    return report


def _check_items(store: Store, folder: Path, report: Report, info: dict | None) -> None:
    """Each line of ``items.jsonl``, each image once, then the totals against ``dataset.json``."""
    digest, ids, hashed = hashlib.sha256(), set(), dict[str, str]()
    boxes, categories = 0, set(info["categories"]) if info else set()
    try:
        lines = (folder / ITEMS).read_bytes().splitlines()
    except OSError as e:
        report.add(f"{folder / ITEMS}: cannot read it ({e.strerror or e})")
        return
    for n, line in enumerate(lines, 1):
        where = f"{folder / ITEMS}: line {n}"
        try:
            item = Item.from_dict(orjson.loads(line))  # validated, as a source's item is
        except (orjson.JSONDecodeError, TlsyncError, AttributeError, TypeError) as e:
            report.add(f"{where}: not a valid item ({e})")
            continue
        report.items += 1
        boxes += len(item.annotations)
        digest.update(repr(content_key(item)).encode())
        if item.id in ids:
            report.add(f"{where}: item {item.id!r} appears twice")
        ids.add(item.id)
        if info and (unknown := {b.label for b in item.annotations} - categories):
            report.add(f"{where}: item {item.id!r} has labels not in dataset.json's categories: {sorted(unknown)}")
        _check_image(store, report, where, item, hashed)
    if info:
        _check_totals(report, folder, info, digest, boxes)


def _check_image(store: Store, report: Report, where: str, item: Item, hashed: dict[str, str]) -> None:
    try:
        path = store.image_of(item, report.ref)
    except TlsyncError as e:
        report.add(f"{where}: {e}")
        return
    expected = path.relative_to(store.home).as_posix()
    if item.image.path != expected:
        report.add(f"{where}: item {item.id!r} names image path {item.image.path!r}, not {expected!r} where its "
                   f"sha256 puts it (tlsync reads {expected})")
    sha = str(item.image.sha256)
    if sha not in hashed:
        hashed[sha] = file_sha256(path) if path.exists() else "missing"
        report.images += 1
    if hashed[sha] == "missing":
        report.add(f"{where}: item {item.id!r}: image {expected} is missing from the store")
    elif hashed[sha] != sha:
        report.add(f"{where}: item {item.id!r}: image {expected} changed after the pull "
                   f"(sha256 {sha} recorded, {hashed[sha]} found)")


def _check_totals(report: Report, folder: Path, info: dict, digest: hashlib._Hash, boxes: int) -> None:
    counts = info["counts"]
    if (counts["items"], counts["boxes"]) != (report.items, boxes):
        report.add(f"{folder / INFO}: counts say {counts['items']} items and {counts['boxes']} boxes; "
                   f"{ITEMS} holds {report.items} and {boxes}")
    digest.update(repr(list(info["categories"])).encode())
    if "sha256:" + digest.hexdigest() != info["content_hash"]:
        report.add(f"{folder / INFO}: content_hash {info['content_hash']} does not match the items "
                   f"(sha256:{digest.hexdigest()}): items.jsonl or dataset.json was edited after the pull")
