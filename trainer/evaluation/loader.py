"""Evaluation images through a ``DataLoader``: decoded in worker processes, at the size the model uses.

Val evaluation runs every epoch, and decoding full-resolution photos one at a time in the
training process kept the GPU waiting: a 2048x1371 JPEG takes tens of milliseconds to
decode, and the model's own resize then throws most of those pixels away. Here images are
decoded by the loader's workers (as training's are), JPEGs in PIL's draft mode at the
smallest power-of-two reduction still at least the model's input size, and copied to the
GPU from pinned memory. Predicted boxes are scaled back to the original image's pixels,
so metrics and COCO files are in the same coordinates as the ground truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from tlsync.errors import TlsyncError
from tlsync.format import Item

from ..training.checkpoint import unwrap
from ..training.device import use_device
from .predict import image_tensor, output_boxes

ORIENTATION = 0x0112  # EXIF tag; values 5-8 turn the image by a quarter, swapping width and height
# What load_image turns into a one-line error (PIL's UnidentifiedImageError is an OSError).
DECODE_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError)


def decode_scaled(path: Path, longest_side: int | None) -> tuple[Any, float, float]:
    """``(RGB image, sx, sy)``: the image with its EXIF orientation applied, JPEGs decoded in draft mode when
    more than twice ``longest_side``, and the factors that take its pixels back to the full image's."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        width, height = image.size
        if image.getexif().get(ORIENTATION) in (5, 6, 7, 8):
            width, height = height, width
        if longest_side and (scale := longest_side / max(image.size)) < 1:
            image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        picture = ImageOps.exif_transpose(image).convert("RGB")
    return picture, width / picture.width, height / picture.height


class EvalImages(Dataset):
    """Image ``i`` as ``(i, CHW float tensor, sx, sy)``, or ``(i, error name, 1, 1)`` when it does not decode
    (raised as a one-line ``TlsyncError`` by the process that asked, not as a worker's traceback)."""

    def __init__(self, paths: list[Path], longest_side: int | None):
        self.paths, self.longest_side = [str(p) for p in paths], longest_side

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | str, float, float]:
        try:
            picture, sx, sy = decode_scaled(Path(self.paths[i]), self.longest_side)
        except DECODE_ERRORS as e:
            return i, type(e).__name__, 1.0, 1.0
        return i, image_tensor(picture), sx, sy


def as_list(batch: list[Any]) -> list[Any]:
    return batch


def model_img_size(model: torch.nn.Module) -> int | None:
    """The longest side the model is fed (its ``tlsync_build``), or ``None``: decode at full size."""
    build = getattr(unwrap(model), "tlsync_build", None)
    return build.get("img_size") if isinstance(build, dict) else None


def predict_loaded(model: torch.nn.Module, items: list[Item], image_path: Callable[[Item], Path],
                   categories: list[str], device: str | torch.device, batch_size: int = 4, workers: int = 0,
                   batches: list[list[int]] | None = None, draft: bool = False) -> Iterator[Item]:
    """Each item with its predicted boxes as ``annotations``, in order.

    ``batches`` (lists of indices into ``items``) default to ``batch_size`` consecutive items;
    a distributed evaluation passes its rank's share. ``draft`` decodes large JPEGs at the
    model's input size (the per-epoch val evaluation); without it images decode at full size,
    as ``tlsync eval`` and ``predict`` see them. The model is put back in its mode after.
    """
    device = torch.device(device)
    use_device(device)  # the pin-memory thread and the copies belong on this GPU, not on GPU 0
    if batches is None:
        batches = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]
    loader = DataLoader(EvalImages([image_path(item) for item in items], model_img_size(model) if draft else None),
                        batch_sampler=batches, num_workers=workers, collate_fn=as_list,
                        pin_memory=device.type == "cuda")
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            for i, tensor, _, _ in batch:
                if isinstance(tensor, str):
                    raise TlsyncError(f"{image_path(items[i])}: cannot decode image ({tensor})")
            with torch.inference_mode():
                outputs = model([tensor.to(device, non_blocking=True) for _, tensor, _, _ in batch])
            for (i, tensor, sx, sy), output in zip(batch, outputs, strict=True):
                yield with_boxes(items[i], output, categories, tensor, sx, sy)
    finally:
        model.train(was_training)


def with_boxes(item: Item, output: dict[str, torch.Tensor], categories: list[str], tensor: torch.Tensor,
               sx: float, sy: float) -> Item:
    """``item`` with the model's boxes for its (possibly draft-decoded) ``tensor``, in the full image's pixels."""
    boxes = output["boxes"].float().cpu() * torch.tensor([sx, sy, sx, sy])
    width, height = round(tensor.shape[-1] * sx), round(tensor.shape[-2] * sy)
    found = output_boxes({**output, "boxes": boxes}, categories, 0.0, width, height)
    return Item(item.id, item.image, found, item.split, dict(item.metadata))
