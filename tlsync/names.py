"""Identifiers from outside, made safe once: as ids at the format's boundary, as file names on the way out.

A platform's id is whatever its users typed: an integer in one export, 300 characters in
another, ``../x`` or a terminal escape in a third. ``normalise_id`` is applied where an
``Item`` or ``Box`` is built (``tlsync.format``), so everything later sees a string without
control characters. ``safe_file_name`` is the one way an id becomes a file name (export,
predict): readable, bounded, never a path, unique in its folder even on case-insensitive
disks, with a short hash of the id whenever the name had to change, so that two ids never
meet in one name. Callers record the mapping (the COCO export's ``tlsync_id``).
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from .errors import InvalidItem

MAX_ID_CHARS = 1024
MAX_NAME_CHARS = 100  # the readable part; with the hash and suffix far below every filesystem's 255
# C0 and C1 controls, and the bidirectional overrides that make a name display as something else.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")
_WINDOWS_RESERVED = re.compile(r"^(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?$", re.IGNORECASE)
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})


def normalise_id(value: Any, where: str, field: str = "id") -> str:
    """``value`` as an id: an integer becomes its decimal string; other non-strings, empty
    strings, control characters and ids over ``MAX_ID_CHARS`` are refused naming ``where``."""
    if type(value) is str:  # the common case first: this runs for every item and box pulled
        text = value
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    else:
        raise InvalidItem(f"{where}: field '{field}' must be a string or an integer (got {type(value).__name__})")
    if not text:
        raise InvalidItem(f"{where}: field '{field}' must not be empty")
    if len(text) > MAX_ID_CHARS:
        raise InvalidItem(f"{where}: field '{field}' is {len(text):,} characters long (at most {MAX_ID_CHARS:,})")
    if bad := _CONTROL.search(text):
        raise InvalidItem(f"{where}: field '{field}' holds a control character (U+{ord(bad.group()):04X}); refused")
    return text


def safe_file_name(item_id: str, suffix: str, used: set[str], reserved: frozenset[str] = frozenset()) -> str:
    """A file name for ``item_id`` in a folder whose names so far are ``used`` (lower-cased; updated).

    The id itself when it is already a plain, short file name; else its safe characters
    (``/`` and the rest become ``_``), cut to ``MAX_NAME_CHARS``, plus ``-`` and 12 hex digits
    of the id's sha256. ``suffix`` (the image's, such as ``.jpg``) is added unless the id
    ends in an image extension already. ``reserved`` names (``annotations.json``) are avoided.
    """
    stem, ext = os.path.splitext(item_id)
    if ext.lower() not in IMAGE_SUFFIXES:
        stem, ext = item_id, suffix
    clean = _UNSAFE.sub("_", stem).strip(" .-") or "item"
    plain = (clean == stem and len(clean) <= MAX_NAME_CHARS and not _WINDOWS_RESERVED.match(clean)
             and f"{clean}{ext}".lower() not in reserved)
    digest = hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    base = clean if plain else f"{clean[:MAX_NAME_CHARS].rstrip(' .-')}-{digest}"
    name, n = f"{base}{ext}", 1
    while name.lower() in used or name.lower() in reserved:
        name, n = f"{base}-{n}{ext}", n + 1
    used.add(name.lower())
    return name
