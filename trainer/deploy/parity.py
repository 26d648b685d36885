"""The parity check: does the exported file predict what the checkpoint predicts?

Both run on the same decoded images. For an fp32 export the bar is box equality: the share
of the original's boxes that the export reproduces (IoU >= 0.99, same class) must be at
least 99% and val mAP50-95 may differ by at most 0.005. An int8 export cannot reproduce
boxes exactly, so its bar is the mAP cost the user accepts (``max_map_drop``).

The check also measures the input shapes the file handles, instead of assuming them: the
first image is fed again at other aspect ratios and sizes (portrait, landscape, half size),
and each shape passes only if the boxes still match the original's on that shape.

Tied scores (equal within float noise) are reported as ties, not as mismatches. Where the model scores several
candidates alike (an untrained SSDLite: its backbone's features vanish, so every anchor of
one shape gets the same score at every position, 36 distinct scores among 522 candidates per
class), which of them top-k and NMS keep is arbitrary, and onnxruntime breaks the tie
differently from torch. A box the file returns instead of one of the original's counts as a
tie only when it is proved one: same class, a score within the tie tolerance of the box it
replaces, and the original model itself produces that box with that score once NMS and the
top-k/per-image caps are lifted (``torch_candidates``). A box that moved, or one the original
never scores that way, stays a mismatch. The proof is on the original's side only: the
file's own candidates are not visible in its outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlsync.format import Item
from tlsync.store import DatasetVersion

from ..evaluation.evaluate import default_split, score_split, split_items
from ..evaluation.metrics import iou_matrix
from ..evaluation.predict import image_tensor, load_image, output_boxes

MATCH_IOU = 0.99
MIN_MATCHED = 0.99
MAX_MAP_DIFF = 0.005
# (height, width) factors applied to the first image: the shapes a user is likely to send.
PROBES = ((1.0, 1.0), (1.0, 0.75), (0.75, 1.0), (0.5, 0.5), (1.25, 1.0))
# Scores closer than this (or than the largest gap between the image's matched boxes, if larger)
# are tied: the two runtimes' float rounding alone can order them either way.
TIE_TOL = 1e-6
# Post-processing limits lifted to list every candidate: nothing suppressed (IoU > 1 never holds), nothing capped.
LIFTED = {"nms_thresh": 1.0, "topk_candidates": 1_000_000, "detections_per_img": 1_000_000}

Outputs = tuple[np.ndarray, np.ndarray, np.ndarray]


def torch_outputs(model: torch.nn.Module) -> Callable[[torch.Tensor], Outputs]:
    def run(image: torch.Tensor) -> Outputs:
        with torch.inference_mode():
            out = model([image])[0]
        return out["boxes"].numpy(), out["labels"].numpy(), out["scores"].numpy()

    return run


@contextmanager
def lifted_limits(model: torch.nn.Module) -> Iterator[None]:
    """The model with NMS off and its top-k/per-image caps lifted (RoI heads for the R-CNN family); restored after."""
    heads = [h for h in (model, getattr(model, "roi_heads", None)) if h is not None]
    saved = [(h, key, getattr(h, key)) for h in heads for key in LIFTED if hasattr(h, key)]
    try:
        for head, key, _ in saved:
            setattr(head, key, LIFTED[key])
        yield
    finally:
        for head, key, value in saved:
            setattr(head, key, value)


@dataclass
class Candidates:
    """The original's every scored box for an image (``run``), and the IoU above which its NMS suppresses."""

    run: Callable[[torch.Tensor], Outputs]
    nms_iou: float | None


def torch_candidates(model: torch.nn.Module) -> Candidates:
    """Every box the original scores above its threshold, before NMS and the caps pick among them."""
    outputs = torch_outputs(model)
    nms_iou = getattr(getattr(model, "roi_heads", model), "nms_thresh", None)

    def run(image: torch.Tensor) -> Outputs:
        with lifted_limits(model):
            return outputs(image)

    return Candidates(run, None if nms_iou is None else float(nms_iou))


@dataclass
class Matching:
    matched: int
    boxes: int  # the larger side's count
    diffs: list[float]  # score differences of the matched pairs
    left_a: np.ndarray  # indices of a's unmatched boxes
    left_b: np.ndarray
    tied: int = 0  # of a's unmatched boxes, those proved swaps among tied scores


def _same_class_ious(boxes_a: np.ndarray, labels_a: np.ndarray, boxes_b: np.ndarray,
                     labels_b: np.ndarray) -> np.ndarray:
    ious = iou_matrix(boxes_a.astype(np.float64), boxes_b.astype(np.float64))
    ious[labels_a[:, None] != labels_b[None, :]] = 0.0
    return ious


def match(a: Outputs, b: Outputs) -> Matching:
    """Boxes paired one to one (IoU >= MATCH_IOU, same class), greedy by ``a``'s scores."""
    boxes_a, labels_a, scores_a = a
    boxes_b, labels_b, scores_b = b
    total = max(len(boxes_a), len(boxes_b))
    if not len(boxes_a) or not len(boxes_b):
        return Matching(0, total, [], np.arange(len(boxes_a)), np.arange(len(boxes_b)))
    ious = _same_class_ious(boxes_a, labels_a, boxes_b, labels_b)
    taken = np.zeros(len(boxes_b), dtype=bool)
    left_a, diffs = [], []
    for i in np.argsort(-scores_a, kind="stable"):
        row = np.where(taken, 0.0, ious[i])
        j = int(row.argmax())
        if row[j] >= MATCH_IOU:
            taken[j] = True
            diffs.append(abs(float(scores_a[i]) - float(scores_b[j])))
        else:
            left_a.append(int(i))
    return Matching(len(diffs), total, diffs, np.array(left_a, dtype=np.int64), np.flatnonzero(~taken))


def count_ties(a: Outputs, b: Outputs, m: Matching, candidates: Outputs, nms_iou: float | None) -> int:
    """How many of ``a``'s unmatched boxes ``b`` replaced by a box tied with it, proved by ``candidates``.

    ``candidates`` are the original's own boxes with NMS and caps lifted. A box of ``b`` that
    stands in for one of ``a``'s must be one of them (IoU >= MATCH_IOU, same class) with the
    score of the box it replaces, and must not overlap another of ``b``'s boxes of its class
    by more than ``nms_iou`` (an NMS that kept both would be a real difference, tied or not);
    each of ``b``'s boxes stands in for one box at most.
    """
    if not len(m.left_a) or not len(m.left_b) or not len(candidates[0]):
        return 0
    labels_a, scores_a = a[1], a[2]
    boxes_b, labels_b, scores_b = (x[m.left_b] for x in b)
    tol = max(TIE_TOL, max(m.diffs, default=0.0))
    ious = _same_class_ious(boxes_b, labels_b, candidates[0], candidates[1])
    # The original's own score for each of b's unmatched boxes: its candidate closest in score (NaN: none).
    gaps = np.where(ious >= MATCH_IOU, np.abs(candidates[2][None, :] - scores_b[:, None]), np.inf)
    own = np.where(np.isfinite(gaps.min(1)), candidates[2][gaps.argmin(1)], np.nan)
    apart = np.ones(len(m.left_b), dtype=bool)
    if nms_iou is not None:
        overlaps = _same_class_ious(boxes_b, labels_b, b[0], b[1])
        overlaps[np.arange(len(m.left_b)), m.left_b] = 0.0  # a box overlaps itself
        apart = overlaps.max(1) <= nms_iou
    taken = np.zeros(len(m.left_b), dtype=bool)
    tied = 0
    for i in m.left_a[np.argsort(-scores_a[m.left_a], kind="stable")]:
        fits = (~taken & apart & (labels_b == labels_a[i]) & (np.abs(scores_b - scores_a[i]) <= tol)
                & (np.abs(own - scores_a[i]) <= tol))
        if fits.any():
            taken[int(fits.argmax())] = True
            tied += 1
    return tied


def match_with_ties(original: Callable[[torch.Tensor], Outputs], exported: Callable[[torch.Tensor], Outputs],
                    candidates: Candidates | None, image: torch.Tensor) -> tuple[Matching, Outputs, Outputs]:
    """Both runs on ``image`` matched; the original's candidates are computed only where a box is left over."""
    a, b = original(image), exported(image)
    m = match(a, b)
    if candidates is not None and len(m.left_a) and len(m.left_b):
        m.tied = count_ties(a, b, m, candidates.run(image), candidates.nms_iou)
    return m, a, b


# The split the check runs on: val, where the run chose its best epoch; test or train only when a dataset has
# no val. Not eval's test-first rule, on purpose: whether an int8 file may ship (--max-map-drop) is a choice
# about the model, and a choice made by looking at test would leave no untouched data to report a score on.
CHECK_SPLITS = ("val", "test", "train")


def check_split(version: DatasetVersion) -> str:
    return default_split(version, CHECK_SPLITS)


def compare(original: Callable[[torch.Tensor], Outputs], exported: Callable[[torch.Tensor], Outputs],
            version: DatasetVersion, split: str, categories: list[str], limit: int | None,
            progress: Callable[..., None] | None = None,
            candidates: Candidates | None = None) -> dict[str, Any]:
    """Run both on ``split`` (the first ``limit`` items); boxes matched, tied, score gap and both mAPs.

    Without ``candidates`` (an int8 check, whose boxes legitimately move) no tie is looked for.
    """
    items = split_items(version, split)[:limit] if limit else split_items(version, split)
    preds: dict[str, list[Item]] = {"original": [], "exported": []}
    matched = total = tied = 0
    diffs: list[float] = []
    shapes: set[tuple[int, int]] = set()
    first = None
    for n, item in enumerate(items, 1):
        picture = load_image(version.image_path(item))
        first = first or picture
        image = image_tensor(picture)
        shapes.add((image.shape[1], image.shape[2]))
        m, ours, theirs = match_with_ties(original, exported, candidates, image)
        outs = {"original": ours, "exported": theirs}
        matched, total, tied, diffs = matched + m.matched, total + m.boxes, tied + m.tied, diffs + m.diffs
        for key, (b, labels, scores) in outs.items():
            found = {"boxes": torch.from_numpy(b), "labels": torch.from_numpy(labels),
                     "scores": torch.from_numpy(scores)}
            boxes = output_boxes(found, categories, 0.0, *picture.size)
            preds[key].append(Item(item.id, item.image, boxes, item.split))
        if progress:
            progress(n, total=len(items))
    maps = {key: score_split(version, split, items, p, categories, None)["map50_95"] for key, p in preds.items()}
    return {"dataset": version.ref, "split": split, "images": len(items), "boxes": total, "matched": matched,
            "matched_share": matched / total if total else 1.0, "tied": tied,
            "tied_share": tied / total if total else 0.0, "max_score_diff": max(diffs) if diffs else None,
            "map50_95_original": maps["original"], "map50_95_exported": maps["exported"],
            "map50_95_diff": maps["exported"] - maps["original"], "shapes_checked": sorted(shapes),
            "probe_image": first}


def probe_shapes(original: Callable[[torch.Tensor], Outputs], exported: Callable[[torch.Tensor], Outputs],
                 picture: Any, quantized: bool = False,
                 candidates: Candidates | None = None) -> dict[str, Any]:
    """Which input shapes the exported file handles: the first image again at other sizes.

    An fp32 file passes a shape when its boxes match the original's there (proved tie swaps
    included, as in ``compare``); an int8 file, whose boxes legitimately move, when it runs
    (its matched share is recorded for reference).
    """
    ok: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for fh, fw in PROBES:
        size = (max(32, round(picture.width * fw)), max(32, round(picture.height * fh)))
        image = image_tensor(picture.resize(size))
        shape = [int(image.shape[1]), int(image.shape[2])]
        try:
            m, _, _ = match_with_ties(original, exported, None if quantized else candidates, image)
        except Exception as e:  # a runtime that refuses the shape is the finding, not a crash
            failed.append({"shape": shape, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
            continue
        share, tied = (m.matched / m.boxes, m.tied / m.boxes) if m.boxes else (1.0, 0.0)
        passed = quantized or share + tied >= MIN_MATCHED
        entry = {"shape": shape, "matched_share": round(float(share), 4)}
        (ok if passed else failed).append({**entry, "tied_share": round(float(tied), 4)} if tied else entry)
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
    share, tied = result["matched_share"], result.get("tied_share", 0.0)
    ties = f" and {tied:.1%} differ only in which of tied scores were kept" if tied else ""
    if abs(mdiff) > MAX_MAP_DIFF:
        problems.append(f"val mAP50-95 differs by {abs(mdiff):.4f} (> {MAX_MAP_DIFF})")
    if share + tied < MIN_MATCHED:
        problems.append(f"only {share:.1%} of boxes match (IoU >= {MATCH_IOU}, same class{ties}; "
                        f"need {MIN_MATCHED:.0%})")
    if problems:
        return False, "; ".join(problems)
    return True, (f"{share:.1%} of boxes match{ties}, largest score difference "
                  f"{result['max_score_diff']:.2g}, mAP50-95 difference {abs(mdiff):.4f}")


def summary_line(path: Path, result: dict[str, Any], verified: bool, why: str) -> str:
    state = "verified" if verified else "UNVERIFIED"
    if result["boxes"] and not result["matched"]:  # a largest difference over no pair would read as a match
        boxes = f"no box of the {result['boxes']} matched"
    else:
        boxes = (f"{result['matched']}/{result['boxes']} boxes match"
                 + (f" (+{result['tied']} swapped among tied scores)" if result.get("tied") else "")
                 + (f", largest score difference {result['max_score_diff']:.2g}" if result["matched"] else ""))
    return (f"{path.name}: {state} on {result['images']} {result['split']} images of {result['dataset']}: "
            f"mAP50-95 {result['map50_95_original']:.4f} -> {result['map50_95_exported']:.4f}, {boxes}"
            + ("" if verified else f" ({why})"))
