"""Write a dataset version back out as COCO JSON + images.

The result is a folder (``annotations.json`` beside the images, as Roboflow lays out its
COCO exports) that the ``coco`` source reads back to the same items and boxes:
file names are the item ids, annotation ids are kept, and each image entry carries its
split (an extra field COCO tools ignore).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import TlsyncError
from .manifest import atomic_write_json
from .names import safe_file_name
from .store import DatasetVersion

RESERVED = frozenset({"annotations.json"})


def _numeric(box_id: object) -> str | None:
    """A box id usable as a COCO annotation id (ASCII digits, as a string), or None."""
    text = str(box_id) if box_id is not None else ""
    return text if text.isascii() and text.isdigit() and len(text) < 18 else None


def export_coco(dataset: DatasetVersion, out: Path, split: str | None = None) -> dict[str, int]:
    """Export into ``out`` (which must not exist yet, or be empty); returns counts.

    Writes into a temp folder beside ``out`` and renames it, so a failed export leaves
    nothing behind.
    """
    if out.exists() and any(out.iterdir()):
        raise TlsyncError(f"{out}: already exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        counts = _write(dataset, tmp, split)
        _as_umask_allows(tmp)
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
        return counts
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_umask_allows(folder: Path) -> None:
    """Give the export the modes a plain ``mkdir``/``cp`` would (temp files start private).

    The export is meant to be shared, zipped or pushed; ``mkdtemp``'s 0700 and the atomic
    writer's 0600 would lock colleagues (and the user's other tools) out of it.
    """
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    os.chmod(folder / "annotations.json", 0o666 & ~mask)


def _write(dataset: DatasetVersion, folder: Path, split: str | None) -> dict[str, int]:
    categories = dataset.categories
    cat_ids = {name: i + 1 for i, name in enumerate(categories)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    used_names: set[str] = set()
    used_ann_ids = {int(i) for item in dataset.items(split) for b in item.annotations if (i := _numeric(b.id))}
    next_ann_id = max(used_ann_ids, default=0) + 1
    written_ann_ids: set[int] = set()
    for image_id, item in enumerate(dataset.items(split), 1):
        src = dataset.image_path(item)
        name = safe_file_name(item.id, src.suffix, used_names, RESERVED)
        shutil.copyfile(src, folder / name)
        entry = {"id": image_id, "file_name": name, "width": item.image.width, "height": item.image.height,
                 "split": item.split}
        if name != item.id:
            entry["tlsync_id"] = item.id  # the mapping: the coco source reads the id back from here
        images.append(entry)
        for box in item.annotations:
            numeric = _numeric(box.id)
            if numeric and int(numeric) not in written_ann_ids:  # a platform's ids may repeat across items
                ann_id = int(numeric)
            else:
                ann_id, next_ann_id = next_ann_id, next_ann_id + 1
            written_ann_ids.add(ann_id)
            annotations.append({
                "id": ann_id, "image_id": image_id, "category_id": cat_ids[box.label],
                "bbox": [box.x, box.y, box.width, box.height], "area": box.width * box.height, "iscrowd": 0,
            })
    atomic_write_json(folder / "annotations.json", {
        "info": {"description": f"{dataset.ref} exported by tlsync"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cat_ids[n], "name": n, "supercategory": "none"} for n in categories],
    })
    return {"images": len(images), "annotations": len(annotations), "categories": len(categories)}
