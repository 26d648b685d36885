"""Reading a platform's JSON: bounded parsing, and every field type-checked where it is read.

A labelling platform's API answer is input like any export file: a row whose ``box`` is
``5``, a ``line`` that is a string, or a page nested 100,000 levels deep must end as that
item's bad field (``--on-error skip`` counts it) or a one-line error naming the request,
never as ``TypeError: 'int' object is not iterable`` out of a connector. Connectors read
rows through ``Fields``, whose accessors check the type they promise and raise
``BadField`` (an ``InvalidItem``: item and field named) otherwise; whole bodies go
through ``loads``, which bounds their size and depth before building anything.
"""

from __future__ import annotations

import math
import os
from typing import Any

import orjson

from .errors import InvalidItem, SourceError

MAX_JSON_ENV = "TLSYNC_MAX_JSON_BYTES"
# A Nucleus page of 10,000 rows is ~10-30 MB, a large Label Studio export a few hundred.
DEFAULT_MAX_JSON_BYTES = 1 << 30
MAX_DEPTH = 1024  # orjson's own bound; real answers nest fewer than ten levels


class BadField(InvalidItem):
    """One field of one row has the wrong type or value; the message names both."""


class JsonTooLarge(SourceError):
    """A JSON body over ``$TLSYNC_MAX_JSON_BYTES``."""


def max_json_bytes() -> int:
    """The body-size bound: ``$TLSYNC_MAX_JSON_BYTES`` if set, else 1 GiB."""
    from .archives import parse_size

    env = os.environ.get(MAX_JSON_ENV)
    return parse_size(env, MAX_JSON_ENV) if env else DEFAULT_MAX_JSON_BYTES


def loads(data: bytes | str, what: str) -> Any:
    """Parse a JSON body; too large or too deep is a one-line ``SourceError`` naming ``what``.

    Invalid JSON raises ``ValueError`` (``orjson.JSONDecodeError``) for the caller to word.
    ``what`` names the request or file ("Nucleus: POST https://.../exportForTrainingPage").
    """
    limit = max_json_bytes()
    if len(data) > limit:
        raise JsonTooLarge(f"{what}: the JSON answer is {len(data):,} bytes, more than the {limit:,}-byte limit; "
                           f"refused (raise {MAX_JSON_ENV} if it is real)")
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as e:
        if "depth" in str(e) or "recursion" in str(e):
            raise SourceError(f"{what}: the JSON answer nests deeper than {MAX_DEPTH} levels; refused") from None
        raise


def type_name(value: Any) -> str:
    return "null" if value is None else "a boolean" if isinstance(value, bool) else type(value).__name__


class Fields:
    """Type-checked reads of one JSON object; ``where`` names the item ("item 'a.jpg'").

    Every accessor either returns a value of the promised type (or the default for a
    missing/null field) or raises ``BadField`` naming ``where`` and the field.
    """

    __slots__ = ("obj", "where")

    def __init__(self, obj: Any, where: str, name: str = "row"):
        if not isinstance(obj, dict):
            raise BadField(f"{where}: {name} must be an object (got {type_name(obj)})")
        self.obj, self.where = obj, where

    def _bad(self, key: str, wanted: str, value: Any) -> BadField:
        return BadField(f"{self.where}: field '{key}' must be {wanted} (got {type_name(value)})")

    def get(self, key: str) -> Any:
        """The raw value (for fields checked by their consumer, such as ``Box``)."""
        return self.obj.get(key)

    def array(self, key: str) -> list[Any]:
        """A list, or ``[]`` when missing or null."""
        value = self.obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self._bad(key, "a list", value)
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        """An object, or ``{}`` when missing or null."""
        value = self.obj.get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._bad(key, "an object", value)
        return value

    def fields(self, key: str) -> Fields:
        """A nested object, itself read through ``Fields``."""
        return Fields(self.mapping(key), self.where)

    def string(self, key: str, default: str | None = None) -> str | None:
        """A string, or ``default`` when missing or null."""
        value = self.obj.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self._bad(key, "a string", value)
        return value

    def number(self, key: str, default: float | None = None) -> float | None:
        """A finite number (booleans refused), or ``default`` when missing or null."""
        value = self.obj.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise self._bad(key, "a finite number", value)
        return float(value)

    def id(self, key: str) -> str | None:
        """An identifier: a string or an integer, as a string; None when missing or null."""
        value = self.obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise self._bad(key, "a string or an integer", value)
        return str(value)
