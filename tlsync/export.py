"""Write a dataset version back out as COCO JSON + images.

The result is a folder (``annotations.json`` beside the images, as Roboflow lays out its
COCO exports) that the ``coco`` source reads back to the same items and boxes:
file names are the item ids, annotation ids are kept, and each image entry carries its
split (an extra field COCO tools ignore).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import TlsyncError
from .manifest import atomic_write_json
from .store import DatasetVersion

SAFE_NAME = re.compile(r"^[A-Za-z0-9._-][A-Za-z0-9._ -]*$")


def _file_name(item_id: str, sha256: str, suffix: str, used: set[str]) -> str:
    """The item id when it is a safe file name, else one derived from the image hash."""
    ok = SAFE_NAME.match(item_id) and item_id not in (".", "..") and item_id != "annotations.json"
    name = item_id if ok else f"{sha256[:16]}{suffix}"
    if not Path(name).suffix:
        name += suffix
    base, n = name, 1
    while name in used:
        name, n = f"{Path(base).stem}-{n}{Path(base).suffix}", n + 1
    used.add(name)
    return name


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
    used_ann_ids = {int(b.id) for item in dataset.items(split) for b in item.annotations if b.id and b.id.isdigit()}
    next_ann_id = max(used_ann_ids, default=0) + 1
    for image_id, item in enumerate(dataset.items(split), 1):
        src = dataset.image_path(item)
        name = _file_name(item.id, item.image.sha256 or "", src.suffix, used_names)
        shutil.copyfile(src, folder / name)
        images.append({"id": image_id, "file_name": name, "width": item.image.width,
                       "height": item.image.height, "split": item.split})
        for box in item.annotations:
            if box.id and box.id.isdigit():
                ann_id = int(box.id)
            else:
                ann_id, next_ann_id = next_ann_id, next_ann_id + 1
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
