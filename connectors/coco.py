"""The ``coco`` source: a local COCO "instances" JSON plus its image folder.

Written exactly like a third-party plugin: one ``Source`` subclass and a ``@hookimpl``.
``read_coco`` is shared with the Roboflow source, whose COCO exports are this format with
a super-category on top.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import orjson

from tlsync.errors import InvalidItem, SourceError
from tlsync.files import read_bytes
from tlsync.format import SPLITS, Box, ImageRef, Item
from tlsync.hookspecs import hookimpl
from tlsync.paths import ALLOW_OUTSIDE_OPTION, ExportRoot
from tlsync.sources import PullContext, Source, files_fingerprint


def find_annotations(folder: Path) -> Path:
    """The one COCO JSON in ``folder``; a clear error for none or several."""
    if not folder.is_dir():
        raise SourceError(f"{folder}: not a folder")
    found = sorted(folder.glob("*.json"))
    if len(found) != 1:
        what = "no JSON file" if not found else f"{len(found)} JSON files ({', '.join(p.name for p in found)})"
        raise SourceError(f"{folder}: expected one COCO JSON file, found {what}; use --annotations FILE --images DIR")
    return found[0]


def load_json(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(read_bytes(path))
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except orjson.JSONDecodeError as e:
        raise SourceError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise SourceError(f"{path}: cannot read it ({e.strerror or e})") from None
    if not isinstance(data, dict):
        raise SourceError(f"{path}: expected a JSON object with 'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise SourceError(f"{path}: missing or malformed key '{key}' (expected a list)")
    return data


def coco_categories(path: Path, categories: list[Any], drop_supercategory: bool = False) -> dict[int, str]:
    """``{category id: name}`` in id order, optionally without Roboflow's root super-category.

    Roboflow exports put every class under a parent category (``supercategory: "none"``)
    that never has boxes and may share its name with a real class; classes are keyed by
    id so that this cannot merge them.
    """
    names: dict[int, str] = {}
    for i, cat in enumerate(categories):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) or not isinstance(cat.get("name"), str):
            raise SourceError(f"{path}: categories[{i}] needs an integer 'id' and a string 'name'")
        if cat["id"] in names:
            raise SourceError(f"{path}: duplicate category id {cat['id']}")
        names[cat["id"]] = cat["name"]
    if drop_supercategory:
        parents = {c.get("supercategory") for c in categories
                   if isinstance(c.get("supercategory"), str) and c.get("supercategory") != "none"}
        for cat in categories:
            if cat.get("supercategory") == "none" and cat["name"] in parents:
                del names[cat["id"]]
    seen: dict[str, int] = {}
    for cid, name in sorted(names.items()):
        if name in seen:
            raise SourceError(f"{path}: categories {seen[name]} and {cid} share the name '{name}'")
        seen[name] = cid
    return dict(sorted(names.items()))


def _is_id(value: Any) -> bool:
    """COCO ids are integers (some tools write strings); anything else cannot key a lookup."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def read_coco(ctx: PullContext, annotations: Path, images: Path, split: str | None = None,
              drop_supercategory: bool = False, root: ExportRoot | None = None) -> Iterator[Item]:
    """Yield one item per COCO image, with its boxes; bad entries go through ``ctx.bad``.

    Every ``file_name`` must resolve inside ``root`` (default: the image folder).
    """
    data = load_json(annotations)
    categories = coco_categories(annotations, data["categories"], drop_supercategory)
    ctx.set_categories(list(categories.values()))
    root = root or ExportRoot(images)
    valid = list(_valid_images(ctx, annotations, data["images"]))
    image_ids = {img["id"] for _, img in valid}
    boxes: dict[Any, list[Box]] = {}
    seen_ann: set[Any] = set()
    file = str(annotations)  # formatted once: 'where' is built for every annotation
    for i, ann in enumerate(data["annotations"]):
        where = f"{file}: annotation {ann.get('id', f'#{i}') if isinstance(ann, dict) else f'#{i}'}"
        box = _box(ctx, ann, where, categories, image_ids, seen_ann)
        if box is not None:
            boxes.setdefault(ann["image_id"], []).append(box)
    for i, img in valid:
        image = root.check(images / img["file_name"], f"{annotations}: images[{i}] field 'file_name'")
        item_split = split or (img.get("split") if img.get("split") in SPLITS else None)
        # tlsync's own export records the id an unsafe or long one was renamed from.
        item_id = img["tlsync_id"] if isinstance(img.get("tlsync_id"), str) and img["tlsync_id"] else img["file_name"]
        item = ctx.item(item_id, ImageRef(str(image.absolute())), boxes.get(img["id"], []), item_split,
                        where=f"{annotations}: images[{i}]")
        if item is not None:
            yield item


def _valid_images(ctx: PullContext, annotations: Path, entries: list[Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, entry)`` of each usable ``images[]`` entry; checked before annotations refer to them."""
    seen: set[Any] = set()
    for i, img in enumerate(entries):
        problem = _image_problem(img)
        if problem:
            ctx.bad(f"{annotations}: images[{i}] {problem}")
        elif img["id"] in seen:
            ctx.bad(f"{annotations}: duplicate image id {img['id']}")
        else:
            seen.add(img["id"])
            yield i, img


def _image_problem(img: Any) -> str | None:
    """What is wrong with one ``images[]`` entry, or None."""
    if not isinstance(img, dict) or "id" not in img or not isinstance(img.get("file_name"), str):
        return "needs an 'id' and a string 'file_name'"
    if not _is_id(img["id"]):
        return f"field 'id' must be an integer or a string (got {type(img['id']).__name__})"
    name = img["file_name"]
    if not name.strip() or "\x00" in name:
        return "field 'file_name' is empty or holds a NUL byte"
    return None


def _box(ctx: PullContext, ann: Any, where: str, categories: dict[int, str], image_ids: set[Any],
         seen: set[Any]) -> Box | None:
    if not isinstance(ann, dict):
        ctx.bad(f"{where}: not an object")
        return None
    missing = [k for k in ("image_id", "category_id", "bbox") if k not in ann]
    if missing:
        ctx.bad(f"{where}: missing key '{missing[0]}'")
        return None
    for key in ("image_id", "category_id"):
        if not _is_id(ann[key]):
            ctx.bad(f"{where}: field '{key}' must be an integer or a string (got {type(ann[key]).__name__})")
            return None
    if ann.get("id") is not None:
        if not _is_id(ann["id"]):
            ctx.bad(f"{where}: field 'id' must be an integer or a string (got {type(ann['id']).__name__})")
            return None
        if ann["id"] in seen:
            ctx.bad(f"{where}: duplicate annotation id")
            return None
        seen.add(ann["id"])
    if ann["image_id"] not in image_ids:
        ctx.bad(f"{where}: unknown image_id {ann['image_id']!r}")
        return None
    if ann["category_id"] not in categories:
        ctx.bad(f"{where}: unknown category_id {ann['category_id']!r}")
        return None
    if ann.get("iscrowd"):
        ctx.count_not_used("crowd regions (iscrowd=1)")
        return None
    bbox = ann["bbox"]
    if not isinstance(bbox, list) or len(bbox) != 4:
        ctx.bad(f"{where}: 'bbox' must be [x, y, width, height]")
        return None
    try:
        x, y, width, height = bbox
        return Box(categories[ann["category_id"]], x, y, width, height,
                   id=None if ann.get("id") is None else str(ann["id"]))
    except InvalidItem as e:
        ctx.bad(f"{where}: {e}")
        return None


class CocoSource(Source):
    name = "coco"
    description = "A local COCO instances JSON and its image folder."
    options = [
        click.Option(["--path"], type=click.Path(path_type=Path), help="Folder holding one COCO JSON and its images."),
        click.Option(["--annotations"], type=click.Path(path_type=Path), help="The COCO JSON file (with --images)."),
        click.Option(["--images"], type=click.Path(path_type=Path), help="Image folder (default: beside the JSON)."),
        click.Option(["--split"], type=click.Choice(SPLITS), help="Put every item in this split."),
        ALLOW_OUTSIDE_OPTION,
    ]

    def items(self, ctx: PullContext, path: Path | None = None, annotations: Path | None = None,
              images: Path | None = None, split: str | None = None, allow_outside_root: bool = False,
              **_: Any) -> Iterator[Item]:
        if annotations is None:
            if path is None:
                raise SourceError("coco: give --path FOLDER, or --annotations FILE [--images DIR]")
            annotations = find_annotations(path)
        folder = images or annotations.parent
        yield from read_coco(ctx, annotations, folder, split, root=ExportRoot(folder, allow_outside_root))

    def fingerprint(self, ctx: PullContext, path: Path | None = None, annotations: Path | None = None,
                    images: Path | None = None, **_: Any) -> str | None:
        if annotations is None:
            if path is None:
                return None
            annotations = find_annotations(path)
        return files_fingerprint(annotations, images or annotations.parent)


@hookimpl
def tlsync_register_sources(register: Callable[[Source], None]) -> None:
    register(CocoSource())
