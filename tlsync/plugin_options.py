"""A plugin's options must never shadow the options of the command they join.

``tlsync pull --source X`` gains source X's options, ``push --target Y`` target Y's
``options`` and ``select --target Y`` its ``selection_options``. When a plugin declares a flag
(or a parameter name) the command already has, click keeps one of them: the Label Studio
target's ``--project N`` once became ``select --project N``, which wrote the selection into a
folder ``./N`` and sent project 0. So a clash is refused when the plugin registers, with an
error naming the plugin and the option, and the class of bug cannot come back.

The commands that import torch (``push``, ``select``) are not imported for this: their options
are read from their ``@click.option`` decorators in the source, as ``lazy_short_help`` reads
their summaries.
"""

from __future__ import annotations

import ast
from typing import Any

import click

from .errors import TlsyncError

# (kind of plugin object, its option list) -> the command whose own options it joins
HOSTS = {
    ("source", "options"): "pull",
    ("target", "options"): "push",
    ("target", "selection_options"): "select",
}


def command_options(command: str) -> list[click.Parameter]:
    """The options ``tlsync COMMAND`` declares itself (``--help`` included), without importing torch."""
    from .cli import LAZY_COMMANDS, cli

    params: list[click.Parameter]
    if command in LAZY_COMMANDS:
        params = _declared_options(LAZY_COMMANDS[command])
    else:
        params = list(cli.commands[command].params)
    return [*params, click.Option(["--help"], is_flag=True)]


def _declared_options(target: str) -> list[click.Parameter]:
    """Each ``@click.option("--a", "name", ...)`` of the command at ``module:function``, as click would build it."""
    from .cli import _module_tree

    module, _, attr = target.partition(":")
    node = next((n for n in _module_tree(module) if isinstance(n, ast.FunctionDef) and n.name == attr), None)
    params: list[click.Parameter] = []
    for decorator in node.decorator_list if node else []:
        if not isinstance(decorator, ast.Call) or not isinstance(decorator.func, ast.Attribute):
            continue
        if decorator.func.attr != "option":
            continue
        declared = [a.value for a in decorator.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        flag = any(kw.arg == "is_flag" for kw in decorator.keywords)
        params.append(click.Option(declared, is_flag=flag or None))
    return params


def _spellings(param: click.Parameter) -> set[str]:
    return {*param.opts, *getattr(param, "secondary_opts", [])}


def check_options(obj: Any, kind: str, plugin: str) -> None:
    """Refuse ``obj`` (a source or target) if any option of it clashes with its command's own."""
    for (host_kind, attr), command in HOSTS.items():
        if host_kind != kind:
            continue
        own = command_options(command)
        for option in getattr(obj, attr, None) or []:
            for param in own:
                clash = sorted(_spellings(option) & _spellings(param))
                if clash or (option.name and option.name == param.name):
                    raise TlsyncError(
                        f"plugin '{plugin}': {kind} '{obj.name}' declares option "
                        f"{'/'.join(clash) or option.opts[0]}, which clashes with `tlsync {command}`'s own "
                        f"{param.opts[0]} (parameter '{param.name}'); the plugin must rename it "
                        f"(e.g. --{obj.name}-{(option.name or 'x').replace('_', '-')})")
