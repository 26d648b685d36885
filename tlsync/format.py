"""The common item-and-annotation format: the only contract between sources and the trainer.

Boxes are ``x, y, width, height`` in absolute pixels from the image's top-left corner, the
convention both Nucleus and COCO use, so the common cases need no conversion at all.
Objects validate themselves on construction so that a bad box is caught where it enters,
with a message naming the item and field, rather than deep inside a training step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidItem
from .names import MAX_ID_CHARS, normalise_id

SPLITS = ("train", "val", "test")


def _needs_check(text: str) -> bool:
    """Whether an id may break ``normalise_id``'s rules: cheap enough to run on every id pulled."""
    return len(text) > MAX_ID_CHARS or not text.isprintable()


def _number(value: Any, where: str, name: str) -> float:
    if type(value) is int:  # the common case first: this runs for every coordinate pulled
        return float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidItem(f"{where}: field '{name}' must be a number (got {value!r})")
    if not math.isfinite(value):
        raise InvalidItem(f"{where}: field '{name}' must be finite (got {value!r})")
    return float(value)


@dataclass(slots=True)
class Box:
    """One labelled rectangle; ``confidence`` is set on predictions only."""

    label: str
    x: float
    y: float
    width: float
    height: float
    id: str | None = None
    confidence: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.id is not None and type(self.id) is not str:
            self.id = normalise_id(self.id, "box", "id")  # an integer annotation id becomes "7"
        elif self.id is not None and (not self.id or _needs_check(self.id)):
            self.id = normalise_id(self.id, "box", "id")
        where = f"box {self.id}" if self.id is not None else "box"
        if not isinstance(self.label, str) or not self.label.strip():
            raise InvalidItem(f"{where}: field 'label' must be a non-empty string (got {self.label!r})")
        self.x = _number(self.x, where, "x")
        self.y = _number(self.y, where, "y")
        self.width = _number(self.width, where, "width")
        self.height = _number(self.height, where, "height")
        if self.width <= 0 or self.height <= 0:
            raise InvalidItem(
                f"{where} '{self.label}': width and height must be > 0 (got {self.width:g}x{self.height:g})"
            )
        if self.confidence is not None:
            self.confidence = _number(self.confidence, where, "confidence")

    def clipped(self, image_width: float, image_height: float) -> Box | None:
        """The box cut to the image, or None when no part of it lies inside.

        Labelling tools often let a box overhang the border by a pixel or two; that is
        clipped. A box with no overlap at all is a labelling error and is rejected.
        """
        x0, y0 = max(self.x, 0.0), max(self.y, 0.0)
        x1 = min(self.x + self.width, float(image_width))
        y1 = min(self.y + self.height, float(image_height))
        if x1 <= x0 or y1 <= y0:
            return None
        if (x0, y0, x1 - x0, y1 - y0) == (self.x, self.y, self.width, self.height):
            return self
        return Box(self.label, x0, y0, x1 - x0, y1 - y0, self.id, self.confidence, self.metadata)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"label": self.label, "x": self.x, "y": self.y, "width": self.width, "height": self.height}
        if self.id is not None:
            d["id"] = self.id
        if self.confidence is not None:
            d["confidence"] = self.confidence
        if self.metadata:
            d["metadata"] = self.metadata
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Box:
        return cls(
            d["label"], d["x"], d["y"], d["width"], d["height"],
            d.get("id"), d.get("confidence"), d.get("metadata") or {},
        )


@dataclass(slots=True)
class ImageRef:
    """Where an item's pixels are.

    ``uri`` is what the source gave (a path or URL) and is what the source's ``fetch``
    reads. ``path`` (relative to the store), ``sha256``, ``width`` and ``height`` are filled
    in by the store once the bytes are cached. ``cache_key`` lets a source say when two
    URIs are the same picture (signed URLs change on every export).
    """

    uri: str
    path: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    cache_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "path": self.path, "sha256": self.sha256, "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageRef:
        return cls(d["uri"], d.get("path"), d.get("sha256"), d.get("width"), d.get("height"))


@dataclass(slots=True)
class Item:
    """One image and its boxes.

    ``id`` is stable across pulls (the platform's reference id or file name), which is what
    makes versions comparable and deterministic splits possible. Items that share
    ``metadata["group"]`` (augmented copies of one photo) always land in the same split.
    """

    id: str
    image: ImageRef
    annotations: list[Box] = field(default_factory=list)
    split: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if type(self.id) is not str or not self.id or _needs_check(self.id):
            if not isinstance(self.id, (str, int)) or isinstance(self.id, bool) or self.id == "":
                raise InvalidItem(f"item {self.id!r:.80}: field 'id' must be a non-empty string")
            self.id = normalise_id(self.id, f"item {self.id!r:.80}")
        if self.split is not None and self.split not in SPLITS:
            raise InvalidItem(f"item '{self.id}': field 'split' must be one of {', '.join(SPLITS)} "
                              f"(got {self.split!r})")
        if not isinstance(self.image, ImageRef):
            raise InvalidItem(f"item '{self.id}': field 'image' must be an ImageRef")
        if self.image.width is not None and self.image.height is not None:
            self.clip_to_image()

    def clip_to_image(self) -> None:
        """Clip every box to the image; raise naming the first box entirely outside it."""
        w, h = self.image.width, self.image.height
        if not w or not h or w <= 0 or h <= 0:
            raise InvalidItem(f"item '{self.id}': image width and height must be > 0 (got {w}x{h})")
        kept = []
        for i, box in enumerate(self.annotations):
            clipped = box.clipped(w, h)
            if clipped is None:
                raise InvalidItem(
                    f"item '{self.id}': box {box.id if box.id is not None else i} '{box.label}' "
                    f"at ({box.x:g},{box.y:g},{box.width:g},{box.height:g}) lies entirely outside the {w}x{h} image"
                )
            kept.append(clipped)
        self.annotations = kept

    @property
    def group(self) -> str:
        return str(self.metadata.get("group") or self.id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image.to_dict(),
            "split": self.split,
            "metadata": self.metadata,
            "annotations": [b.to_dict() for b in self.annotations],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Item:
        try:
            return cls(
                d["id"], ImageRef.from_dict(d["image"]),
                [Box.from_dict(b) for b in d.get("annotations", ())],
                d.get("split"), d.get("metadata") or {},
            )
        except (KeyError, TypeError) as e:
            raise InvalidItem(f"item {d.get('id', '?')!r}: missing or malformed field {e}") from None


def item_from_store(d: dict[str, Any]) -> Item:
    """Rebuild an item from the store's own manifest without validating it again.

    Everything in a manifest was validated when it was written, and skipping
    ``__post_init__`` makes streaming reads about three times faster, which is what
    lets the trainer and exporters walk 100k-item datasets quickly.
    """
    item = object.__new__(Item)
    item.id, item.split, item.metadata = d["id"], d.get("split"), d.get("metadata") or {}
    if type(item.id) is not str:  # what later becomes a file name or a lookup key must be a string
        raise TypeError(f"field 'id' must be a string (got {type(item.id).__name__})")
    image = d["image"]
    item.image = ImageRef(image["uri"], image.get("path"), image.get("sha256"), image.get("width"), image.get("height"))
    boxes = []
    for b in d["annotations"]:
        box = object.__new__(Box)
        box.label, box.x, box.y, box.width, box.height = b["label"], b["x"], b["y"], b["width"], b["height"]
        box.id, box.confidence, box.metadata = b.get("id"), b.get("confidence"), b.get("metadata") or {}
        if box.id is not None and type(box.id) is not str:  # written by a tlsync before ids were normalised
            box.id = str(box.id)
        boxes.append(box)
    item.annotations = boxes
    return item


def content_key(item: Item) -> tuple:
    """What makes two pulls 'the same data': ids, pixels, split and boxes (not URIs)."""
    return (
        item.id, item.image.sha256, item.split,
        tuple((b.label, round(b.x, 3), round(b.y, 3), round(b.width, 3), round(b.height, 3)) for b in item.annotations),
    )
