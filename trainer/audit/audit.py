"""One audit end to end: folds (or a run's own model), scores, outputs, and what a target receives."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tlsync.atomic import atomic_write_json
from tlsync.store import Store

from .output import write_outputs
from .review import ImageReview, counts, ranked_rows, review, suggested_labels
from .run import AuditPlan, run_folds

IN_SAMPLE_NOTE = ("In-sample: the run's model trained on most of these images, so it has learnt some of their "
                  "errors and misses them; an audit with --folds finds more.")
FOLDS_NOTE = "Out-of-sample: each image was predicted by the fold run that never trained on it."
# Below this share of labels found by the model, its disagreements say more about the model than the labels.
WEAK_MODEL = 0.3


def model_note(found: int, labels: int, conf: float) -> str:
    """Whether the model agrees with enough of the labels for its disagreements to mean anything."""
    share = found / labels if labels else 0.0
    text = f"The model found {found} of {labels} labels ({share:.0%}) with a prediction of their class at IoU >= 0.5 " \
           f"and confidence >= {conf:g}."
    if share < WEAK_MODEL:
        text += (" That is too few for its suspicions to mean much (most labels look spurious to a model that "
                 "detects little): train the folds longer (--epochs), larger (--img-size) or from --weights coco.")
    return text


def run_audit(plan: AuditPlan, done: list[dict[str, Any]], train_fold: Callable[[Any], Path],
              store: Store | None = None) -> tuple[dict[str, Any], list[dict[str, Any]], list[ImageReview]]:
    """Train and predict what is left, score every image, write the outputs; returns (audit.json, rows, reviews)."""
    store = store or Store()
    started = time.perf_counter()
    base, items, predictions, fold_runs = run_folds(plan, done, train_fold, store)
    predicted = time.perf_counter()
    folds = {item_id: record["fold"] for record in fold_runs for item_id in _fold_items(plan, record)}
    reviews = review(items, predictions, folds, plan.conf)
    rows = ranked_rows(reviews, {r["fold"]: r["run"] for r in fold_runs})
    scored = time.perf_counter()
    summary: dict[str, Any] = {
        "name": plan.name, "settings": plan.to_dict(), "dataset_version": base.ref,
        "content_hash": base.content_hash, "in_sample": bool(plan.run),
        "note": " ".join([IN_SAMPLE_NOTE if plan.run else FOLDS_NOTE,
                          model_note(sum(r.found for r in reviews), sum(len(i.annotations) for i in items),
                                     plan.conf)]),
        "fold_runs": fold_runs,
        "images": len(items), "labels": sum(len(i.annotations) for i in items), "suspects": len(rows),
        "images_with_suspects": sum(1 for r in reviews if r.suspects), "counts": counts(rows, base.categories),
        "labels_found_by_model": sum(r.found for r in reviews),
        "seconds": {"folds_and_predictions_this_session": round(predicted - started, 2),
                    "folds_and_predictions_total": round(sum(r["seconds"] for r in fold_runs), 2),
                    "scoring": round(scored - predicted, 3)},
        "finished": True,
    }
    write_outputs(plan.folder, rows, summary, {i.id: i for i in items}, base.image_path)
    summary["seconds"]["outputs"] = round(time.perf_counter() - scored, 2)
    atomic_write_json(plan.folder / "audit.json", summary)
    return summary, rows, reviews


def _fold_items(plan: AuditPlan, record: dict[str, Any]) -> list[str]:
    from .run import predictions_file, read_predictions

    return [p.id for p in read_predictions(predictions_file(plan, record["fold"]))]


def selection_items(reviews: list[ImageReview]) -> tuple[list[Any], list[Any], list[float]]:
    """Suspect images, most suspect first: (suggested labelling, current labels, image suspicion).

    A target receives the suggestion as the image's predicted boxes and the current labels
    beside them, so a reviewer sees both and keeps one.
    """
    from tlsync.format import Item

    flagged = sorted((r for r in reviews if r.suspects), key=lambda r: (r.quality, r.item.id))
    suggested = [Item(r.item.id, r.item.image, suggested_labels(r), r.item.split, dict(r.item.metadata))
                 for r in flagged]
    return suggested, [r.item for r in flagged], [round(1.0 - r.quality, 5) for r in flagged]
