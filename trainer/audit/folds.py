"""The folds of an audit: every labelled image predicted once, by a model that never trained on it.

Label errors are what a model learns from its own training data, so a model scoring the very
images it was trained on agrees with their mistakes (cleanlab's ObjectLab makes the same
point: its scores need out-of-sample predictions). K-fold cross-prediction gives every image
such a prediction at the cost of K training runs.

Folds are stratified like ``tlsync curve``'s subsets: the items are put in the curve's seeded
order (``curve.subsets.nested_order``) and each class's images are dealt across the folds, so
each fold holds about 1/K of every class, rare ones included. Each fold's training data is a dataset
version of its own (``<name>.audit-k4-f1-s0``) holding the items of the other folds with their
splits unchanged: other folds' val images stay the run's val (its best checkpoint and early
stopping, exactly as ``tlsync train``), and the held-out images appear in no split at all.
The store is content-addressed, so this copies no image, and a resumed audit finds the same
versions again.
"""

from __future__ import annotations

from collections import Counter

from tlsync.errors import TlsyncError
from tlsync.format import Item
from tlsync.store import DatasetVersion, Store

from ..curve.subsets import labels, nested_order, write_version

AUDITED_SPLITS = ("train", "val")  # test stays untouched unless asked (--include-test)


def audited_items(base: DatasetVersion, splits: tuple[str, ...]) -> list[Item]:
    """The labelled items of ``splits``; refuses data an audit cannot work on, in one line."""
    items = [item for item in base.items() if item.split in splits]
    if not items:
        raise TlsyncError(f"dataset {base.ref} has no items in {' or '.join(splits)}: nothing to audit")
    if not any(item.annotations for item in items):
        raise TlsyncError(f"dataset {base.ref} has no boxes in {' or '.join(splits)}: an audit needs labels to check")
    return items


def make_folds(items: list[Item], k: int, seed: int) -> list[list[Item]]:
    """``k`` disjoint, class-stratified folds that together hold every item once.

    Each item belongs to the stratum of its rarest class (as in the curve's order); every
    stratum is dealt across the folds in turn, each item to the fold holding the fewest of
    its stratum (then the fewest items), so a class of n images puts n/k, rounded, in each.
    """
    if k < 2:
        raise TlsyncError(f"--folds {k}: give at least 2 (each fold's model trains on the others)")
    if k > len(items):
        raise TlsyncError(f"--folds {k}: more folds than the {len(items)} labelled images; give at most {len(items)}")
    counts = Counter(label for item in items for label in labels(item))
    folds: list[list[Item]] = [[] for _ in range(k)]
    per_stratum: dict[str, list[int]] = {}
    for item in nested_order(items, seed):
        own = labels(item)
        stratum = min(own, key=lambda c: (counts[c], c)) if own else ""
        taken = per_stratum.setdefault(stratum, [0] * k)
        fold = min(range(k), key=lambda f: (taken[f], len(folds[f]), f))
        taken[fold] += 1
        folds[fold].append(item)
    return folds


def fold_name(base: DatasetVersion, k: int, fold: int, seed: int) -> str:
    return f"{base.name}.audit-k{k}-f{fold}-s{seed}"


def fold_version(store: Store, base: DatasetVersion, held_out: list[Item], k: int, fold: int,
                 seed: int) -> DatasetVersion:
    """The dataset version fold ``fold`` trains on: every train/val item of ``base`` not held out."""
    out = {item.id for item in held_out}
    return write_version(store, base, fold_name(base, k, fold, seed),
                         lambda item: item.split in AUDITED_SPLITS and item.id not in out,
                         {"of": base.ref, "audit_folds": k, "fold": fold, "seed": seed})
