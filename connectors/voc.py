"""Pascal VOC: one XML per image, absolute-pixel ``xmin ymin xmax ymax`` boxes.

Two layouts are read: the classic one (``Annotations/``, ``JPEGImages/`` and the split
lists in ``ImageSets/Main/{train,val,test}.txt``) and Roboflow's (``train/``, ``valid/``,
``test/`` with each XML beside its image), plus a single folder of either. XML is parsed
with defusedxml because an export is untrusted: an entity-expansion ("billion laughs")
file is refused instead of eating the machine's memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tlsync.errors import InvalidItem, SourceError
from tlsync.files import NotRegularFile, open_regular, read_text
from tlsync.format import SPLITS, Box, ImageRef, Item
from tlsync.paths import ExportRoot
from tlsync.sources import PullContext

from .yolo import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    from xml.etree.ElementTree import Element

SPLIT_FOLDERS = {"train": "train", "valid": "val", "val": "val", "test": "test"}
ZERO_AREA = "zero-area boxes in VOC XML (xmin == xmax or ymin == ymax)"


def looks_like_voc(root: Path) -> bool:
    """True when ``root`` (or its split folders) holds VOC XML files."""
    if (root / "Annotations").is_dir():
        return True
    folders = [root, *(root / name for name in SPLIT_FOLDERS)]
    return any(f.is_dir() and next(f.glob("*.xml"), None) is not None for f in folders)


def read_voc(ctx: PullContext, root: Path, export: ExportRoot | None = None) -> Iterator[Item]:
    """Yield one item per XML, in the layout found under ``root``.

    Every XML, image and split list read must resolve inside ``export`` (default ``root``).
    """
    export = export or ExportRoot(root)
    if (root / "Annotations").is_dir():
        images = next((root / n for n in ("JPEGImages", "images") if (root / n).is_dir()), root / "Annotations")
        sets = image_sets(root, export)
        unlisted = 0
        for item in _read_folder(ctx, root / "Annotations", images, sets.get, export):
            unlisted += bool(sets) and item.split is None
            yield item
        if unlisted:
            ctx.note(f"{unlisted} images are in no ImageSets/Main list; tlsync assigned their splits")
        return
    split_dirs = [(split, root / name) for name, split in SPLIT_FOLDERS.items()
                  if (root / name).is_dir() and next((root / name).glob("*.xml"), None) is not None]
    if not split_dirs:
        yield from _read_folder(ctx, root, root, lambda stem: None, export)
    for split, folder in split_dirs:
        yield from _read_folder(ctx, folder, folder, _always(split), export)


def _always(split: str) -> Callable[[str], str | None]:
    """A ``split_of`` for a split folder: every file in it belongs to that split."""
    return lambda _stem: split


def image_sets(root: Path, export: ExportRoot | None = None) -> dict[str, str]:
    """``{image id: split}`` from ``ImageSets/Main/{train,val,test}.txt`` (``trainval`` is their union)."""
    main = root / "ImageSets" / "Main"
    result: dict[str, str] = {}
    for split in SPLITS:
        path = main / f"{split}.txt"
        if not path.is_file():
            continue
        (export or ExportRoot(root)).check(path, f"{root}: split list")
        try:
            text = read_text(path)
        except (OSError, UnicodeDecodeError) as e:
            raise SourceError(f"{path}: cannot read split list ({getattr(e, 'strerror', None) or e})") from None
        for n, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            if fields[0] in result and result[fields[0]] != split:
                raise SourceError(f"{path}: line {n}: '{fields[0]}' is also in {result[fields[0]]}.txt; "
                                  f"an image can be in one split only")
            result[fields[0]] = split
    return result


def _read_folder(ctx: PullContext, xml_dir: Path, image_dir: Path,
                 split_of: Callable[[str], str | None], export: ExportRoot) -> Iterator[Item]:
    export.check(xml_dir, f"{export.root}: annotation folder")
    export.check(image_dir, f"{export.root}: image folder")
    for xml in sorted(xml_dir.glob("*.xml")):
        export.check(xml, f"{xml_dir}: annotation file")
        parsed = parse_annotation(ctx, xml)
        if parsed is None:
            continue
        filename, boxes = parsed
        image = find_image(image_dir, xml.stem, filename)
        if image is None:
            ctx.bad(f"{xml}: its image {filename or xml.stem + '.*'} is not in {image_dir}")
            continue
        export.check(image, f"{xml}: its image")
        item = ctx.item(image.relative_to(image_dir).as_posix(), ImageRef(str(image.absolute())), boxes,
                        split_of(xml.stem), where=str(xml))
        if item is not None:
            yield item


def find_image(folder: Path, stem: str, filename: str | None) -> Path | None:
    """The image an XML describes: its ``<filename>``, else ``<stem>.<any image extension>``.

    Only the base name of ``<filename>`` is used: the tag is free text and must not be
    able to point outside the export.
    """
    if filename and "\x00" not in filename:
        candidate = folder / Path(filename.replace("\\", "/")).name
        if candidate.is_file():
            return candidate
    for ext in sorted(IMAGE_EXTENSIONS):
        for variant in (ext, ext.upper()):
            if (folder / f"{stem}{variant}").is_file():
                return folder / f"{stem}{variant}"
    return None


def parse_annotation(ctx: PullContext, xml: Path) -> tuple[str | None, list[Box]] | None:
    """``(filename tag, boxes)`` of one VOC XML, or None when the file is refused."""
    # Here, not at the top: every command that lists sources loads this module (through
    # the Roboflow source), and only a VOC pull needs an XML parser.
    import defusedxml
    import defusedxml.ElementTree as SafeET

    try:
        with open_regular(xml) as f:
            root = SafeET.parse(f).getroot()
    except NotRegularFile as e:
        ctx.bad(str(e))
        return None
    except defusedxml.DefusedXmlException as e:
        ctx.bad(f"{xml}: refused: {type(e).__name__} (entity or DTD declarations are not allowed; "
                f"they are how 'billion laughs' XML bombs work)")
        return None
    except SafeET.ParseError as e:
        ctx.bad(f"{xml}: not valid XML ({e})")
        return None
    except OSError as e:
        ctx.bad(f"{xml}: cannot read ({e.strerror or e})")
        return None
    if root.tag != "annotation":
        ctx.bad(f"{xml}: root element is <{root.tag}>, not a VOC <annotation>")
        return None
    boxes = []
    for i, obj in enumerate(root.findall("object")):
        box = _object_box(ctx, f"{xml}: object {i}", obj, str(i))
        if box is not None:
            boxes.append(box)
    return (root.findtext("filename") or "").strip() or None, boxes


def _object_box(ctx: PullContext, where: str, obj: Element, box_id: str) -> Box | None:
    name = (obj.findtext("name") or "").strip()
    if not name:
        ctx.bad(f"{where}: missing <name>")
        return None
    where = f"{where} ('{name}')"
    bndbox = obj.find("bndbox")
    if bndbox is None:
        ctx.bad(f"{where}: missing <bndbox>")
        return None
    coords = {}
    for tag in ("xmin", "ymin", "xmax", "ymax"):  # by name: some tools write them in another order
        text = (bndbox.findtext(tag) or "").strip()
        try:
            coords[tag] = float(text)
        except ValueError:
            ctx.bad(f"{where}: <{tag}> must be a number (got {text!r})")
            return None
    width, height = coords["xmax"] - coords["xmin"], coords["ymax"] - coords["ymin"]
    if width == 0 or height == 0:
        ctx.skip(ZERO_AREA)
        return None
    if width < 0 or height < 0:
        ctx.bad(f"{where}: xmax/ymax ({coords['xmax']:g}, {coords['ymax']:g}) are less than xmin/ymin "
                f"({coords['xmin']:g}, {coords['ymin']:g})")
        return None
    difficult = (obj.findtext("difficult") or "").strip() == "1"
    try:
        return Box(name, coords["xmin"], coords["ymin"], width, height, id=box_id,
                   metadata={"difficult": True} if difficult else {})
    except InvalidItem as e:
        ctx.bad(f"{where}: {e}")
        return None
