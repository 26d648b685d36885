"""A plugin's options must never shadow the options of the command they join.

``tlsync pull --source X`` gains source X's options, ``push --target Y`` target Y's
``options`` and ``select --target Y`` its ``selection_options``. When a plugin declares a flag
(or a parameter name) the command already has, click keeps one of them: the Label Studio
target's ``--project N`` once became ``select --project N``, which wrote the selection into a
folder ``./N`` and sent project 0. So a clash is refused when the plugin registers, with an
error naming the plugin and the option, and the class of bug cannot come back.

No command is imported for this: its options are read from its ``@click.option`` decorators in
the source (``lazy_commands.declared_options``), as ``lazy_short_help`` reads the summaries.
"""

from __future__ import annotations

from typing import Any

import click

from .errors import TlsyncError
from .lazy_commands import LAZY_COMMANDS, declared_options

# (kind of plugin object, its option list) -> the command whose own options it joins
HOSTS = {
    ("source", "options"): "pull",
    ("target", "options"): "push",
    ("target", "selection_options"): "select",
}


def command_options(command: str) -> list[click.Parameter]:
    """The options ``tlsync COMMAND`` declares itself (``--help`` included), read from its source.

    Read, not imported: the trainer's commands import torch, and ``tlsync.cli`` imports the plugin
    system that calls this while plugins register.
    """
    target = LAZY_COMMANDS.get(command, f"tlsync.cli:{command}")
    return [*declared_options(target), click.Option(["--help"], is_flag=True)]


def _spellings(param: click.Parameter) -> set[str]:
    return {*param.opts, *getattr(param, "secondary_opts", [])}


def option_clash(obj: Any, kind: str) -> str | None:
    """The first option of ``obj`` (a source or target) that clashes with its command's own, described; else None."""
    for (host_kind, attr), command in HOSTS.items():
        if host_kind != kind:
            continue
        own = command_options(command)
        for option in getattr(obj, attr, None) or []:
            for param in own:
                clash = sorted(_spellings(option) & _spellings(param))
                if clash or (option.name and option.name == param.name):
                    return (f"option {'/'.join(clash) or option.opts[0]} clashes with `tlsync {command}`'s own "
                            f"{param.opts[0]} (parameter '{param.name}'); the plugin must rename it "
                            f"(e.g. --{obj.name}-{(option.name or 'x').replace('_', '-')})")
    return None


def check_options(obj: Any, kind: str, plugin: str) -> None:
    """Refuse ``obj`` at registration if an option of it clashes with its command's own, naming plugin and option."""
    clash = option_clash(obj, kind)
    if clash:
        raise TlsyncError(f"plugin '{plugin}': {kind} '{obj.name}': {clash}")
