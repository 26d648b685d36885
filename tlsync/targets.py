"""What a target is: somewhere ``tlsync push`` sends a run's predictions (e.g. Nucleus).

The core runs the model (through the trainer) and hands the target plain ``Item``s whose
boxes carry ``confidence``; a target never imports the trainer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar, Iterator

import click

from .errors import TlsyncError
from .format import Item


class Target(ABC):
    name: ClassVar[str]
    description: ClassVar[str] = ""
    options: ClassVar[list[click.Option]] = []

    @abstractmethod
    def push(self, predictions: Iterator[Item], run: dict[str, Any], **options: Any) -> dict[str, Any]:
        """Send predictions; ``run`` holds the run's name, categories and config.

        Returns a summary (counts) for the CLI to print.
        """

    def item_filter(self, **options: Any) -> Callable[[Item], bool] | None:
        """Which dataset items to predict at all (None: every one), given the target's options.

        Running the model is the slow part of a push, so a target that only wants some
        items (say, those in a remote slice) says so here rather than dropping the rest
        after they were predicted.
        """
        return None


def check_target(obj: Any, plugin: str) -> Target:
    if not isinstance(obj, Target) or not getattr(obj, "name", None):
        raise TlsyncError(f"plugin '{plugin}' registered {obj!r}, which is not a named tlsync.targets.Target")
    return obj
