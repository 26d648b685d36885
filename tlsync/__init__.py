"""tlsync: pull labelled images from labelling platforms and fine-tune detectors on them.

The core (this package) holds the common item-and-annotation format, the local dataset
store and the plugin system. Sources live in ``tlsync.connectors`` and the trainer in
``tlsync.trainer``; neither knows about the other.

What a plugin author needs is importable from here (``from tlsync import hookimpl,
Source, Item, Box``), as ``import llm; @llm.hookimpl`` works. The names load on first
use, so ``import tlsync`` (and ``tlsync --help``) stays as cheap as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "hookimpl": "tlsync.hookspecs",
    "Source": "tlsync.sources",
    "PullContext": "tlsync.sources",
    "Target": "tlsync.targets",
    "ModelSpec": "tlsync.models",
    "Item": "tlsync.format",
    "Box": "tlsync.format",
    "ImageRef": "tlsync.format",
}
__all__ = ["Box", "ImageRef", "Item", "ModelSpec", "PullContext", "Source", "Target", "__version__", "hookimpl"]

if TYPE_CHECKING:
    from .format import Box, ImageRef, Item
    from .hookspecs import hookimpl
    from .models import ModelSpec
    from .sources import PullContext, Source
    from .targets import Target


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'tlsync' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
