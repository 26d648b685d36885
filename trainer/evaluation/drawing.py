"""Boxes drawn on images, in one colour per class, and sheets of thumbnails: for predictions, the
report's val grid and the selection's contact sheet."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tlsync.atomic import atomic_write_file
from tlsync.format import Box

PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
    (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (0, 0, 128), (255, 225, 25), (128, 128, 128), (220, 190, 255),
]
TRUTH_COLOUR = (40, 220, 40)  # ground truth, drawn in one colour


def colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def draw_boxes(image: Any, boxes: Iterable[Box], categories: list[str],
               fixed: tuple[int, int, int] | None = None) -> None:
    """Draw boxes on a PIL image in place: a rectangle and 'label 0.87' above it.

    Colours follow the class index so one class looks the same on every image; ``fixed``
    overrides it (the report draws ground truth in one colour).
    """
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(image)
    scale = max(image.size) / 640
    width = max(1, round(2 * scale))
    font = ImageFont.load_default(size=max(10, round(14 * scale)))
    for box in boxes:
        rgb = fixed or colour(categories.index(box.label) if box.label in categories else len(categories))
        x0, y0, x1, y1 = box.x, box.y, box.x + box.width, box.y + box.height
        draw.rectangle((x0, y0, x1, y1), outline=rgb, width=width)
        text = box.label if box.confidence is None else f"{box.label} {box.confidence:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        ty = y0 - (bottom - top) - 2 * width if y0 - (bottom - top) - 2 * width >= 0 else y0
        draw.rectangle((x0, ty, x0 + right - left + 2 * width, ty + bottom - top + 2 * width), fill=rgb)
        ink = (0, 0, 0) if sum(rgb) > 400 else (255, 255, 255)
        draw.text((x0 + width - left, ty + width - top), text, fill=ink, font=font)


def thumbnail(path: Path, size: int) -> tuple[Any, float] | None:
    """The image at ``path`` upright, its longer side ``size`` px, and the scale; None if it cannot be read.

    Scale first and draw after (``scale_box``), so labels stay legible on large photos and tiny
    images alike. An image that went missing or broke since is left out of a sheet, not fatal.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            picture = ImageOps.exif_transpose(im).convert("RGB")
    except OSError:
        return None
    scale = size / max(picture.size)
    return picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))), scale


def scale_box(box: Box, scale: float) -> Box:
    return Box(box.label, box.x * scale, box.y * scale, box.width * scale, box.height * scale,
               confidence=box.confidence)


def write_sheet(path: Path, thumbs: Sequence[Any], size: int, columns: int) -> None:
    """A PNG of ``thumbs`` in rows of ``columns`` cells of ``size`` px, 4 px apart (one blank cell if none)."""
    from PIL import Image

    cols = max(1, min(columns, len(thumbs)))
    rows = max(1, (len(thumbs) + cols - 1) // cols)
    sheet = Image.new("RGB", (cols * (size + 4), rows * (size + 4)), (255, 255, 255))
    for i, thumb in enumerate(thumbs):
        sheet.paste(thumb, ((i % cols) * (size + 4), (i // cols) * (size + 4)))
    atomic_write_file(path, lambda tmp: sheet.save(tmp, format="PNG"))
