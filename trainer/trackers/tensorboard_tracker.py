"""``--log tensorboard``: event files in ``RUN/tensorboard/`` (``tensorboard --logdir runs``).

Per epoch: every ``EpochEnd.scalars()`` value at step = epoch. At the end: the PR curve at
IoU 0.5 of the final evaluation (all classes and each class), computed from the eval files
with real true/false positive counts per score threshold, so TensorBoard's PR-curve tab shows
what the detector does at each confidence; the report's PR curve and confusion matrix as
images; with ``--log-images`` also the val image grid. A resumed run writes into the same
folder and purges the steps after the resumed epoch, so a crash leaves no duplicate points.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tlsync.events import EpochEnd, EvalEnd, RunEnd, RunStart, TrainingCallback

from ..evaluation.metrics import _class_aware_hits, _pairs

THRESHOLDS = 101  # score thresholds 0, 0.01, ... 1 of the PR curves
END_IMAGES = ("pr_curve.png", "confusion_matrix.png")  # written by the report, beside report.html


class TensorBoardLogger(TrainingCallback):
    def __init__(self, images: bool = False):
        self.images = images
        self.writer: Any = None
        self.step = 0

    def on_run_start(self, event: RunStart) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.step = event.start_epoch
        self.writer = SummaryWriter(str(event.run_dir / "tensorboard"),
                                    purge_step=event.start_epoch + 1 if event.resumed else None)
        if not event.resumed:
            settings = json.dumps(event.config, indent=2, sort_keys=True, default=str)
            self.writer.add_text("config", f"```\n{settings}\n```", 0)

    def on_epoch_end(self, event: EpochEnd) -> None:
        self.step = event.epoch
        for tag, value in event.scalars().items():
            self.writer.add_scalar(tag, value, event.epoch)
        self.writer.flush()  # a killed run keeps every finished epoch

    def on_eval_end(self, event: EvalEnd) -> None:
        for tag, counts in pr_counts(event.eval_dir).items():
            self.writer.add_pr_curve_raw(tag, *counts, global_step=self.step, num_thresholds=THRESHOLDS)

    def on_run_end(self, event: RunEnd) -> None:
        if self.writer is None:
            return
        names = [*END_IMAGES, *(("val_images.png",) if self.images else ())]
        for name in names:
            path = event.run_dir / name
            if event.report is not None and path.exists():
                self.writer.add_image(name.removesuffix(".png"), read_png(path), self.step, dataformats="HWC")
        self.writer.close()
        self.writer = None


def read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def pr_counts(eval_dir: Path) -> dict[str, tuple[np.ndarray, ...]]:
    """``{tag: (tp, fp, tn, fn, precision, recall)}`` per score threshold, for all classes and each.

    Matching is the evaluation's own (class-aware, IoU 0.5, greedy by score), read back from
    ``ground_truth.json`` and ``predictions.json``. Detection has no true negatives: that
    count is 0, which TensorBoard accepts (it only plots precision against recall).
    """
    gt = json.loads((eval_dir / "ground_truth.json").read_text(encoding="utf-8"))
    results = json.loads((eval_dir / "predictions.json").read_text(encoding="utf-8"))
    scores, hits, classes, true_classes = _class_aware_hits(_pairs(gt, results))
    names = {c["id"]: c["name"] for c in gt["categories"]}
    curves = {"pr_curve/all": _curve(scores, hits, len(true_classes))}
    for k, name in sorted(names.items()):
        if (true_classes == k).any():
            mine = classes == k
            curves[f"pr_curve/{name}"] = _curve(scores[mine], hits[mine], int((true_classes == k).sum()))
    return curves


def _curve(scores: np.ndarray, hits: np.ndarray, n_true: int) -> tuple[np.ndarray, ...]:
    thresholds = np.linspace(0.0, 1.0, THRESHOLDS)
    kept = scores[None, :] >= thresholds[:, None]
    tp = (kept & hits[None, :]).sum(axis=1).astype(float)
    fp = (kept & ~hits[None, :]).sum(axis=1).astype(float)
    fn = n_true - tp
    precision = tp / np.maximum(tp + fp, 1.0)
    recall = tp / max(n_true, 1)
    return tp, fp, np.zeros_like(tp), fn, precision, recall
