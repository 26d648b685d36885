"""``tlsync select`` from run + pool to a ranked selection: the parts the command and the
benchmark share.

Scoring (one model pass over the pool) is kept apart from choosing (a cheap function of
the scores), so the benchmark scores a pool once and tries every strategy and seed on it,
and so the time per 1,000 pool images can be reported for each part.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tlsync.console import info
from tlsync.errors import TlsyncError
from tlsync.format import Item
from tlsync.store import DatasetVersion

from .output import histogram
from .pool import Pool
from .score import Scored, score_items
from .strategies import Pick, select

NEEDS_FEATURES = ("diversity", "hybrid")


@dataclass
class PoolScores:
    """The pool as the model sees it, plus the labelled set's features when a strategy needs them."""

    scored: Scored
    labelled_features: np.ndarray | None
    seconds: float
    labelled_seconds: float = 0.0


@dataclass
class Choice:
    """A selection: the picked items (predicted boxes at ``conf`` as annotations), best first."""

    items: list[Item]
    picks: list[Pick]
    seconds: float
    notes: list[str] = field(default_factory=list)


def score_pool(model: torch.nn.Module, pool: Pool, labelled: DatasetVersion, categories: list[str],
               device: torch.device, img_size: int, strategy: str, batch_size: int = 4, workers: int = 0,
               progress: Callable[..., None] | None = None) -> PoolScores:
    """Predict every candidate (and embed it); embed the labelled set too for diversity/hybrid."""
    started = time.perf_counter()
    features = strategy in NEEDS_FEATURES
    scored = score_items(model, pool.items, pool.version.image_path, categories, device, img_size, batch_size,
                         workers, features=features, progress=progress)
    seconds = time.perf_counter() - started
    labelled_features, labelled_seconds = None, 0.0
    if features:
        started = time.perf_counter()
        known = [item for item in labelled.items() if item.image.path]
        labelled_features = score_items(model, known, labelled.image_path, categories, device, img_size,
                                        batch_size, workers, features=True, boxes=False).features
        labelled_seconds = time.perf_counter() - started
    return PoolScores(scored, labelled_features, seconds, labelled_seconds)


def clamp_budget(budget: int, candidates: int) -> tuple[int, list[str]]:
    """The budget actually used, with a note when it had to change; an empty pool is an error."""
    if candidates == 0:
        raise TlsyncError("the pool has no candidates left after exclusions (every image is labelled, "
                          "excluded, or unreadable); nothing to select")
    if budget <= 0:
        raise TlsyncError("--budget 0: nothing to select; give how many images to label next")
    if budget > candidates:
        return candidates, [f"--budget {budget} is larger than the pool's {candidates} candidates; "
                            f"selecting all {candidates}"]
    return budget, []


def choose(scores: PoolScores, strategy: str, budget: int, seed: int, conf: float) -> Choice:
    """Apply ``strategy``; the chosen items carry their predicted boxes at ``conf`` or above."""
    scored = scores.scored
    budget, notes = clamp_budget(budget, len(scored.items))
    started = time.perf_counter()
    picks = select(strategy, scored.boxes, scored.features, scores.labelled_features, budget, seed)
    seconds = time.perf_counter() - started
    items = []
    for pick in picks:
        item = scored.items[pick.index]
        boxes = [b for b in scored.boxes[pick.index] if (b.confidence or 0.0) >= conf]
        items.append(Item(item.id, item.image, boxes, item.split, dict(item.metadata)))
    return Choice(items, picks, seconds, notes)


def report_unreadable(scored: Scored) -> None:
    if scored.unreadable:
        first_id, reason = next(iter(scored.unreadable.items()))
        info(f"skipped {len(scored.unreadable)} unreadable pool images (first: '{first_id}': {reason})")


def summary(run: dict[str, Any], pool: Pool, strategy: str, requested: int, seed: int, scores: PoolScores,
            choice: Choice, categories: list[str], conf: float) -> dict[str, Any]:
    """``selection.json``: everything needed to reproduce and judge the selection."""
    n = max(1, len(pool.items))
    return {
        "run": run["name"], "run_dir": run["dir"], "run_dataset": run["dataset"], "pool": pool.version.ref,
        "strategy": strategy, "budget": requested, "selected": len(choice.items), "seed": seed, "conf": conf,
        **pool.counts(), "unreadable": len(scores.scored.unreadable),
        "seconds": {"score_pool": round(scores.seconds, 3), "embed_labelled": round(scores.labelled_seconds, 3),
                    "choose": round(choice.seconds, 3),
                    "per_1000_pool_images": round(1000 * (scores.seconds + scores.labelled_seconds + choice.seconds)
                                                  / n, 3)},
        "predicted_classes": {
            "selection": histogram([i.annotations for i in choice.items], categories),
            "pool": histogram([[b for b in boxes if (b.confidence or 0) >= conf] for boxes in scores.scored.boxes],
                              categories)},
        "notes": choice.notes,
    }

