"""One pass of the run's model over the pool: predicted boxes and a feature vector per image.

Both strategies' inputs come from the same forward pass: uncertainty reads the detections,
diversity reads the backbone's feature maps, caught with forward hooks so the model is run
once, unchanged. Images are decoded at the run's training size (JPEG draft mode) on
``--workers`` loader processes, and boxes are scaled back to the original pixels, so a
pool of 12-megapixel photos costs what the model actually looks at. An unreadable image
is skipped and counted, never fatal: pools are folders nobody has curated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from tlsync.errors import TlsyncError
from tlsync.format import Box, Item

from ..evaluation.predict import output_boxes
from ..training.data import decode


@dataclass
class Scored:
    """What the model made of each scored image, index-aligned with ``items``."""

    items: list[Item] = field(default_factory=list)
    boxes: list[list[Box]] = field(default_factory=list)  # every detection the model returned
    features: np.ndarray | None = None  # [n, d], L2-normalised; None when not asked for
    unreadable: dict[str, str] = field(default_factory=dict)  # item id -> why


class _Images(Dataset):
    """``(index, tensor at the run's size, original width, height)``, or ``(index, reason)``."""

    def __init__(self, paths: Sequence[Path], img_size: int):
        self.paths, self.img_size = list(paths), img_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        from torchvision.transforms.functional import to_tensor

        try:
            picture = decode(self.paths[i], self.img_size)
        except Exception as e:  # any decoder failure is a bad file, not a bug here
            return i, f"cannot decode image ({type(e).__name__})"
        original = picture.size
        if self.img_size and max(picture.size) > self.img_size:
            scale = self.img_size / max(picture.size)
            picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))))
        return i, to_tensor(picture), original[0], original[1]


def _collate(batch: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return batch


class FeatureTap:
    """Pooled backbone features of the last forward pass, one vector per image.

    Each feature map is averaged over the part that covers the image (batches are padded
    to one size, and padding would otherwise pull every vector towards the same value),
    and the levels are concatenated: fine levels carry texture, coarse ones layout.
    """

    def __init__(self, model: torch.nn.Module):
        backbone, transform = getattr(model, "backbone", None), getattr(model, "transform", None)
        if backbone is None or transform is None:
            raise TlsyncError(f"model {type(model).__name__} exposes no .backbone/.transform; diversity needs "
                              f"backbone features (use --strategy uncertainty or random)")
        self._sizes: list[tuple[int, int]] = []
        self._padded: tuple[int, int] = (1, 1)
        self.vectors: torch.Tensor | None = None
        self._handles = [transform.register_forward_hook(self._on_transform),
                         backbone.register_forward_hook(self._on_backbone)]

    def _on_transform(self, _module: Any, _inputs: Any, output: Any) -> None:
        images = output[0]
        self._sizes = [tuple(s) for s in images.image_sizes]
        self._padded = tuple(images.tensors.shape[-2:])

    def _on_backbone(self, _module: Any, _inputs: Any, output: Any) -> None:
        levels = list(output.values()) if isinstance(output, dict) else [output]
        pooled = []
        for level in levels:
            h, w = level.shape[-2:]
            per_image = []
            for n, (ih, iw) in enumerate(self._sizes):
                rows = max(1, math.ceil(ih * h / self._padded[0]))
                cols = max(1, math.ceil(iw * w / self._padded[1]))
                per_image.append(level[n, :, :rows, :cols].float().mean(dim=(1, 2)))
            pooled.append(torch.stack(per_image))
        self.vectors = torch.nn.functional.normalize(torch.cat(pooled, dim=1), dim=1).cpu()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


def score_items(model: torch.nn.Module, items: Sequence[Item], image_path: Callable[[Item], Path],
                categories: list[str], device: torch.device, img_size: int, batch_size: int = 4,
                workers: int = 0, features: bool = True, boxes: bool = True,
                progress: Callable[..., None] | None = None) -> Scored:
    """Run the model over ``items`` in order; see ``Scored``. ``model`` is in eval mode on ``device``.

    ``boxes=False`` runs only the backbone (features of the labelled set, for diversity).
    """
    loader = DataLoader(_Images([image_path(item) for item in items], img_size), batch_size=batch_size,
                        num_workers=workers, collate_fn=_collate, persistent_workers=False)
    tap = FeatureTap(model) if features else None
    scored, vectors, done = Scored(), [], 0
    try:
        for batch in loader:
            readable = [entry for entry in batch if len(entry) == 4]
            for index, reason in (entry for entry in batch if len(entry) == 2):
                scored.unreadable[items[index].id] = reason
            if readable:
                tensors = [tensor.to(device, non_blocking=True) for _, tensor, _, _ in readable]
                with torch.inference_mode():
                    if boxes:
                        outputs = model(tensors)
                    else:  # features only (the labelled set): the detection heads are not needed
                        outputs = [None] * len(tensors)
                        parts: Any = model
                        parts.backbone(parts.transform(tensors)[0].tensors)
                for (index, tensor, width, height), output in zip(readable, outputs, strict=True):
                    scored.items.append(items[index])
                    if output is None:
                        continue
                    scale = torch.tensor([width / tensor.shape[-1], height / tensor.shape[-2]] * 2)
                    output = {**output, "boxes": output["boxes"].float().cpu() * scale}
                    scored.boxes.append(output_boxes(output, categories, 0.0, width, height))
                if tap is not None and tap.vectors is not None:
                    vectors.append(tap.vectors)
            done += len(batch)
            if progress:
                progress(done, total=len(items))
    finally:
        if tap is not None:
            tap.close()
    if features:
        scored.features = torch.cat(vectors).numpy() if vectors else np.zeros((0, 1), dtype=np.float32)
    return scored
