"""From dataset items to training batches: decoding, augmentation, grouping, collation.

Images are decoded with PIL (EXIF orientation applied, RGB), shrunk to the training size
as they are decoded, and augmented together with their boxes by
``torchvision.transforms.v2``. An image that fails to decode does not stop training: its
slot in the batch carries a ``DecodeFailure`` that the loop counts and reports.

Batches group images by orientation (landscape or portrait) because a detector pads every
image of a batch to the largest one; mixing the two would pad each to a square. The
grouping wraps whatever sampler yields the indices, so a ``DistributedSampler`` can be
dropped in for multi-GPU training.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from tlsync.errors import TlsyncError
from tlsync.format import Item

# Grey padding for zoomed-out images, the value YOLO-style pipelines use: neutral for
# ImageNet-normalised backbones and not mistakable for a dark object.
FILL = 114


@dataclass(frozen=True)
class DecodeFailure:
    """Stands in a batch for an image that could not be read."""

    item_id: str
    reason: str


def train_transforms(img_size: int) -> v2.Transform:
    """Flip, scale jitter (zoom 0.75x-1.25x) and mild colour changes, boxes moved along.

    The jitter keeps the canvas size and zooms its content, because the detector resizes
    every image to a fixed size itself: resizing the whole image here would be undone.
    """
    return v2.Compose([
        v2.Resize(size=None, max_size=img_size, antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomApply([v2.RandomAffine(degrees=0, scale=(0.75, 1.25), fill=FILL)], p=0.5),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(min_size=2.0),
        v2.ToDtype(torch.float32, scale=True),
    ])


def eval_transforms(img_size: int) -> v2.Transform:
    return v2.Compose([v2.Resize(size=None, max_size=img_size, antialias=True), v2.ToDtype(torch.float32, scale=True)])


def decode(path: Path, longest_side: int | None = None) -> Any:
    """Open an image as RGB with its EXIF orientation applied.

    With ``longest_side``, JPEGs are decoded at the smallest power-of-two reduction that is
    still at least that big (PIL's draft mode), several times faster for large photos.
    """
    from PIL import Image, ImageOps

    image: Image.Image = Image.open(path)
    if longest_side:
        scale = longest_side / max(image.size)
        if scale < 1:
            image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
    image = ImageOps.exif_transpose(image)
    return image.convert("RGB")


class DetectionDataset(Dataset):
    """One split of a dataset version as ``(image, target)`` pairs in torchvision's format.

    ``target`` holds ``boxes`` (float ``[N, 4]`` xyxy pixels of the returned image) and
    ``labels`` (int64, category ``categories[label - 1]``). Items are held as plain data
    (no store handle) so worker processes can receive them however they are started.
    """

    def __init__(self, items: Sequence[Item], paths: Sequence[Path], categories: Sequence[str],
                 transforms: v2.Transform, img_size: int):
        index = {name: i + 1 for i, name in enumerate(categories)}
        self.records = []
        for item, path in zip(items, paths, strict=True):
            unknown = [b.label for b in item.annotations if b.label not in index]
            if unknown:
                raise TlsyncError(f"item '{item.id}': label '{unknown[0]}' is not one of the classes "
                                  f"{list(categories)}")
            boxes = [(b.x, b.y, b.width, b.height) for b in item.annotations]
            labels = [index[b.label] for b in item.annotations]
            self.records.append((item.id, str(path), item.image.width, item.image.height, boxes, labels))
        self.transforms = transforms
        self.img_size = img_size

    def __len__(self) -> int:
        return len(self.records)

    def aspect_groups(self) -> list[int]:
        """0 for landscape or square images, 1 for portrait (from the stored sizes)."""
        return [int((h or 1) > (w or 1)) for _, _, w, h, _, _ in self.records]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | DecodeFailure:
        item_id, path, width, height, boxes, labels = self.records[i]
        try:
            image = decode(Path(path), self.img_size)
        except Exception as e:  # any decoder error: the item is skipped and counted, not fatal
            return DecodeFailure(item_id, f"{type(e).__name__}: {e}")
        # Draft decoding shrank the image: bring the boxes (stored in original pixels) along.
        sx = image.width / width if width else 1.0
        sy = image.height / height if height else 1.0
        xywh = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4) * torch.tensor([sx, sy, sx, sy])
        target = {
            "boxes": v2.functional.convert_bounding_box_format(
                tv_tensors.BoundingBoxes(xywh, format="XYWH", canvas_size=(image.height, image.width)),
                new_format=tv_tensors.BoundingBoxFormat.XYXY,
            ),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
        image, target = self.transforms(tv_tensors.Image(v2.functional.pil_to_tensor(image)), target)
        return image.as_subclass(torch.Tensor), {"boxes": target["boxes"].as_subclass(torch.Tensor),
                                                 "labels": target["labels"]}


def collate(batch: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]], list[DecodeFailure]]:
    """Images and targets as lists (detectors take differently sized images), failures apart."""
    failures = [b for b in batch if isinstance(b, DecodeFailure)]
    good = [b for b in batch if not isinstance(b, DecodeFailure)]
    return [b[0] for b in good], [b[1] for b in good], failures


class GroupedBatchSampler(Sampler[list[int]]):
    """Batches whose images share a group, drawn in the order ``sampler`` gives.

    The idea of torchvision's detection references, kept small: each group fills its own
    batch; what is left at the end is batched together, group by group. Every rank of a
    distributed run takes the same number of steps (``len``). ``set_epoch`` reshuffles
    (forwarded to the sampler).

    With ``drop_lone`` (training), a last batch of one image is left out of that epoch (a
    different image each epoch, as the order is reshuffled): batch norm in training mode
    cannot normalise one image's 1x1 feature maps, which SSDLite's last layers have at any
    size, so a scratch SSDLite on 25 images at batch 4 used to stop with "Expected more than
    1 value per channel". Joining it to the batch before would make a batch one image larger
    than the one the user sized to fit the GPU.
    """

    def __init__(self, sampler: Sampler[int], group_ids: Sequence[int], batch_size: int, drop_lone: bool = False):
        self.sampler, self.group_ids, self.batch_size = sampler, list(group_ids), batch_size
        self.drop_lone = drop_lone

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[int]]:
        pending: dict[int, list[int]] = {}
        for index in self.sampler:
            batch = pending.setdefault(self.group_ids[index], [])
            batch.append(index)
            if len(batch) == self.batch_size:
                yield batch
                pending[self.group_ids[index]] = []
        rest = [i for group in sorted(pending) for i in pending[group]]
        if self._lone_last():
            rest = rest[:-1]  # the image count is 1 more than a multiple of the batch: so is rest's
        for start in range(0, len(rest), self.batch_size):
            yield rest[start:start + self.batch_size]

    def _lone_last(self) -> bool:
        """Whether the last batch would hold a single image (left out, see above)."""
        images = len(self.sampler)  # type: ignore[arg-type]
        return self.drop_lone and images > 1 and self.batch_size > 1 and images % self.batch_size == 1

    def __len__(self) -> int:
        images = len(self.sampler)  # type: ignore[arg-type]
        return images // self.batch_size if self._lone_last() else math.ceil(images / self.batch_size)


class SeededRandomSampler(RandomSampler):
    """A random order that depends only on ``seed`` and the epoch, so resuming replays it."""

    def __init__(self, data: Sized, seed: int):
        super().__init__(data, generator=torch.Generator())
        self.seed = seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed(self.seed * 100_003 + epoch)


def make_loader(dataset: DetectionDataset, batch_size: int, workers: int, seed: int, shuffle: bool = True,
                sampler: Sampler[int] | None = None, pin_memory: bool = False,
                persistent_workers: bool = False) -> DataLoader:
    """A loader of grouped batches; pass ``sampler`` (e.g. a ``DistributedSampler``) to replace the default.

    By default worker processes are started afresh each epoch, with seeds taken from the
    loader's own generator (see ``start_epoch``), so augmentation does not depend on how
    many epochs ran in this process: a resumed run sees the same images as an unbroken one.
    ``persistent_workers`` (for GPUs, which a worker restart would leave idle at the start
    of every epoch) keeps them instead: the order of images is still replayed exactly, but
    their random augmentations continue from the previous epoch rather than being re-seeded.
    """
    if sampler is None:
        sampler = SeededRandomSampler(dataset, seed) if shuffle else SequentialSampler(dataset)
    return DataLoader(
        dataset, batch_sampler=GroupedBatchSampler(sampler, dataset.aspect_groups(), batch_size, drop_lone=True),
        num_workers=workers, collate_fn=collate, pin_memory=pin_memory, generator=torch.Generator(),
        persistent_workers=persistent_workers and workers > 0,
    )


def start_epoch(loader: DataLoader, epoch: int, seed: int) -> None:
    """Set this epoch's shuffle order and worker seeds.

    Under ``DistributedSampler`` each rank's workers get seeds of their own (offset by the
    rank), so two ranks never apply the same random augmentations in lockstep.
    """
    loader.batch_sampler.set_epoch(epoch)  # type: ignore[union-attr]
    rank = getattr(loader.batch_sampler.sampler, "rank", 0)  # type: ignore[union-attr]
    loader.generator.manual_seed(seed * 100_003 + epoch + 1 + rank * 7_919)
