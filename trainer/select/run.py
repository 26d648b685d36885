"""``tlsync select`` from run + pool to a ranked selection (``run_selection``), and the parts the
command and the benchmark share.

Scoring (one model pass over the pool) is kept apart from choosing (a cheap function of
the scores), so the benchmark scores a pool once and tries every strategy and seed on it,
and so the time per 1,000 pool images can be reported for each part.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlsync.console import echo, info, progress
from tlsync.errors import TlsyncError
from tlsync.format import Item
from tlsync.store import DatasetVersion, Store

from ..training.checkpoint import load_model
from ..training.device import resolve_device
from ..training.runs import existing_run_dir, read_config
from ..training.settings import default_workers
from .output import claim_folder, histogram, rows, write_selection
from .pool import Pool, build_pool, describe, pull_folder
from .score import Scored, score_items
from .settings import SelectConfig
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


@dataclass
class Selected:
    """A written selection: its folder, what was chosen from which candidates, and the run it is for."""

    folder: Path
    choice: Choice
    candidates: Pool
    run: dict[str, Any]  # name, dir, dataset, categories, config: what a target's send_selection receives


def run_selection(cfg: SelectConfig) -> Selected:
    """Score the pool with the run's model, choose ``cfg.budget`` images and write the selection folder."""
    run = existing_run_dir(cfg.run)
    config = read_config(run)
    if not config.get("dataset"):
        raise TlsyncError(f"{run}/config.json names no dataset, so tlsync cannot tell what is labelled already")
    store = Store()
    labelled = store.open(config["dataset"])
    candidates = build_pool(store.open(_pool_ref(cfg, store)), labelled, [store.open(ref) for ref in cfg.exclude])
    info(describe(candidates))
    device = resolve_device(cfg.device)
    model, categories, config = load_model(run, device=device)
    with progress(f"select: score {len(candidates.items)} images", total=len(candidates.items) or None,
                  unit="images") as update:
        scores = score_pool(model, candidates, labelled, categories, device, int(config.get("img_size") or 640),
                            cfg.strategy, cfg.batch_size, default_workers() if cfg.workers is None else cfg.workers,
                            update)
    report_unreadable(scores.scored)
    choice = choose(scores, cfg.strategy, cfg.budget, cfg.seed, cfg.conf)
    for note in choice.notes:
        info(note)
    run_info = {"name": run.name, "dir": str(run), "dataset": config["dataset"], "categories": categories,
                "config": config}
    folder = claim_folder(cfg.project, cfg.name, candidates.version.name)
    selected = rows(choice.items, [p.score for p in choice.picks], [p.components for p in choice.picks])
    meta = summary(run_info, candidates, cfg.strategy, cfg.budget, cfg.seed, scores, choice, categories, cfg.conf)
    write_selection(folder, selected, meta, choice.items, [candidates.version.image_path(i) for i in choice.items],
                    categories)
    echo(f"selected {len(choice.items)} of {len(candidates.items)} candidates from {candidates.version.ref} "
         f"({cfg.strategy}, seed {cfg.seed}), {meta['seconds']['per_1000_pool_images']:,.1f} s per 1,000 pool "
         f"images: {folder}")
    return Selected(folder, choice, candidates, run_info)


def _pool_ref(cfg: SelectConfig, store: Store) -> str:
    """``--pool``, or the dataset ``--pool-path``'s images were just pulled into."""
    if cfg.pool_path is None:
        assert cfg.pool is not None  # SelectConfig asks for one of the two
        return cfg.pool
    with progress(f"pull {cfg.pool_path} -> pool", unit="images") as update:
        pool, pulled = pull_folder(store, cfg.pool_path, update)
    if pulled.skipped:
        info(f"skipped {sum(pulled.skipped.values())} unreadable files in {cfg.pool_path}")
    return pool


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

