"""Class names across datasets: rename/merge maps, drop and keep lists, names that differ only in spelling.

A derived dataset (``derive.py``), a training run on several datasets and a run continued
from a parent whose classes are spelled differently all need the same three things: read a
map the user wrote (``old=new,...`` or a YAML/JSON file), check it against the classes that
really exist (a key nobody has is a typo, and a silent typo would train a class with no
boxes), and turn every source label into its new name or into "dropped".
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TlsyncError

MAX_MAP_BYTES = 1 << 20  # a class map is a few lines; anything bigger is not one
_SPELLING = re.compile(r"[\s_\-]+")


def parse_class_map(value: str) -> dict[str, str]:
    """``--class-map``: a ``.yaml``/``.yml``/``.json`` file of ``old: new``, or inline ``old=new,old2=new2``.

    Both come from the user and are checked like anything else from outside: a bounded
    file size, ``yaml.safe_load``, a mapping of non-empty strings, no key given twice.
    """
    path = Path(value).expanduser()
    if path.suffix.lower() in (".yaml", ".yml", ".json") or (path.is_file() and "=" not in value):
        return _map_file(path)
    mapping: dict[str, str] = {}
    for part in value.split(","):
        old, sep, new = (p.strip() for p in part.partition("="))
        if not sep or not old or not new:
            raise TlsyncError(f"--class-map {value!r}: {part.strip()!r} is not old=new "
                              f"(write old=new,old2=new2, or give a .yaml/.json file)")
        if old in mapping:
            raise TlsyncError(f"--class-map {value!r}: class {old!r} is mapped twice")
        mapping[old] = new
    return mapping


def _map_file(path: Path) -> dict[str, str]:
    try:
        size = path.stat().st_size
        if size > MAX_MAP_BYTES:
            raise TlsyncError(f"{path}: a class map of {size} bytes is too large (at most {MAX_MAP_BYTES})")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TlsyncError(f"--class-map {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TlsyncError(f"--class-map {path}: cannot read it ({type(e).__name__})") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except (ValueError, Exception) as e:  # yaml.YAMLError and json's ValueError: one line either way
        raise TlsyncError(f"{path}: not valid {path.suffix.lstrip('.').upper()} ({type(e).__name__})") from None
    if not isinstance(data, dict) or not data:
        raise TlsyncError(f"{path}: a class map is a non-empty mapping of old name to new name")
    mapping: dict[str, str] = {}
    for old, new in data.items():
        if not isinstance(old, str) or not isinstance(new, str) or not old.strip() or not new.strip():
            raise TlsyncError(f"{path}: entry {old!r}: {new!r}: both names must be non-empty strings")
        mapping[old.strip()] = new.strip()
    return mapping


def spelling_key(name: str) -> str:
    """What two spellings of one class share: case, spaces, '_' and '-' ignored (``Red Blood-Cell``)."""
    return _SPELLING.sub("", name).casefold()


def near_duplicates(names: Iterable[str]) -> dict[str, str]:
    """A map that merges classes differing only in case or spacing into the first spelling met.

    ``["Car", "truck", "car"]`` -> ``{"car": "Car"}``. Empty when no two names collide.
    """
    first: dict[str, str] = {}
    merge: dict[str, str] = {}
    for name in names:
        target = first.setdefault(spelling_key(name), name)
        if target != name:
            merge[name] = target
    return merge


def format_map(mapping: dict[str, str]) -> str:
    """A map as ``--class-map`` takes it inline (quoted by the caller for a shell)."""
    return ",".join(f"{old}={new}" for old, new in mapping.items())


@dataclass
class ClassRules:
    """How every source class becomes a derived class, or is dropped.

    Built once from the sources' classes (in order) and checked there, so that a typo in a
    map, a drop or a keep list is an error before anything is written.
    """

    source_classes: list[str]
    class_map: dict[str, str] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    strict: bool = False

    def __post_init__(self) -> None:
        unknown = [old for old in self.class_map if old not in self.source_classes]
        if unknown:
            raise TlsyncError(f"--class-map names {', '.join(map(repr, unknown))}, which no source has "
                              f"(their classes: {', '.join(self.source_classes)})")
        if self.strict and not self.class_map:
            raise TlsyncError("--strict keeps only the classes --class-map names; give a --class-map")
        if self.drop and self.keep:
            raise TlsyncError("give --drop-class or --keep-class, not both")
        mapped = list(dict.fromkeys(n for c in self.source_classes if (n := self._renamed(c)) is not None))
        for name in (*self.drop, *self.keep):
            if name not in mapped:
                raise TlsyncError(f"--{'drop' if name in self.drop else 'keep'}-class {name!r} is not a class of "
                                  f"the result (its classes after the map: {', '.join(mapped)})")
        self.categories: list[str] = [c for c in mapped if c not in self.drop and (not self.keep or c in self.keep)]
        if not self.categories:
            raise TlsyncError("no class is left after --class-map/--drop-class/--keep-class")
        renamed = {c: self._renamed(c) for c in self.source_classes}
        self.new_name = {c: n if n in self.categories else None for c, n in renamed.items()}

    def _renamed(self, name: str) -> str | None:
        if name in self.class_map:
            return self.class_map[name]
        return None if self.strict else name

    def translate(self, label: str) -> str | None:
        """The derived name of a source label, or None when its boxes are dropped."""
        return self.new_name.get(label)

    def merged(self) -> dict[str, list[str]]:
        """Derived classes that two or more source classes (or a renamed one) flow into."""
        into: dict[str, list[str]] = {}
        for old, new in self.new_name.items():
            if new is not None:
                into.setdefault(new, []).append(old)
        return {new: olds for new, olds in into.items() if len(olds) > 1 or olds != [new]}
