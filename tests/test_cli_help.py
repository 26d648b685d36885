"""``tlsync --help``: every command's summary is the command's own help, and listing them imports no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import click

import tlsync
from tlsync.cli import LAZY_COMMANDS, SHORT_HELP_LIMIT, cli


def help_rows(text: str) -> dict[str, str]:
    """``{command: summary}`` from the Commands section of a click help page (wrapped lines joined)."""
    rows: dict[str, str] = {}
    name = None
    for line in text.split("Commands:\n", 1)[1].splitlines():
        if line.startswith("  ") and not line.startswith("   ") and line.strip():
            name, _, summary = line.strip().partition(" ")
            rows[name] = summary.strip()
        elif name and line.strip():
            rows[name] += " " + line.strip()
    return rows


def test_help_summaries_are_each_commands_own_help(run_cli):
    result = run_cli("--help")
    assert result.exit_code == 0, result.stderr
    rows = help_rows(result.stdout)
    ctx = click.Context(cli)
    assert set(rows) == set(cli.list_commands(ctx)) and set(LAZY_COMMANDS) <= set(rows)
    for name in rows:
        command = cli.get_command(ctx, name)
        assert command is not None, name
        assert rows[name] == command.get_short_help_str(SHORT_HELP_LIMIT), name


def test_help_lists_trainer_commands_without_importing_torch(isolated_home):
    code = ("import sys\n"
            "from tlsync.cli import main\n"
            "try:\n"
            "    main(['--help'])\n"
            "except SystemExit:\n"
            "    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "assert not any(m.startswith('tlsync.trainer.') for m in sys.modules), 'a trainer module was imported'\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "train " in run.stdout and "push " in run.stdout and "Fine-tune a detector" in run.stdout



def test_core_modules_import_neither_torch_nor_the_trainer():
    """The core stays light: only the CLI's lazy loader (by name, in strings) reaches the trainer."""
    core = Path(tlsync.__file__).parent
    offenders = []
    for path in sorted(core.rglob("*.py")):
        if "testing" in path.relative_to(core).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{'.' * node.level}{node.module or ''}"] if isinstance(node, ast.ImportFrom) else []
            heavy = [n for n in names if n.split(".")[0] in ("torch", "torchvision")
                     or n.startswith(("tlsync.trainer", ".trainer"))]
            offenders += [f"{path.name}: {n}" for n in heavy]
    assert not offenders
