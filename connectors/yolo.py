"""YOLO exports (v5, v8, v11): ``data.yaml`` plus ``{split}/images`` and ``{split}/labels``.

Rows are ``class cx cy w h`` normalised to 0..1, so each image's real size (read from its
header, with EXIF orientation applied, exactly as the store will measure it) is needed to
turn them into the common format's pixel boxes. A missing or empty label file is a true
negative, not an error.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlsync.errors import InvalidItem, SourceError, TlsyncError
from tlsync.files import NotRegularFile, open_regular, read_text
from tlsync.format import SPLITS, Box, ImageRef, Item
from tlsync.images import image_info
from tlsync.paths import ExportRoot
from tlsync.sources import PullContext

if TYPE_CHECKING:
    import yaml

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})
# Where exports put a split when data.yaml does not say (Roboflow writes no ``test:`` key).
CONVENTIONAL_FOLDERS = {"train": ("train",), "val": ("valid", "val"), "test": ("test",)}
POLYGON_ROWS = "polygon rows (their bounding boxes are used)"
# data.yaml is a few KB; these bounds refuse alias bombs before anything walks the values.
MAX_YAML_BYTES = 4 << 20
MAX_YAML_NODES = 200_000


def find_data_yaml(root: Path) -> Path | None:
    """``data.yaml`` in ``root``, else the only ``*.yaml`` there that has ``names``."""
    if (root / "data.yaml").is_file():
        return root / "data.yaml"
    candidates = [p for p in sorted(root.glob("*.y*ml")) if p.suffix in (".yaml", ".yml")]
    found = [p for p in candidates if "names" in _safe_load(p)]
    return found[0] if len(found) == 1 else None


def _safe_load(path: Path) -> dict[str, Any]:
    """The yaml as a mapping, or ``{}`` for anything unreadable (only used for detection)."""
    try:
        return load_config(path)
    except SourceError:
        return {}


def load_config(path: Path) -> dict[str, Any]:
    """The yaml as a mapping, refusing files too big, or whose aliases expand too far, to be a data.yaml.

    ``yaml.safe_load`` builds an alias bomb cheaply (aliases share objects), but anything
    that then walks it (``str()`` of a split entry) expands it exponentially. Composing
    first gives the node graph, whose expanded size is counted with a budget.
    """
    import yaml  # here, not at the top: every command that lists sources loads this module (via Roboflow)

    try:
        with open_regular(path) as f:
            raw = f.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            raise SourceError(f"{path}: larger than {MAX_YAML_BYTES >> 20} MB; not a data.yaml")
        text = raw.decode("utf-8")
        _check_expansion(path, yaml.compose(text, Loader=yaml.SafeLoader))
        config = yaml.safe_load(text)
    except OSError as e:
        raise SourceError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as e:
        raise SourceError(f"{path}: not valid YAML ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    if not isinstance(config, dict):
        raise SourceError(f"{path}: expected a mapping with 'names' and 'train'/'val' folders")
    return config


def _check_expansion(path: Path, root: yaml.Node | None) -> None:
    """Count the nodes the document expands to (aliases counted each time), up to a budget."""
    import yaml

    stack, seen = [root] if root is not None else [], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > MAX_YAML_NODES:
            raise SourceError(f"{path}: its aliases expand to more than {MAX_YAML_NODES:,} values "
                              f"(a YAML 'billion laughs' bomb?); refused")
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(n for pair in node.value for n in pair)


def class_names(path: Path, config: dict[str, Any]) -> dict[int, str]:
    """``{index: name}`` from ``names`` given as a list or as an index->name map."""
    names = config.get("names")
    if isinstance(names, list):
        pairs = list(enumerate(names))
    elif isinstance(names, dict):
        try:
            pairs = sorted((int(k), v) for k, v in names.items())
        except (TypeError, ValueError):
            raise SourceError(f"{path}: 'names' map keys must be class indices (0, 1, ...)") from None
    else:
        raise SourceError(f"{path}: missing 'names' (a list of class names, or an index -> name map)")
    result: dict[int, str] = {}
    for index, name in pairs:
        if index < 0 or not isinstance(name, (str, int)) or not str(name).strip():
            shown = repr(name) if isinstance(name, (str, int, float, bool)) or name is None else type(name).__name__
            raise SourceError(f"{path}: names[{index}] must be a non-empty class name (got {shown})")
        result[index] = str(name)
    seen: set[str] = set()
    for name in result.values():  # a set, not a scan of the values so far: 'names' may be long
        if name in seen:
            raise SourceError(f"{path}: class name '{name}' appears twice in 'names'")
        seen.add(name)
    nc = config.get("nc")
    if nc is not None and nc != len(result):
        raise SourceError(f"{path}: nc is {nc!r} but 'names' lists {len(result)} classes")
    return result


def split_folders(path: Path, config: dict[str, Any], root: ExportRoot | None = None) -> list[tuple[str, Path]]:
    """``(split, images folder)`` for each split the yaml names or the export holds.

    Roboflow writes ``../train/images``, meant for a checkout one level up; like the
    official client, tlsync reads that as ``train/images`` beside the yaml. Other relative
    paths resolve against ``path:`` (if given) or the yaml's folder; a split whose folder
    is missing (the yaml moved) falls back to the export's own ``train/``, ``valid/``...
    Every folder must resolve inside ``root`` (default: the yaml's folder).
    """
    here = path.parent
    root = root or ExportRoot(here)
    base = here
    if config.get("path") is not None and not isinstance(config["path"], str):
        raise SourceError(f"{path}: 'path' must be a folder name (got {type(config['path']).__name__})")
    if isinstance(config.get("path"), str) and (here / config["path"]).is_dir():
        base = here / config["path"]
    found: list[tuple[str, Path]] = []
    for split in SPLITS:
        value = config.get(split)
        if value is None:
            found += [(split, f) for f in _conventional(here, split)[:1]]
            continue
        for entry in _entries(path, split, value):
            folder = _resolve(base, here, entry) or next(iter(_conventional(here, split)), None)
            if folder is None:
                raise SourceError(f"{path}: '{split}: {entry}' is not a folder (looked under {base})")
            root.check(folder, f"{path}: '{split}: {entry}'")
            if folder.is_file():
                raise SourceError(f"{path}: '{split}: {entry}' is an image-list file; give the images folder instead")
            found.append((split, folder))
    seen: dict[Path, str] = {}
    for split, folder in found:
        key = folder.resolve()
        if key in seen:
            raise SourceError(f"{path}: '{seen[key]}' and '{split}' both point at {folder}; "
                              "an image can be in one split")
        seen[key] = split
    if not found:
        raise SourceError(f"{path}: names no 'train'/'val'/'test' folders and none of train/, valid/, test/ exist")
    return found


def _entries(path: Path, split: str, value: Any) -> list[str]:
    """A split's folder names; anything but a string or a short list of strings is refused unread."""
    entries = value if isinstance(value, list) else [value]
    if len(entries) > 100 or not all(isinstance(e, str) and e.strip() and "\x00" not in e for e in entries):
        raise SourceError(f"{path}: '{split}' must be a folder name or a list of folder names "
                          f"(got {type(value).__name__}{f' of {len(entries)}' if isinstance(value, list) else ''})")
    return entries


def _resolve(base: Path, here: Path, entry: str) -> Path | None:
    """The folder ``entry`` names; inside the export first, so ``../train`` never picks a sibling."""
    candidate = Path(entry).expanduser()
    if candidate.is_absolute():
        return candidate if candidate.exists() else None
    parts = list(candidate.parts)
    while parts and parts[0] in ("..", "."):
        parts.pop(0)
    tries = ([here.joinpath(*parts)] if parts else []) + [base / candidate]
    return next((p for p in tries if p.exists()), None)


def _conventional(here: Path, split: str) -> list[Path]:
    return [here / name / "images" for name in CONVENTIONAL_FOLDERS[split] if (here / name / "images").is_dir()]


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder in the path becomes ``labels``, suffix ``.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_yolo(ctx: PullContext, root: Path, export: ExportRoot | None = None) -> Iterator[Item]:
    """Yield every image of every split named by the export's data.yaml, with its boxes.

    Split folders, images and label files must all resolve inside ``export`` (default ``root``).
    """
    path = find_data_yaml(root)
    if path is None:
        raise SourceError(f"{root}: no data.yaml (a YOLO export has one beside its train/ and valid/ folders)")
    config = load_config(path)
    names = class_names(path, config)
    ctx.set_categories(list(names.values()))
    export = export or ExportRoot(root)
    for split, folder in split_folders(path, config, export):
        yield from read_split(ctx, folder, split, names, export)


def read_folders(root: Path, export: ExportRoot | None = None) -> list[Path]:
    """Every folder ``read_yolo`` reads: the export, and split folders the yaml puts elsewhere."""
    path = find_data_yaml(root)
    if path is None:
        return [root]
    folders = [root]
    for _, images in split_folders(path, load_config(path), export or ExportRoot(root)):
        folders += [f for f in (images, label_path(images / "_.jpg").parent) if f.is_dir()]
    return folders


def read_split(ctx: PullContext, images: Path, split: str | None, names: dict[int, str],
               export: ExportRoot | None = None) -> Iterator[Item]:
    """One item per image under ``images`` (id: its path relative to that folder)."""
    export = export or ExportRoot(images)
    # Not is_file(): a FIFO or socket named x.jpg is reported as a bad item, not passed over in silence.
    for image in sorted(p for p in images.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()):
        export.check(image, f"{images}: image")
        labels = label_path(image)
        if labels.exists():
            export.check(labels, f"{image}: its label file")
        try:
            width, height, _ = image_info(image)
        except TlsyncError as e:
            ctx.bad(f"{image}: {e}")
            continue
        boxes = read_labels(ctx, labels, width, height, names)
        item = ctx.item(image.relative_to(images).as_posix(), ImageRef(str(image.absolute())), boxes, split,
                        where=str(images))
        if item is not None:
            yield item


def read_labels(ctx: PullContext, path: Path, width: int, height: int, names: dict[int, str]) -> list[Box]:
    """The boxes of one label file, in pixels; bad rows go through ``ctx.bad`` and are dropped."""
    try:
        text = read_text(path)
    except FileNotFoundError:
        return []
    except NotRegularFile as e:
        ctx.bad(str(e))
        return []
    except (OSError, UnicodeDecodeError) as e:
        ctx.bad(f"{path}: cannot read label file ({getattr(e, 'strerror', None) or e})")
        return []
    boxes = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            box = _row_box(ctx, f"{path}: line {n}", line.split(), width, height, names)
            if box is not None:
                boxes.append(box)
    return boxes


def _row_box(ctx: PullContext, where: str, tokens: list[str], width: int, height: int,
             names: dict[int, str]) -> Box | None:
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        bad = next(t for t in tokens if not _is_float(t))
        ctx.bad(f"{where}: {bad!r} is not a number")
        return None
    if not values[0].is_integer() or int(values[0]) not in names:
        ctx.bad(f"{where}: class index {tokens[0]} is not in data.yaml names (0..{max(names, default=-1)})")
        return None
    coords = values[1:]
    if len(coords) < 4 or (len(coords) > 4 and len(coords) % 2):
        ctx.bad(f"{where}: expected 'class cx cy w h' or 'class x1 y1 x2 y2 x3 y3 ...' (got {len(values)} numbers)")
        return None
    outside = next((t for t, v in zip(tokens[1:], coords, strict=True)
                    if not (math.isfinite(v) and 0.0 <= v <= 1.0)), None)
    if outside is not None:
        ctx.bad(f"{where}: coordinate {outside} is outside 0..1 (YOLO rows are normalised to the image size)")
        return None
    if len(coords) == 4:
        cx, cy, w, h = coords
        x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
    else:
        ctx.count_not_used(POLYGON_ROWS)
        xs, ys = coords[0::2], coords[1::2]
        x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
    try:
        return Box(names[int(values[0])], x0 * width, y0 * height, (x1 - x0) * width, (y1 - y0) * height)
    except InvalidItem as e:
        ctx.bad(f"{where}: {e}")
        return None


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True
