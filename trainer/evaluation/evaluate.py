"""Evaluating a model on one split of a dataset version, and writing what the report reads.

The training loop calls ``evaluate_split`` on the val split every epoch (``out_dir=None``) and
once more at the end with ``out_dir=run/eval``; ``tlsync eval`` calls it on any dataset and
split. The files are COCO JSON so that any other tool can re-score them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tlsync.errors import TlsyncError
from tlsync.format import Item
from tlsync.manifest import atomic_write_json
from tlsync.store import DatasetVersion

from .loader import predict_loaded
from .metrics import coco_ground_truth, coco_results, evaluate


def evaluate_split(model: torch.nn.Module, dataset_version: DatasetVersion, split: str, categories: list[str],
                   device: str | torch.device, out_dir: Path | None, conf: float | None = None,
                   progress: Callable[..., None] | None = None, batch_size: int = 4, workers: int = 0,
                   draft: bool = False, model_name: str | None = None) -> dict[str, Any]:
    """Predict on every item of ``split`` and score it; write the eval files when ``out_dir`` is given.

    Images are decoded by ``workers`` loader processes (``loader.predict_loaded``; ``draft``:
    at the model's input size, which the per-epoch val evaluation uses).

    ``categories`` are the model's classes. Classes the dataset has and the model does not
    (evaluating an old run on newer data) are scored too, at AP 0, and listed under
    ``unknown_classes``, so the number says honestly how the model does on that data.
    """
    items = split_items(dataset_version, split)
    predictions: list[Item] = []
    for item in predict_loaded(model, items, dataset_version.image_path, categories, device, batch_size=batch_size,
                               workers=workers, draft=draft):
        predictions.append(item)
        if progress:
            progress(len(predictions), total=len(items))
    return score_split(dataset_version, split, items, predictions, categories, out_dir, conf, model_name)


# Where a model's score comes from when no --split is given: held-out test if the dataset has one, else val.
SCORE_SPLITS = ("test", "val")


def default_split(version: DatasetVersion, order: tuple[str, ...] = SCORE_SPLITS) -> str:
    """The first split of ``order`` that has items ("val" when none has; the caller then says so).

    ``tlsync eval``, the run's final report, ``eval --model``, the forgetting check and every
    ``curve`` point score on ``SCORE_SPLITS``; the export parity check passes its own order.
    """
    return next((split for split in order if next(version.items(split), None) is not None), "val")


def split_items(dataset_version: DatasetVersion, split: str) -> list[Item]:
    items = list(dataset_version.items(split))
    if not items:
        raise TlsyncError(f"dataset {dataset_version.ref} has no items in split '{split}'")
    return items


def score_split(dataset_version: DatasetVersion, split: str, items: list[Item], predictions: list[Item],
                categories: list[str], out_dir: Path | None, conf: float | None = None,
                model_name: str | None = None) -> dict[str, Any]:
    """The metrics of ``predictions`` (one per item, in order), and the eval files when ``out_dir`` is given.

    ``model_name`` (``weights/best.pt``, ``export/model.int8.onnx``) is recorded as ``model``:
    a run's report lists several evaluations, and each row must say which file it scored.

    Apart from ``evaluate_split`` so that a distributed evaluation, whose ranks each
    predict a share of the items, scores the gathered predictions exactly the same way.
    """
    labels = [*dataset_version.categories, *(b.label for item in items for b in item.annotations)]
    unknown = [name for name in dict.fromkeys(labels) if name not in categories]
    scored = [*categories, *unknown]
    metrics = evaluate(items, predictions, scored, conf)
    metrics.update(dataset=dataset_version.ref, content_hash=dataset_version.content_hash, split=split,
                   unknown_classes=unknown)
    if model_name is not None:
        metrics["model"] = model_name
    if out_dir is not None:
        write_eval(Path(out_dir), dataset_version, items, predictions, scored, metrics)
    return metrics


def write_eval(out_dir: Path, dataset_version: DatasetVersion, items: list[Item], predictions: list[Item],
               categories: list[str], metrics: dict[str, Any]) -> None:
    """``ground_truth.json`` (COCO, with each image's path in the store), ``predictions.json``
    (COCO results) and ``metrics.json``, each written atomically, metrics last."""
    gt = coco_ground_truth(items, categories, file_name=lambda item: str(dataset_version.image_path(item)))
    image_ids = {image["item_id"]: image["id"] for image in gt["images"]}
    atomic_write_json(out_dir / "ground_truth.json", gt)
    atomic_write_json(out_dir / "predictions.json", coco_results(predictions, categories, image_ids))
    atomic_write_json(out_dir / "metrics.json", metrics)
