"""The options of a command that keeps its many runs in one folder of its own (``curve``, ``audit``).

Both follow ``train``'s rule for output folders: a new one is numbered ``<dataset>-N`` unless
named, none is ever overwritten, and ``--resume`` carries on in an existing one, keeping what
had finished. One definition keeps their wording and behaviour the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click


def folder_options(noun: str, folder: str, kept: str) -> Callable[[Any], Any]:
    """``--name``, ``--project`` (default ``folder``) and ``--resume`` for the command ``noun``."""
    options = (
        click.option("--name", default=None, help=f"{noun.capitalize()} folder name; default <dataset>-N."),
        click.option("--project", type=click.Path(path_type=Path, file_okay=False), default=Path(folder),
                     show_default=True, help=f"Folder that holds the {folder}."),
        click.option("--resume", type=click.Path(path_type=Path, file_okay=False), default=None,
                     help=f"Carry on with an earlier {noun} ({folder}/NAME): finished {kept} are kept."),
    )

    def decorate(command: Any) -> Any:
        for option in reversed(options):  # click lists options in the order they are written
            command = option(command)
        return command
    return decorate
