"""Running a trained detector on images: the shared core of ``eval``, ``predict`` and ``push``.

Predictions come back as ``Item``s in the common format (label names, xywh pixels in the
original image, ``confidence`` set), so everything downstream (metrics, COCO JSON, drawing,
pushing to a platform) works on the same objects as the ground truth does.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from tlsync.atomic import atomic_write_file, atomic_write_json
from tlsync.errors import TlsyncError
from tlsync.format import Box, ImageRef, Item
from tlsync.names import safe_file_name
from tlsync.store import EXTENSIONS

from .drawing import draw_boxes
from .metrics import coco_results

IMAGE_SUFFIXES = {".jpg", ".jpeg", *(ext for ext in EXTENSIONS.values())}


def load_image(path: Path) -> Any:
    """An RGB PIL image with EXIF orientation applied, as the boxes were drawn on it."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return ImageOps.exif_transpose(im).convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise TlsyncError(f"{path}: cannot decode image ({type(e).__name__})") from None


def image_tensor(picture: Any) -> torch.Tensor:
    """An RGB PIL image as a 0..1 float CHW tensor, as torchvision's ``to_tensor`` makes it.

    Written out so that predicting with an exported ONNX model never imports torchvision.
    """
    import numpy as np

    array = torch.from_numpy(np.array(picture, dtype=np.uint8, copy=True))
    return array.permute(2, 0, 1).contiguous().to(torch.float32).div(255)


def predict_items(model: torch.nn.Module, items: Iterable[Item], image_path: Callable[[Item], Path],
                  categories: list[str], device: str | torch.device = "cpu", batch_size: int = 4,
                  conf: float = 0.0) -> Iterator[Item]:
    """Yield, in input order, each item with its predicted boxes as ``annotations``.

    The model must already be on ``device``. It is switched to eval mode while this runs
    and put back in its previous mode afterwards, so the training loop can call this
    between epochs.
    """
    for item, _picture, boxes in _predict(model, items, image_path, categories, device, batch_size, conf):
        yield Item(item.id, item.image, boxes, item.split, dict(item.metadata))


def _predict(model: torch.nn.Module, items: Iterable[Item], image_path: Callable[[Item], Path],
             categories: list[str], device: str | torch.device, batch_size: int, conf: float,
             unreadable: Callable[[Item, TlsyncError], None] | None = None) -> Iterator[tuple[Item, Any, list[Box]]]:
    """``(item, decoded picture, boxes)``: the picture too, so ``predict_run`` draws without decoding twice.

    With ``unreadable``, an item whose pixels do not decode (a file whose structure looked
    whole) is handed to it and left out; without it, the decode error stops the run.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        iterator = iter(items)
        while batch := list(islice(iterator, batch_size)):
            batch, pictures = _decode(batch, image_path, unreadable)
            if not batch:
                continue
            tensors = [image_tensor(p).to(device, non_blocking=True) for p in pictures]
            with torch.inference_mode():
                outputs = model(tensors)
            for item, picture, output in zip(batch, pictures, outputs, strict=True):
                yield item, picture, output_boxes(output, categories, conf, *picture.size)
    finally:
        model.train(was_training)


def _decode(batch: list[Item], image_path: Callable[[Item], Path],
            unreadable: Callable[[Item, TlsyncError], None] | None) -> tuple[list[Item], list[Any]]:
    kept, pictures = [], []
    for item in batch:
        try:
            pictures.append(load_image(image_path(item)))
        except TlsyncError as e:
            if unreadable is None:
                raise
            unreadable(item, e)
            continue
        kept.append(item)
    return kept, pictures


def _save_picture(picture: Any, fmt: str, path: str) -> None:
    picture.save(path, format=fmt)


def output_boxes(output: dict[str, torch.Tensor], categories: list[str], conf: float, width: int,
                 height: int) -> list[Box]:
    """A detector's output for one image as ``Box``es in pixels: at least ``conf``, clipped to the image.

    Every path from a model to boxes (predict, eval, parity, select) comes through here, so a
    class index the run does not have is one error, and a box clipped to nothing is dropped alike.
    """
    boxes = []
    xyxy = output["boxes"].float().cpu().tolist()
    labels, scores = output["labels"].tolist(), output["scores"].float().cpu().tolist()
    for (x0, y0, x1, y1), label, score in zip(xyxy, labels, scores, strict=True):
        if score < conf:
            continue
        if not 1 <= label <= len(categories):
            raise TlsyncError(f"the model predicted class {label} but the run has {len(categories)} classes")
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))
        if x1 - x0 > 0 and y1 - y0 > 0:
            boxes.append(Box(categories[label - 1], round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2),
                             confidence=round(score, 5)))
    return boxes


def expand_sources(sources: list[str]) -> list[Path]:
    """Image files from paths, folders (searched recursively) and globs, sorted within each, no repeats."""
    found: dict[Path, None] = {}
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise TlsyncError(f"{source}: no images in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(source), recursive=True)
                             if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise TlsyncError(f"{source}: no such file or folder, and no image matches it as a glob")
        found.update(dict.fromkeys(matches))
    if not found:
        raise TlsyncError("no images given: pass image files, folders or globs")
    return list(found)


def predict_run(run: str | Path, sources: list[str], out: Path, conf: float, device: str | torch.device,
                progress: Callable[..., None] | None = None) -> dict[str, Any]:
    """Predict on the given images; write ``predictions.json``, ``images.json`` and drawn copies to ``out``.

    ``predictions.json`` is a COCO results list; ``images.json`` holds the COCO ``images`` and
    ``categories`` it refers to (the two together load with ``pycocotools.COCO.loadRes``).
    A file that is not a readable image is skipped and reported, not fatal: folders often
    hold a stray thumbnail database or text file.
    """
    paths = expand_sources(sources)
    model, categories = _load(run, device)
    items, skipped = [], {}
    from tlsync.images import check_complete_image  # not just the header: bombs and cut-off files are skipped

    for path in paths:
        try:
            width, height, _ext = check_complete_image(path)
        except TlsyncError as e:
            skipped[str(path)] = str(e)
            continue
        items.append(Item(str(path), ImageRef(str(path), width=width, height=height)))
    if not items:
        raise TlsyncError(f"none of the {len(paths)} files is a readable image (first: {next(iter(skipped))})")

    out.mkdir(parents=True, exist_ok=True)
    images, predictions = [], []
    names: set[str] = set()
    def unreadable(item: Item, error: TlsyncError) -> None:
        skipped[item.id] = str(error)

    for n, (item, picture, boxes) in enumerate(_predict(model, items, lambda i: Path(i.image.uri), categories,
                                                         device, 4, conf, unreadable), 1):
        drawn = out / _unique_name(Path(item.id), names)
        draw_boxes(picture, boxes, categories)
        atomic_write_file(drawn, partial(_save_picture, picture, "PNG" if drawn.suffix == ".png" else "JPEG"))
        images.append({"id": n, "file_name": item.id, "drawn": drawn.name, "width": item.image.width,
                       "height": item.image.height})
        predictions.append(Item(item.id, item.image, boxes))
        if progress:
            progress(n, total=len(items))
    if not predictions:
        raise TlsyncError(f"none of the {len(paths)} files decodes as an image (first: {next(iter(skipped.values()))})")
    image_ids = {item.id: i for i, item in enumerate(predictions, 1)}
    atomic_write_json(out / "images.json", {
        "images": images, "categories": [{"id": i, "name": name} for i, name in enumerate(categories, 1)]})
    atomic_write_json(out / "predictions.json", coco_results(predictions, categories, image_ids))
    return {"images": len(predictions), "boxes": sum(len(p.annotations) for p in predictions),
            "per_class": _count_labels(predictions, categories), "skipped": skipped, "out": out}


def _load(run: str | Path, device: str | torch.device) -> tuple[Any, list[str]]:
    """A run's checkpoint, or an exported file (``tlsync export-model``) run by onnxruntime / torch.jit."""
    from ..deploy.runner import is_exported, load_exported

    if is_exported(run):
        exported = load_exported(run)
        return exported, exported.categories
    from ..training.checkpoint import load_model

    model, categories, _config = load_model(run, device=device)
    return model, categories


def _unique_name(path: Path, taken: set[str]) -> str:
    """The drawn copy's file name: the original's when safe and short (``tlsync.names.safe_file_name``:
    otherwise its safe part and a short hash), numbered when two inputs share a name;
    ``images.json`` records which input each drawn file is."""
    suffix = ".png" if path.suffix.lower() == ".png" else ".jpg"
    return safe_file_name(path.stem, suffix, taken, frozenset({"images.json", "predictions.json"}))


def _count_labels(predictions: list[Item], categories: list[str]) -> dict[str, int]:
    counts = dict.fromkeys(categories, 0)
    for item in predictions:
        for box in item.annotations:
            counts[box.label] += 1
    return {name: n for name, n in counts.items() if n}
