"""What a model is: a named detector builder that plugins register (torch-free).

The trainer asks for models by name only; ``tlsync.trainer.models.zoo`` registers the
torchvision detectors and EfficientNet-Lite0 through the same hook a third-party
plugin uses, so a plugin's detector trains, evaluates and predicts like a built-in one.
This module never imports torch, so that ``tlsync --help`` and ``pull`` stay fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .errors import TlsyncError

WEIGHTS = ("coco", "imagenet", "none")


class WeightsFile(NamedTuple):
    """One pretrained file a model can start from, and whether this machine has it."""

    what: str  # "coco" or "imagenet"
    url: str  # where it comes from (a download URL, or the pip package that ships it)
    path: Path  # where tlsync reads it from
    present: bool


@dataclass
class ModelSpec:
    """A detector architecture ``tlsync train --model NAME`` can build.

    ``build(num_classes, weights, img_size)`` returns a torchvision-style detection model:
    ``num_classes`` excludes the background, ``weights`` is one of ``WEIGHTS``, and
    labels 1..num_classes stand for ``categories[label - 1]``. ``min_size`` is the
    smallest ``img_size`` the architecture accepts (SSD300's extra layers need 268 px).
    ``where`` lists the pretrained files ``build`` reads, for ``tlsync weights where``.
    """

    name: str
    build: Callable[..., Any]
    description: str = ""
    min_size: int = 32
    where: Callable[[], list[WeightsFile]] | None = None


def check_model(obj: Any, plugin: str) -> ModelSpec:
    """Validate what a plugin registered (used by ``plugins.get_models``)."""
    if not isinstance(obj, ModelSpec) or not obj.name or not callable(obj.build):
        raise TlsyncError(f"plugin '{plugin}' registered {obj!r}, which is not a tlsync.models.ModelSpec "
                          "with a name and a build function")
    return obj

