"""The commands ``tlsync`` knows by name, read from their source instead of imported.

``tlsync --help`` lists every command and a plugin's options are checked against its command's
own when the plugin registers; importing the trainer's commands for either would import torch
(seconds), and importing ``tlsync.cli`` from the plugin system would be a cycle. So a command's
summary and options are read from its decorators, parsed and never run.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
from pathlib import Path

import click

# name -> "module:attribute" of a command that imports torch, loaded on first use. Its summary
# in ``tlsync --help`` is read from its own source (``lazy_short_help``), so there is one copy.
LAZY_COMMANDS = {
    "train": "tlsync.trainer.commands.train:train",
    "eval": "tlsync.trainer.commands.evaluate:eval_command",
    "predict": "tlsync.trainer.commands.evaluate:predict",
    "compare": "tlsync.trainer.commands.evaluate:compare",
    "curve": "tlsync.trainer.commands.curve:curve",
    "weights": "tlsync.trainer.commands.weights:weights",
    "push": "tlsync.trainer.commands.push:push",
    "select": "tlsync.trainer.commands.select:select",
    "audit": "tlsync.trainer.commands.audit:audit",
    "serve": "tlsync.trainer.commands.serve:serve",
    "datasets": "tlsync.cli_datasets:datasets",
    "export": "tlsync.cli_datasets:export",
    "export-model": "tlsync.trainer.commands.export_model:export_model",
}
SHORT_HELP_LIMIT = 70  # what click's own command list uses


def lazy_short_help(target: str, limit: int = SHORT_HELP_LIMIT) -> str:
    """The summary click would show for the command at ``target``, read from its source file.

    ``tlsync --help`` lists every command, and importing the trainer's would import torch
    (seconds); the decorator's ``short_help=``/``help=`` or the function's docstring says
    the same without running anything. "" when the module is not installed.
    """
    module, _, attr = target.partition(":")
    node = next((n for n in module_tree(module) if isinstance(n, ast.FunctionDef) and n.name == attr), None)
    if node is None:
        return ""
    calls = [dec for dec in node.decorator_list if isinstance(dec, ast.Call) and _is_command_decorator(dec)]
    texts = {kw.arg: kw.value.value for call in calls for kw in call.keywords
             if isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str)}
    if texts.get("short_help"):
        return inspect.cleandoc(texts["short_help"])
    text = texts.get("help") or ast.get_docstring(node) or ""
    # click's own rule, through its public API (click.utils.make_default_short_help is deprecated in 8.5)
    return click.Command(None, help=text.split("\f", 1)[0]).get_short_help_str(limit).strip()


@functools.cache
def module_tree(module: str) -> list[ast.stmt]:
    """The top-level statements of ``module``'s source, parsed (not run); [] if it is not installed."""
    source = _source_file(module)
    return ast.parse(source.read_text(encoding="utf-8")).body if source else []


def _source_file(module: str) -> Path | None:
    """Where ``module``'s source is, found without running any package's ``__init__`` below
    the top two (``find_spec`` would import ``tlsync.trainer.commands`` to find its child)."""
    parts = module.split(".")
    top, rest = ".".join(parts[:2]), parts[2:]
    try:
        spec = importlib.util.find_spec(top)
    except ImportError:
        return None
    if spec is None or not spec.origin:
        return None
    path = Path(spec.origin)
    for part in rest:  # down the packages' folders, as the import system would
        folder = path.parent / part
        path = folder / "__init__.py" if folder.is_dir() else path.parent / f"{part}.py"
    return path if path.suffix == ".py" and path.is_file() else None


def _is_command_decorator(call: ast.Call) -> bool:
    """``@click.command(...)``, ``@group.command(...)``, ``@click.group(...)`` (not ``@click.option``)."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("command", "group")


def declared_options(target: str) -> list[click.Parameter]:
    """Each ``@click.option("--a", "name", ...)`` of the command at ``module:function``, as click would build it."""
    module, _, attr = target.partition(":")
    node = next((n for n in module_tree(module) if isinstance(n, ast.FunctionDef) and n.name == attr), None)
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
