"""How suspect each label is, from a model's out-of-sample predictions (numpy only, no torch).

The scores follow cleanlab's ObjectLab (Tkachenko et al., "ObjectLab: Automated Diagnosis of
Mislabeled Images in Object Detection Data", 2023; ``cleanlab/object_detection/rank.py``):
three error kinds, each scored per box from how the labels and the predictions overlap, then
pooled per image with a softmin. Where we depart from it, and why (docs/audit.md has more):

* **Suspicion, not quality.** A suspect's score is in [0, 1], higher = more likely wrong, so
  the ranking reads top-down; the image's label quality is ``1 - suspicion`` pooled as ObjectLab
  pools its per-box qualities.
* **The prediction's confidence weighs the evidence.** ObjectLab thresholds predictions at a
  fixed probability (0.95 for overlooked and swapped boxes, 0.5 for badly located ones) and
  then scores by geometry alone. A detector fine-tuned for a few epochs on a CPU rarely reaches
  0.95, so here every prediction above ``conf`` counts, weighted by its confidence.
* **IoU only.** ObjectLab mixes IoU with ``exp(-0.1 * centre distance in pixels)``, which makes
  the score depend on the image's resolution; the audit uses IoU alone.
* **One piece of evidence, one suspect.** A prediction that is some label's closest match (of
  its class, or of another class) explains that label and is not also reported as a missing
  box; ObjectLab's overlooked score skips any prediction that touches a label at all, which
  hides a missing object next to a labelled one.

The kinds: ``missing`` (a confident prediction no label explains: the suggestion is the
predicted box), ``wrong_class`` (a confident prediction of another class covers the label,
and the model does not also see the labelled class there), ``badly_placed`` (the closest
confident prediction of the label's class overlaps it only partly) and ``spurious`` (no
prediction of any class near the label, or a box with no area). A label yields at most one
suspect: its likeliest kind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MATCH_IOU = 0.5  # the IoU at which a prediction and a label are the same object (COCO's AP50)
NEAR_IOU = 0.1  # below this a prediction is not evidence about a label at all
# A label the model does not see at all is weaker evidence than a confident prediction the
# labels miss: small detectors miss real objects far more often than they invent them.
SPURIOUS_WEIGHT = 0.5
TEMPERATURE = 0.1  # ObjectLab's softmin temperature for pooling per-box scores into one per image
KINDS = ("missing", "wrong_class", "badly_placed", "spurious")


@dataclass
class Boxes:
    """One image's boxes as arrays: xyxy pixels, class names, and confidences (1.0 for labels)."""

    xyxy: np.ndarray
    classes: list[str]
    conf: np.ndarray

    @classmethod
    def from_boxes(cls, boxes: list[Any]) -> Boxes:
        """From ``tlsync.format.Box`` objects (x, y, width, height)."""
        xyxy = np.array([[b.x, b.y, b.x + b.width, b.y + b.height] for b in boxes], dtype=float).reshape(-1, 4)
        conf = np.array([1.0 if b.confidence is None else b.confidence for b in boxes], dtype=float)
        return cls(xyxy, [b.label for b in boxes], conf)

    def __len__(self) -> int:
        return len(self.classes)


@dataclass
class Suspect:
    """One probable label error: the label (by index) and/or the prediction that suggests a fix."""

    kind: str
    score: float
    label: int | None  # index into the image's labels; None for a missing box
    prediction: int | None  # index into the image's predictions; None when nothing is suggested
    evidence: dict[str, float] = field(default_factory=dict)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in ``a`` (rows) with every one in ``b`` (columns); 0 for boxes with no area."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def score_image(labels: Boxes, predictions: Boxes, conf: float) -> list[Suspect]:
    """Every suspect of one image, unsorted: at most one per label, one per unexplained prediction."""
    overlap = iou(labels.xyxy, predictions.xyxy)  # labels x predictions
    confident = predictions.conf >= conf
    suspects: list[Suspect] = []
    explains = np.zeros(len(predictions), dtype=bool)
    for i in range(len(labels)):
        suspect, used = _label_suspect(i, labels, predictions, overlap[i], confident)
        explains[used] = True
        if suspect is not None:
            suspects.append(suspect)
    for j in np.flatnonzero(confident & ~explains):
        best = float(overlap[:, j].max()) if len(labels) else 0.0
        score = float(predictions.conf[j]) * (1.0 - min(1.0, best / MATCH_IOU))
        if score > 0:
            suspects.append(Suspect("missing", score, None, int(j),
                                    {"confidence": float(predictions.conf[j]), "best_label_iou": best}))
    return suspects


def _label_suspect(i: int, labels: Boxes, predictions: Boxes, overlap: np.ndarray,
                   confident: np.ndarray) -> tuple[Suspect | None, list[int]]:
    """Label ``i``'s likeliest error (or None) and the predictions its candidates used as evidence."""
    box = labels.xyxy[i]
    if box[2] <= box[0] or box[3] <= box[1]:
        return Suspect("spurious", 1.0, i, None, {"area": 0.0}), []
    same = np.array([c == labels.classes[i] for c in predictions.classes], dtype=bool)
    near = overlap >= NEAR_IOU
    seen_same = float(predictions.conf[same & (overlap >= MATCH_IOU)].max(initial=0.0))
    candidates: list[Suspect] = []
    used: list[int] = []
    if (pick := _best(overlap, same & confident & near)) is not None:
        used.append(pick)
        candidates.append(Suspect("badly_placed", float(predictions.conf[pick]) * (1.0 - float(overlap[pick])), i,
                                  pick, {"iou": float(overlap[pick]), "confidence": float(predictions.conf[pick])}))
    if (other := _best(overlap, ~same & confident & near)) is not None:
        cover = min(1.0, float(overlap[other]) / MATCH_IOU)
        score = float(predictions.conf[other]) * cover * (1.0 - seen_same)
        candidates.append(Suspect("wrong_class", score, i, other,
                                  {"iou": float(overlap[other]), "confidence": float(predictions.conf[other]),
                                   "labelled_class_confidence": seen_same}))
        used.append(other)
    if not (near & confident).any():
        seen = float(predictions.conf[near].max(initial=0.0))
        candidates.append(Suspect("spurious", SPURIOUS_WEIGHT * (1.0 - seen), i, None, {"nearby_confidence": seen}))
    best = max(candidates, key=lambda s: s.score, default=None)
    return (best if best is not None and best.score > 0 else None), used


def found_labels(labels: Boxes, predictions: Boxes, conf: float) -> int:
    """How many labels a confident prediction of their class finds (IoU >= 0.5): is the model fit to judge?"""
    if not len(labels) or not len(predictions):
        return 0
    overlap = iou(labels.xyxy, predictions.xyxy)
    same = np.array([[c == p for p in predictions.classes] for c in labels.classes], dtype=bool)
    return int(((overlap >= MATCH_IOU) & same & (predictions.conf >= conf)[None, :]).any(axis=1).sum())


def _best(overlap: np.ndarray, allowed: np.ndarray) -> int | None:
    """The allowed prediction that overlaps the label most, if any."""
    if not allowed.any():
        return None
    return int(np.where(allowed, overlap, -1.0).argmax())


def image_quality(suspicions: list[float], clean_labels: int) -> float:
    """An image's label quality in [0, 1] (1: nothing suspect): ObjectLab's softmin of per-box qualities.

    Every label that is not suspect counts with quality 1, as in ObjectLab. The softmin
    (``sum(q * softmax(-q / T))`` with T = 0.1) sits close to the worst box's quality but
    still ranks an image with two bad boxes below one with a single bad box.
    """
    if not suspicions:
        return 1.0
    quality = np.concatenate([1.0 - np.asarray(suspicions, dtype=float), np.ones(max(0, clean_labels))])
    weights = np.exp(-(quality - quality.min()) / TEMPERATURE)
    return float(np.dot(weights / weights.sum(), quality))
