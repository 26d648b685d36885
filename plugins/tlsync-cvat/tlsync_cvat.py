"""A tlsync source for CVAT "CVAT for images 1.1" XML exports.

    tlsync pull --source cvat --path task/annotations.xml --dataset parts

CVAT writes one ``<image name= width= height=>`` per frame, holding ``<box label= xtl= ytl=
xbr= ybr= occluded=>`` corner coordinates in pixels, and lists the task's labels under
``<meta>``. The export zip puts the pictures in ``images/`` beside the XML. Polygons,
points and the other shapes are counted in the pull summary, not turned into boxes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import click
import defusedxml.ElementTree as ET
from defusedxml import DefusedXmlException

from tlsync import Box, ImageRef, Item, PullContext, Source, hookimpl
from tlsync.errors import InvalidItem, SourceError
from tlsync.files import open_regular
from tlsync.paths import ALLOW_OUTSIDE_OPTION, ExportRoot
from tlsync.sources import files_fingerprint

# CVAT's free-text "subset" -> tlsync split; anything else ("default") gets a hashed split.
SUBSETS = {"train": "train", "training": "train", "validation": "val", "val": "val", "valid": "val",
           "test": "test", "testing": "test"}
# Shapes a box detector cannot train on: counted in the pull summary under these names.
OTHER_SHAPES = {"polygon": "polygons", "polyline": "polylines", "points": "points", "mask": "masks",
                "ellipse": "ellipses", "cuboid": "cuboids", "skeleton": "skeletons", "tag": "tags"}


class CvatSource(Source):
    name = "cvat"
    description = "CVAT for images 1.1 XML export (boxes; other shapes are counted, not used)."
    options = [
        click.Option(["--path"], type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
                     help="annotations.xml of a 'CVAT for images 1.1' export."),
        click.Option(["--images"], type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="Folder of the images (default: images/ beside the XML, else the XML's folder)."),
        ALLOW_OUTSIDE_OPTION,
    ]

    def items(self, ctx: PullContext, **options: Any) -> Iterator[Item]:
        path: Path = options["path"]  # a required option: click never calls without it
        root = _read(path)
        images = options.get("images") or _default_images(path)
        export = ExportRoot(images, bool(options.get("allow_outside_root")))  # symlinks may not lead out of it
        labels = list(dict.fromkeys(n.text.strip() for n in root.findall("meta//labels/label/name") if n.text))
        if labels:
            ctx.set_categories(labels)
        for element in root.iter("image"):
            item = _item(ctx, path, export, element, set(labels))
            if item is not None:
                yield item

    def fingerprint(self, ctx: PullContext, **options: Any) -> str | None:
        """The XML and the image folder: unchanged files let a re-pull skip reading them."""
        path: Path = options["path"]
        return files_fingerprint(path, options.get("images") or _default_images(path))


def _default_images(xml: Path) -> Path:
    return xml.parent / "images" if (xml.parent / "images").is_dir() else xml.parent


def _read(path: Path) -> Any:
    """The XML root, refusing entity tricks (defusedxml) and exports of another CVAT format."""
    try:
        with open_regular(path) as f:  # a FIFO or device is refused, not waited on
            root = ET.parse(f).getroot()
    except OSError as e:
        raise SourceError(f"{path}: cannot read it ({e.strerror or e})") from None
    except ET.ParseError as e:
        raise SourceError(f"{path}: not valid XML ({e})") from None
    except DefusedXmlException as e:
        raise SourceError(f"{path}: refused unsafe XML ({type(e).__name__})") from None
    if root.tag != "annotations":
        raise SourceError(f"{path}: root element is <{root.tag}>, not <annotations>; is it a CVAT XML export?")
    if root.find("track") is not None:
        raise SourceError(f"{path}: this is a 'CVAT for video' export; export the task as 'CVAT for images 1.1'")
    return root


def _item(ctx: PullContext, path: Path, export: ExportRoot, element: Any, labels: set[str]) -> Item | None:
    name = element.get("name") or ""
    where = f"{path}: image '{name}'"
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        ctx.bad(f"{where}: attribute 'name' must be a relative file name")
        return None
    boxes = [b for i, e in enumerate(element.findall("box")) if (b := _box(ctx, f"{where}: box {i}", e, labels))]
    for shape, plural in OTHER_SHAPES.items():
        found = len(element.findall(shape))
        if found:
            ctx.count_not_used(plural, found)
    split = SUBSETS.get((element.get("subset") or "").strip().lower())
    image = export.check(export.root.joinpath(*relative.parts), f"{where}: attribute 'name'")
    return ctx.item(name, ImageRef(str(image)), boxes, split, where=str(path))


def _box(ctx: PullContext, where: str, element: Any, labels: set[str]) -> Box | None:
    """One ``<box>`` as x, y, width, height; bad ones go to ``ctx.bad`` and are dropped."""
    label = (element.get("label") or "").strip()
    if not label or (labels and label not in labels):
        ctx.bad(f"{where}: label '{label}' is not one of the export's <labels>" if label else f"{where} has no label")
        return None
    try:
        xtl, ytl, xbr, ybr = (float(element.get(k, "")) for k in ("xtl", "ytl", "xbr", "ybr"))
        rotation = float(element.get("rotation") or 0)
        if not all(map(math.isfinite, (xtl, ytl, xbr, ybr, rotation))):
            raise ValueError("not finite")
    except ValueError:
        ctx.bad(f"{where} '{label}': xtl, ytl, xbr, ybr and rotation must be numbers")
        return None
    if rotation % 360:
        ctx.count_not_used("rotated boxes")
        return None
    if xbr <= xtl or ybr <= ytl:
        ctx.bad(f"{where} '{label}' has no area (xtl={xtl:g} xbr={xbr:g} ytl={ytl:g} ybr={ybr:g})")
        return None
    occluded = {"occluded": True} if element.get("occluded") == "1" else {}
    try:  # finite corners can still be infinitely far apart (-1e308 to 1e308): the Box refuses that, named
        return Box(label, xtl, ytl, xbr - xtl, ybr - ytl, metadata=occluded)
    except InvalidItem as e:
        ctx.bad(f"{where}: {e}")
        return None


@hookimpl
def tlsync_register_sources(register: Callable[[Source], None]) -> None:
    register(CvatSource())
