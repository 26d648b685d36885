"""What a target is: somewhere ``tlsync push`` sends a run's predictions (e.g. Nucleus), where
``tlsync select`` sends the images picked for labelling, and where ``tlsync audit`` sends the
images whose labels look wrong, for review.

The core runs the model (through the trainer) and hands the target plain ``Item``s whose
boxes carry ``confidence``; a target never imports the trainer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import click

from .errors import TlsyncError
from .format import Item


@dataclass
class Selection:
    """The images ``tlsync select`` picked, best first, as a target receives them.

    ``items`` are the pool's items with the run's predicted boxes as ``annotations``
    (``confidence`` set), in rank order; ``scores`` holds each one's selection score, in
    the same order. ``image_path`` gives the stored file of an item (for uploading);
    ``folder`` is the local ``selections/<name>/`` already written, where a target may
    note what it sent.

    ``tlsync audit`` sends a review in the same form: ``items`` are the suspect images with
    the suggested labelling as their boxes (``confidence`` set), ``scores`` how suspect each
    image is, ``strategy`` is ``"audit"``, ``folder`` the ``audits/<name>/`` folder, and
    ``labels`` holds the same images with their current labels (the platform's own), in the
    same order, so a target can show the label and the suggestion side by side. It is None
    for a selection: those images have no labels yet.
    """

    name: str
    items: list[Item]
    scores: list[float]
    pool: str
    strategy: str
    folder: Path
    image_path: Callable[[Item], Path]
    labels: list[Item] | None = None


class Target(ABC):
    name: ClassVar[str]
    description: ClassVar[str] = ""
    options: ClassVar[list[click.Option]] = []
    # The options of ``tlsync select --target NAME``: receiving a selection usually needs
    # other settings (a slice name, a project) than pushing predictions does.
    selection_options: ClassVar[list[click.Option]] = []

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

    def send_selection(self, selection: Selection, run: dict[str, Any], **options: Any) -> dict[str, Any]:
        """Queue the selected images for labelling on the platform; returns a summary to print.

        Must be idempotent: a re-run with the same selection sends only what the platform
        does not hold yet. On failure raise ``TlsyncError`` saying how many items were and
        were not sent; the local selection is already written and stays.
        """
        raise TlsyncError(f"target '{self.name}' cannot receive a selection (it only supports tlsync push)")


def check_target(obj: Any, plugin: str) -> Target:
    if not isinstance(obj, Target) or not getattr(obj, "name", None):
        raise TlsyncError(f"plugin '{plugin}' registered {obj!r}, which is not a named tlsync.targets.Target")
    from .plugin_options import check_options

    check_options(obj, "target", plugin)
    return obj
