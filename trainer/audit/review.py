"""From labels and out-of-sample predictions to the ranked list of suspects (no torch).

Each row of ``suspects.jsonl`` is one probable error: the label as it is, what the model
suggests instead, the score and its evidence, and which fold run predicted the image. The
per-image label quality (ObjectLab's pooled score, see ``scores.image_quality``) rides along
on every row of that image, and ``suggested_labels`` turns an image's suspects into the
labelling a reviewer would accept: what targets send as the suggestion.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from tlsync.format import Box, Item

from .scores import KINDS, Boxes, Suspect, found_labels, image_quality, score_image


@dataclass
class ImageReview:
    item: Item
    predictions: list[Box]
    suspects: list[Suspect]
    quality: float
    fold: int
    found: int  # labels the model's confident predictions find (IoU >= 0.5, same class)


def review(items: list[Item], predictions: dict[str, Item], folds: dict[str, int], conf: float) -> list[ImageReview]:
    """Every audited image scored; those without a prediction (none should lack one) count as unseen."""
    reviews = []
    for item in items:
        predicted = predictions.get(item.id)
        boxes = predicted.annotations if predicted is not None else []
        labels, predicted_boxes = Boxes.from_boxes(item.annotations), Boxes.from_boxes(boxes)
        suspects = score_image(labels, predicted_boxes, conf)
        flagged = {s.label for s in suspects if s.label is not None}
        quality = image_quality([s.score for s in suspects], len(item.annotations) - len(flagged))
        reviews.append(ImageReview(item, boxes, suspects, quality, folds.get(item.id, 0),
                                   found_labels(labels, predicted_boxes, conf)))
    return reviews


def ranked_rows(reviews: list[ImageReview], fold_runs: dict[int, str]) -> list[dict[str, Any]]:
    """One row per suspect, most suspect first (ties: lower image quality, then item id)."""
    rows: list[dict[str, Any]] = []
    for r in reviews:
        for s in r.suspects:
            label = r.item.annotations[s.label] if s.label is not None else None
            suggestion = r.predictions[s.prediction] if s.prediction is not None else None
            rows.append({
                "item": r.item.id, "sha256": r.item.image.sha256, "split": r.item.split, "kind": s.kind,
                "score": round(s.score, 5), "image_quality": round(r.quality, 5),
                "label": _box(label, s.label), "suggestion": _box(suggestion, s.prediction),
                "evidence": {k: round(v, 5) for k, v in s.evidence.items()},
                "fold": r.fold, "fold_run": fold_runs.get(r.fold, ""),
            })
    rows.sort(key=lambda row: (-row["score"], row["image_quality"], row["item"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return [{"rank": row.pop("rank"), **row} for row in rows]


def _box(box: Box | None, index: int | None) -> dict[str, Any] | None:
    if box is None:
        return None
    out: dict[str, Any] = {"index": index, "class": box.label, "box": [box.x, box.y, box.width, box.height]}
    if box.confidence is not None:
        out["confidence"] = box.confidence
    return out


def counts(rows: list[dict[str, Any]], categories: list[str]) -> dict[str, Any]:
    """Suspects per kind, and per kind and class (the label's class; the suggestion's for a missing box)."""
    per_class: dict[str, Counter] = {kind: Counter() for kind in KINDS}
    for row in rows:
        cls = (row["label"] or row["suggestion"] or {}).get("class", "")
        per_class[row["kind"]][cls] += 1
    return {"per_kind": {kind: sum(c.values()) for kind, c in per_class.items()},
            "per_kind_and_class": {kind: {name: c.get(name, 0) for name in categories if c.get(name)}
                                   for kind, c in per_class.items()}}


def suggested_labels(r: ImageReview) -> list[Box]:
    """The image's labels with every suspect's fix applied: what a reviewer is asked to accept.

    Missing boxes are added, wrong classes and badly placed boxes take the prediction's class
    and box, spurious labels are left out; the rest stay as labelled (confidence 1). Each box
    carries its confidence (a platform shows it) and, for a change, ``metadata["audit"]``.
    """
    by_label = {s.label: s for s in r.suspects if s.label is not None}
    out: list[Box] = []
    for i, label in enumerate(r.item.annotations):
        s = by_label.get(i)
        if s is None:
            out.append(Box(label.label, label.x, label.y, label.width, label.height, confidence=1.0))
        elif s.prediction is not None:
            p = r.predictions[s.prediction]
            out.append(Box(p.label, p.x, p.y, p.width, p.height, confidence=p.confidence,
                           metadata={"audit": s.kind, "score": round(s.score, 5)}))
    for s in r.suspects:
        if s.kind == "missing" and s.prediction is not None:
            p = r.predictions[s.prediction]
            out.append(Box(p.label, p.x, p.y, p.width, p.height, confidence=p.confidence,
                           metadata={"audit": "missing", "score": round(s.score, 5)}))
    return out
