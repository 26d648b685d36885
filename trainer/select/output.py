"""What ``tlsync select`` leaves in ``selections/<name>/``.

    selection.jsonl   one line per selected image, best first: rank, item id, image sha256,
                      source uri, score, the components of the score, predicted boxes
    selection.json    run, pool@version, strategy, budget, seed, pool counts, timings, the
                      predicted class histogram of the selection vs the pool
    selection.png     a contact sheet of the top images with the model's boxes drawn

Like run directories, a selection folder is never overwritten: unnamed ones are numbered
``<pool>-1``, ``<pool>-2``..., a named one that exists is refused. Every file is written
to a temp name and renamed, and a selection that fails half-way removes its folder.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tlsync.atomic import atomic_write_json, atomic_write_text
from tlsync.format import Box, Item

from ..evaluation.drawing import draw_boxes, scale_box, thumbnail, write_sheet
from ..training import runs

SHEET_IMAGES = 24
SHEET_COLUMNS = 6
THUMB = 256


def claim_folder(project: Path, name: str | None, default_stem: str) -> Path:
    """Create and return a fresh selection folder; ``mkdir`` claims the name, so two selections never share one."""
    return runs.claim_folder(project, name, default_stem,
                             taken="selection {} already exists; choose another --name (selections are "
                                   "never overwritten)")


def histogram(boxes: Sequence[Sequence[Box]], categories: list[str]) -> dict[str, int]:
    counts = Counter(box.label for image in boxes for box in image)
    return {name: counts.get(name, 0) for name in categories}


def rows(items: Sequence[Item], scores: Sequence[float], components: Sequence[dict[str, float]]) -> list[dict]:
    return [{"rank": rank, "item_id": item.id, "sha256": item.image.sha256, "uri": item.image.uri,
             "score": score, "components": parts, "boxes": [b.to_dict() for b in item.annotations]}
            for rank, (item, score, parts) in enumerate(zip(items, scores, components, strict=True), 1)]


def write_selection(folder: Path, selected: list[dict[str, Any]], summary: dict[str, Any],
                    items: Sequence[Item], image_paths: Sequence[Path], categories: list[str]) -> None:
    """Write the three files; on any failure remove the folder, so no half selection is left."""
    try:
        atomic_write_text(folder / "selection.jsonl", "".join(json.dumps(r) + "\n" for r in selected))
        summary["contact_sheet"] = contact_sheet(folder / "selection.png", items, image_paths, categories)
        atomic_write_json(folder / "selection.json", summary)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def contact_sheet(path: Path, items: Sequence[Item], image_paths: Sequence[Path],
                  categories: list[str]) -> list[str]:
    """The first ``SHEET_IMAGES`` selected images, boxes drawn, captioned with rank; returns their ids."""
    from PIL import ImageDraw

    thumbs: list[Any] = []
    shown: list[str] = []
    for rank, (item, image_path) in enumerate(zip(items, image_paths, strict=True), 1):
        if len(thumbs) == SHEET_IMAGES:
            break
        found = thumbnail(image_path, THUMB)
        if found is None:
            continue
        picture, scale = found
        draw_boxes(picture, [scale_box(b, scale) for b in item.annotations], categories)
        ImageDraw.Draw(picture).text((3, picture.height - 14), f"#{rank}", fill=(255, 255, 0))
        thumbs.append(picture)
        shown.append(item.id)
    write_sheet(path, thumbs, THUMB, SHEET_COLUMNS)
    return shown
