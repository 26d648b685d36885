"""Detection metrics: COCO mAP, plus precision/recall/F1 and a confusion matrix at IoU 0.5.

mAP50-95, mAP50 and per-class AP come from pycocotools' ``COCOeval`` so the numbers are the
ones papers and other tools report. The headline precision, recall and F1 are pooled over all
boxes of all classes (TP / (TP + FP), TP / (TP + FN)): that answers "how many of my boxes are
right and how many objects did I find", and it makes hand-counted cases exact. The confidence
threshold is the one that maximises F1, since a detector's raw output (every box above ~0.05)
is not what anyone deploys. ``per_class`` gives each class's own P, R, F1, AP50 and AP50-95 at
that same threshold, the table Ultralytics prints after validation.

Everything here works on ``Item``s matched by ``id``; it never touches torch.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from tlsync.errors import TlsyncError
from tlsync.format import Box, Item

IOU = 0.5
BACKGROUND = "background"


def category_ids(categories: list[str]) -> dict[str, int]:
    """COCO category ids: 1..K in the order of ``categories`` (the model's label numbers)."""
    return {name: i + 1 for i, name in enumerate(categories)}


def coco_ground_truth(items: list[Item], categories: list[str],
                      file_name: Callable[[Item], str] | None = None) -> dict[str, Any]:
    """A COCO dataset dict (image id = position + 1); ``item_id`` keeps the tlsync id."""
    cat_ids = category_ids(categories)
    images, seen = [], set()
    annotations: list[dict[str, Any]] = []
    for image_id, item in enumerate(items, 1):
        if item.id in seen:
            raise TlsyncError(f"item '{item.id}' appears twice in the ground truth")
        seen.add(item.id)
        images.append({
            "id": image_id, "item_id": item.id,
            "file_name": file_name(item) if file_name else item.id,
            "width": item.image.width or 0, "height": item.image.height or 0,
        })
        for box in item.annotations:
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": _cat(cat_ids, box, item),
                "bbox": [box.x, box.y, box.width, box.height], "area": box.width * box.height, "iscrowd": 0,
            })
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for name, i in cat_ids.items()],
    }


def coco_results(predictions: list[Item], categories: list[str], image_ids: dict[str, int]) -> list[dict[str, Any]]:
    """COCO results (``image_id``, ``category_id``, ``bbox``, ``score``) for predicted items."""
    cat_ids = category_ids(categories)
    results = []
    for item in predictions:
        if item.id not in image_ids:
            raise TlsyncError(f"prediction for item '{item.id}', which is not in the ground truth")
        for box in item.annotations:
            results.append({
                "image_id": image_ids[item.id], "category_id": _cat(cat_ids, box, item),
                "bbox": [box.x, box.y, box.width, box.height],
                "score": box.confidence if box.confidence is not None else 1.0,
            })
    return results


def _cat(cat_ids: dict[str, int], box: Box, item: Item) -> int:
    try:
        return cat_ids[box.label]
    except KeyError:
        raise TlsyncError(
            f"item '{item.id}': label '{box.label}' is not one of the categories ({', '.join(cat_ids)})"
        ) from None


def evaluate(ground_truth: list[Item], predictions: list[Item], categories: list[str],
             conf: float | None = None) -> dict[str, Any]:
    """Every metric of one evaluation, as plain JSON-ready values.

    Keys: ``map50_95``, ``map50``, ``per_class_ap`` (AP50-95 per class name; None for a class
    with no ground-truth boxes here), ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn`` at
    ``best_conf`` (None when nothing was predicted), the same under ``at_conf`` when ``conf`` is
    given, ``confusion_matrix`` (rows: true class, columns: predicted class, last of each:
    background) at ``confusion_conf``, ``pr_curve`` (COCO's 101 recall points and the mean
    precision over classes at IoU 0.5, plus each class's under ``per_class``), and
    ``per_class`` (each class's ``boxes``, P/R/F1/TP/FP/FN, ``ap50`` and ``ap50_95`` at
    ``confusion_conf``).
    """
    if not ground_truth:
        raise TlsyncError("nothing to evaluate: the ground truth has no items")
    gt = coco_ground_truth(ground_truth, categories)
    image_ids = {image["item_id"]: image["id"] for image in gt["images"]}
    results = coco_results(predictions, categories, image_ids)
    coco = _coco_metrics(gt, results, categories)

    pairs = _pairs(gt, results)
    scores, hits, classes, true_classes = _class_aware_hits(pairs)
    n_gt = len(true_classes)
    best = _best_f1(scores, hits, n_gt)
    out: dict[str, Any] = {**coco, **best}
    if conf is not None:
        out["at_conf"] = {"conf": conf, **_prf(int(hits[scores >= conf].sum()), int((scores >= conf).sum()), n_gt)}
    matrix_conf = conf if conf is not None else (best["best_conf"] or 0.0)
    kept = scores >= matrix_conf
    out["per_class"] = {
        name: {"boxes": int((true_classes == k).sum()),
               **_prf(int(hits[kept & (classes == k)].sum()), int((kept & (classes == k)).sum()),
                      int((true_classes == k).sum())),
               "ap50": coco["per_class_ap50"][name], "ap50_95": coco["per_class_ap"][name]}
        for k, name in enumerate(categories, 1)
    }
    out["confusion_matrix"] = _confusion(pairs, len(categories), matrix_conf)
    out["confusion_labels"] = [*categories, BACKGROUND]
    out["confusion_conf"] = matrix_conf
    out["images"] = len(ground_truth)
    out["ground_truth_boxes"] = n_gt
    out["predicted_boxes"] = len(results)
    return out


# -- COCO mAP ------------------------------------------------------------------------------

def _coco_metrics(gt: dict[str, Any], results: list[dict[str, Any]], categories: list[str]) -> dict[str, Any]:
    """mAP and per-class AP from COCOeval (area 'all', 100 detections per image)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress; stdout is for results
        coco_gt = _index(COCO, gt)
        # Built by hand rather than with loadRes, which cannot take an empty result list.
        detections = [{**r, "id": i, "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0}
                      for i, r in enumerate(results, 1)]
        coco_dt = _index(COCO, {**gt, "annotations": detections})
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.catIds = list(range(1, len(categories) + 1))
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # [IoU, recall, class] at area all, 100 dets
    valid = [k for k in range(len(categories)) if (precision[:, :, k] > -1).all()]

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else 0.0

    per_class_pr = {categories[k]: [round(float(p), 6) for p in precision[0, :, k]] for k in valid}
    mean_pr = precision[0][:, valid].mean(axis=1) if valid else np.zeros(precision.shape[1])
    return {
        "map50_95": mean(precision[:, :, valid]),
        "map50": mean(precision[0][:, valid]),
        "per_class_ap": {name: (mean(precision[:, :, k]) if k in valid else None)
                         for k, name in enumerate(categories)},
        "per_class_ap50": {name: (mean(precision[0, :, k]) if k in valid else None)
                           for k, name in enumerate(categories)},
        "pr_curve": {
            "recall": [round(float(r), 6) for r in evaluator.params.recThrs],
            "precision": [round(float(p), 6) for p in mean_pr],
            "per_class": per_class_pr,
        },
    }


def _index(coco_class: Any, dataset: dict[str, Any]) -> Any:
    coco = coco_class()
    coco.dataset = dataset
    coco.createIndex()
    return coco


# -- P/R/F1 and the confusion matrix at IoU 0.5 --------------------------------------------

def _pairs(gt: dict[str, Any], results: list[dict[str, Any]]
           ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per image: (true xyxy, true class, predicted xyxy, predicted class, score), by falling score."""
    truth: dict[int, list[dict[str, Any]]] = defaultdict(list)
    predicted: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for ann in gt["annotations"]:
        truth[ann["image_id"]].append(ann)
    for res in results:
        predicted[res["image_id"]].append(res)
    pairs = []
    for image in gt["images"]:
        t = truth[image["id"]]
        p = sorted(predicted[image["id"]], key=lambda r: -r["score"])  # stable: ties keep model order
        pairs.append((
            _xyxy([a["bbox"] for a in t]), np.array([a["category_id"] for a in t], dtype=int),
            _xyxy([r["bbox"] for r in p]), np.array([r["category_id"] for r in p], dtype=int),
            np.array([r["score"] for r in p], dtype=float),
        ))
    return pairs


def _xyxy(bboxes: list[list[float]]) -> np.ndarray:
    a = np.array(bboxes, dtype=float).reshape(-1, 4)
    a[:, 2:] += a[:, :2]
    return a


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every xyxy box in ``a`` (rows) with every one in ``b`` (columns)."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def _greedy_match(true_boxes: np.ndarray, true_cls: np.ndarray, pred_boxes: np.ndarray,
                  pred_cls: np.ndarray, same_class: bool) -> np.ndarray:
    """For each prediction (best score first), the index of the true box it claims, or -1.

    Like COCO, a prediction takes the unclaimed true box it overlaps most (IoU >= 0.5), so a
    duplicate detection of an object already found counts as a false positive.
    """
    matched = np.full(len(pred_boxes), -1)
    if not len(true_boxes) or not len(pred_boxes):
        return matched
    ious = iou_matrix(pred_boxes, true_boxes)
    if same_class:
        ious[pred_cls[:, None] != true_cls[None, :]] = 0.0
    taken = np.zeros(len(true_boxes), dtype=bool)
    for i in range(len(pred_boxes)):
        row = np.where(taken, 0.0, ious[i])
        j = int(row.argmax())
        if row[j] >= IOU:
            matched[i], taken[j] = j, True
    return matched


def _class_aware_hits(pairs: list) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every prediction's score, whether it is a true positive and its class, by falling score;
    and the class of every true box."""
    scores, hits, classes, true_classes = [], [], [], []
    for true_boxes, true_cls, pred_boxes, pred_cls, pred_scores in pairs:
        true_classes.append(true_cls)
        scores.append(pred_scores)
        classes.append(pred_cls)
        hits.append(_greedy_match(true_boxes, true_cls, pred_boxes, pred_cls, same_class=True) >= 0)

    def joined(arrays: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype=dtype)

    s = joined(scores, float)
    order = np.argsort(-s, kind="stable")
    return s[order], joined(hits, bool)[order], joined(classes, int)[order], joined(true_classes, int)


def _prf(tp: int, n_pred: int, n_gt: int) -> dict[str, Any]:
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_gt if n_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": n_pred - tp, "fn": n_gt - tp}


def _best_f1(scores: np.ndarray, hits: np.ndarray, n_gt: int) -> dict[str, Any]:
    """P/R/F1 at the confidence threshold (one of the scores) that maximises F1."""
    if not len(scores):
        return {**_prf(0, 0, n_gt), "best_conf": None}
    tp = np.cumsum(hits)
    n_pred = np.arange(1, len(scores) + 1)
    # A threshold keeps every box scoring at least that much: only the last of equal scores counts.
    ends = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    precision = tp[ends] / n_pred[ends]
    recall = tp[ends] / n_gt if n_gt else np.zeros(len(ends))
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    best = ends[int(f1.argmax())]
    return {**_prf(int(tp[best]), int(n_pred[best]), n_gt), "best_conf": float(scores[best])}


def _confusion(pairs: list, num_classes: int, conf: float) -> list[list[int]]:
    """Counts of (true class, predicted class) among boxes overlapping at IoU >= 0.5, ignoring class.

    Index ``num_classes`` is background: a true box nothing overlapped goes to its column
    (missed), a prediction that overlapped nothing goes to its row (false alarm).
    """
    bg = num_classes
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=int)
    for true_boxes, true_cls, pred_boxes, pred_cls, pred_scores in pairs:
        keep = pred_scores >= conf
        pred_boxes, pred_cls = pred_boxes[keep], pred_cls[keep]
        matched = _greedy_match(true_boxes, true_cls, pred_boxes, pred_cls, same_class=False)
        for p, t in enumerate(matched):
            matrix[true_cls[t] - 1 if t >= 0 else bg, pred_cls[p] - 1] += 1
        for t in set(range(len(true_boxes))) - set(matched.tolist()):
            matrix[true_cls[t] - 1, bg] += 1
    return matrix.tolist()
