"""The parity check: does the exported file predict what the checkpoint predicts?

Both run on the same decoded images. For an fp32 export the bar is box equality: the share
of the original's boxes that the export reproduces (IoU >= 0.99, same class) must be at
least 99% and val mAP50-95 may differ by at most 0.005. An int8 export cannot reproduce
boxes exactly, so its bar is the mAP cost the user accepts (``max_map_drop``).

The check also measures the input shapes the file handles, instead of assuming them: the
first image is fed again at other aspect ratios and sizes (portrait, landscape, half size),
and each shape passes only if the boxes still match the original's on that shape.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlsync.format import Item
from tlsync.store import DatasetVersion

from .evaluate import score_split, split_items
from .metrics import iou_matrix
from .predict import _boxes, image_tensor, load_image

MATCH_IOU = 0.99
MIN_MATCHED = 0.99
MAX_MAP_DIFF = 0.005
# (height, width) factors applied to the first image: the shapes a user is likely to send.
PROBES = ((1.0, 1.0), (1.0, 0.75), (0.75, 1.0), (0.5, 0.5), (1.25, 1.0))

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]


def torch_outputs(model: torch.nn.Module) -> Callable[[torch.Tensor], Outputs]:
    def run(image: torch.Tensor) -> Outputs:
        with torch.inference_mode():
            out = model([image])[0]
        return out["boxes"].numpy(), out["labels"].numpy(), out["scores"].numpy()

    return run


def match(a: Outputs, b: Outputs) -> tuple[int, int, list[float]]:
    """``(matched, boxes, score differences)``: greedy by ``a``'s scores; ``boxes`` counts the larger side."""
    boxes_a, labels_a, scores_a = a
    boxes_b, labels_b, scores_b = b
    total = max(len(boxes_a), len(boxes_b))
    if not len(boxes_a) or not len(boxes_b):
        return 0, total, []
    ious = iou_matrix(boxes_a.astype(np.float64), boxes_b.astype(np.float64))
    ious[labels_a[:, None] != labels_b[None, :]] = 0.0
    taken = np.zeros(len(boxes_b), dtype=bool)
    diffs = []
    for i in np.argsort(-scores_a, kind="stable"):
        row = np.where(taken, 0.0, ious[i])
        j = int(row.argmax())
        if row[j] >= MATCH_IOU:
            taken[j] = True
            diffs.append(abs(float(scores_a[i]) - float(scores_b[j])))
    return len(diffs), total, diffs


def check_split(version: DatasetVersion) -> str:
    """val, the split the run chose its best epoch on; test or train only when a dataset has no val."""
    for split in ("val", "test", "train"):
        if next(version.items(split), None) is not None:
            return split
    return "val"


def compare(original: Callable[[torch.Tensor], Outputs], exported: Callable[[torch.Tensor], Outputs],
            version: DatasetVersion, split: str, categories: list[str], limit: int | None,
            progress: Callable[..., None] | None = None) -> dict[str, Any]:
    """Run both on ``split`` (the first ``limit`` items); boxes matched, score gap and both mAPs."""
    items = split_items(version, split)[:limit] if limit else split_items(version, split)
    preds: dict[str, list[Item]] = {"original": [], "exported": []}
    matched = total = 0
    diffs: list[float] = []
    shapes: set[tuple[int, int]] = set()
    first = None
    for n, item in enumerate(items, 1):
        picture = load_image(version.image_path(item))
        first = first or picture
        image = image_tensor(picture)
        shapes.add((image.shape[1], image.shape[2]))
        outs = {"original": original(image), "exported": exported(image)}
        got, boxes, gaps = match(outs["original"], outs["exported"])
        matched, total, diffs = matched + got, total + boxes, diffs + gaps
        for key, (b, labels, scores) in outs.items():
            found = {"boxes": torch.from_numpy(b), "labels": torch.from_numpy(labels),
                     "scores": torch.from_numpy(scores)}
            preds[key].append(Item(item.id, item.image, _boxes(found, categories, 0.0, *picture.size), item.split))
        if progress:
            progress(n, total=len(items))
    maps = {key: score_split(version, split, items, p, categories, None)["map50_95"] for key, p in preds.items()}
    return {"dataset": version.ref, "split": split, "images": len(items), "boxes": total, "matched": matched,
            "matched_share": matched / total if total else 1.0, "max_score_diff": max(diffs, default=0.0),
            "map50_95_original": maps["original"], "map50_95_exported": maps["exported"],
            "map50_95_diff": maps["exported"] - maps["original"], "shapes_checked": sorted(shapes),
            "probe_image": first}


def probe_shapes(original: Callable[[torch.Tensor], Outputs], exported: Callable[[torch.Tensor], Outputs],
                 picture: Any, quantized: bool = False) -> dict[str, Any]:
    """Which input shapes the exported file handles: the first image again at other sizes.

    An fp32 file passes a shape when its boxes match the original's there; an int8 file,
    whose boxes legitimately move, when it runs (its matched share is recorded for reference).
    """
    ok: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for fh, fw in PROBES:
        size = (max(32, round(picture.width * fw)), max(32, round(picture.height * fh)))
        image = image_tensor(picture.resize(size))
        shape = [int(image.shape[1]), int(image.shape[2])]
        try:
            got, boxes, _ = match(original(image), exported(image))
        except Exception as e:  # a runtime that refuses the shape is the finding, not a crash
            failed.append({"shape": shape, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
            continue
        share = got / boxes if boxes else 1.0
        passed = quantized or share >= MIN_MATCHED
        (ok if passed else failed).append({"shape": shape, "matched_share": round(float(share), 4)})
    return {"batch": 1, "input_shapes_ok": ok, "input_shapes_failed": failed,
            "any_shape": not failed}


def verdict(result: dict[str, Any], quantized: bool, max_map_drop: float) -> tuple[bool, str]:
    """``(verified, why)``: the rule the file is held to, stated with the numbers."""
    mdiff = result["map50_95_diff"]
    if quantized:
        drop = 0.0 - mdiff  # 0.0 - x, not -x: a zero cost prints as 0.0000, not -0.0000
        if drop > max_map_drop:
            return False, f"int8 costs {drop:.4f} val mAP50-95, more than --max-map-drop {max_map_drop:g}"
        return True, f"int8 costs {drop:.4f} val mAP50-95 (allowed {max_map_drop:g})"
    problems = []
    if abs(mdiff) > MAX_MAP_DIFF:
        problems.append(f"val mAP50-95 differs by {abs(mdiff):.4f} (> {MAX_MAP_DIFF})")
    if result["matched_share"] < MIN_MATCHED:
        problems.append(f"only {result['matched_share']:.1%} of boxes match (IoU >= {MATCH_IOU}, same class; "
                        f"need {MIN_MATCHED:.0%})")
    if problems:
        return False, "; ".join(problems)
    return True, (f"{result['matched_share']:.1%} of boxes match, largest score difference "
                  f"{result['max_score_diff']:.2g}, mAP50-95 difference {abs(mdiff):.4f}")


def summary_line(path: Path, result: dict[str, Any], verified: bool, why: str) -> str:
    state = "verified" if verified else "UNVERIFIED"
    return (f"{path.name}: {state} on {result['images']} {result['split']} images of {result['dataset']}: "
            f"mAP50-95 {result['map50_95_original']:.4f} -> {result['map50_95_exported']:.4f}, "
            f"{result['matched']}/{result['boxes']} boxes match, largest score difference "
            f"{result['max_score_diff']:.2g}" + ("" if verified else f" ({why})"))
