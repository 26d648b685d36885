"""Every ``tlsync ...`` command line the docs show parses against the real CLI.

A reader copies these lines. Each one in a code block of README.md, CONTRIBUTING.md, docs/*.md
or a plugin's README goes through click's own parser (``make_context``, the same classes the CLI
uses, so ``pull --source X``/``push --target X``/``select --target X`` grow that plugin's options
exactly as they do for a user) with the example plugins loaded, as CI installs them. Nothing is
run. An unknown option, a missing argument or a bad value fails, and so does click's "parameter
is used more than once" warning: a plugin option that collides with the command's own is the bug
this test exists to keep out (``select --target labelstudio --project 3``).
"""

from __future__ import annotations

import copy
import importlib
import io
import re
import shlex
import sys
import warnings
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import click
import pytest

from tlsync import plugins
from tlsync.cli import cli
from tlsync.errors import TlsyncError
from tlsync.testing import isolated_plugins

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGINS = "labelstudio,cvat"
FENCE = re.compile(r"^\s*(```|~~~)")
SHELL_BREAKS = {"&&", "||", "|", ";", ">", ">>", "2>", "&"}


def command_pages() -> list[Path]:
    """The pages whose code a reader copies (cli.md is printed by the CLI itself, not written)."""
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md",
             *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "cli.md"),
             *sorted((ROOT / "plugins").glob("*/README.md"))]
    return [p for p in pages if p.exists()]


def code_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line in a code block: fenced, or indented 4+ spaces after a blank line.

    Continuation lines (a trailing backslash) are joined to the line they continue.
    """
    fenced, indented, previous_blank, pending, start = False, False, True, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced, previous_blank = not fenced, False
            continue
        if not fenced:
            indented = bool(line.strip()) and line.startswith("    ") and (indented or previous_blank)
            previous_blank = not line.strip()
        if not (fenced or indented):
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


def tlsync_invocations(line: str) -> Iterator[list[str]]:
    """The arguments of each ``tlsync`` call in a shell line.

    Spelled ``tlsync ...``, ``X=1 tlsync ...``, ``.venv/bin/tlsync ...`` or ``python -m tlsync ...``.
    """
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return
    for i, word in enumerate(words):
        is_program = word == "tlsync" or word.endswith("/tlsync")
        if is_program and (i == 0 or words[i - 1] in SHELL_BREAKS or words[i - 1] == "-m"
                           or re.match(r"^[A-Z_][A-Z0-9_]*=", words[i - 1])):
            args = []
            for arg in words[i + 1:]:
                if arg in SHELL_BREAKS:
                    break
                args.append(arg)
            yield args


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for page in command_pages():
        for number, line in code_lines(page.read_text(encoding="utf-8")):
            for args in tlsync_invocations(line):
                found.append((f"{page.relative_to(ROOT)}:{number}", args))
    return found


def parse_problem(args: list[str]) -> str | None:
    """Why click would refuse ``tlsync ARGS`` (or warn about it), or None; nothing is invoked."""
    with warnings.catch_warnings(record=True) as caught, redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        try:
            command: click.Command = cli
            ctx = cli.make_context("tlsync", list(args))
            while isinstance(command, click.Group):
                rest = [*ctx._protected_args, *ctx.args]
                if not rest:
                    raise click.UsageError("missing command", ctx)
                name, sub, rest = command.resolve_command(ctx, rest)
                assert name is not None and sub is not None
                ctx, command = sub.make_context(name, rest, parent=ctx), sub
        except click.exceptions.Exit as e:  # --help or --version: parsed fine
            if e.exit_code:
                return f"exit {e.exit_code}"
        except click.ClickException as e:
            return f"{type(e).__name__}: {e.format_message()}"
        except TlsyncError as e:
            return f"{type(e).__name__}: {e}"
    repeated = [str(w.message) for w in caught if "used more than once" in str(w.message)]
    return "; ".join(repeated) or None


def guide_plugins(folder: Path) -> dict[str, Any]:
    """The plugin modules docs/plugins.md builds (``<!-- tutorial: tlsync_x.py -->``), imported from ``folder``."""
    guide = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    modules = {}
    for filename, code in re.findall(r"<!-- tutorial: (tlsync_\w+\.py) -->\n```\w*\n(.*?)\n```", guide, re.DOTALL):
        (folder / filename).write_text(code + "\n")
        modules[filename.removesuffix(".py")] = importlib.import_module(filename.removesuffix(".py"))
    return modules


@pytest.fixture
def example_plugins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """The CLI as CI runs it (both example plugins loaded), with documented paths taken as given.

    The plugin guide's own example plugins are registered too, since its lines use them. A page's
    paths (``export.json``, ``task/annotations.xml``) are examples that do not exist here, so a
    ``click.Path(exists=True)`` option checks everything but existence.
    """
    convert = click.Path.convert

    def convert_without_existence(self: click.Path, value: Any, param: Any, ctx: Any) -> Any:
        if self.exists:
            self = copy.copy(self)
            self.exists = False
        return convert(self, value, param, ctx)

    monkeypatch.setattr(click.Path, "convert", convert_without_existence)
    monkeypatch.setenv("TLSYNC_LOAD_PLUGINS", EXAMPLE_PLUGINS)
    monkeypatch.syspath_prepend(str(tmp_path))
    with isolated_plugins(**guide_plugins(tmp_path)):
        installed = {info.name for info in plugins.plugin_infos()}  # a broken one fails the lines that use it
        if not {"labelstudio", "cvat"} <= installed:
            pytest.fail("the example plugins must be installed (as .ci/run does): "
                        "pip install --no-deps ./plugins/tlsync-labelstudio ./plugins/tlsync-cvat")
        yield
    for name in list(sys.modules):
        if name.startswith("tlsync_") and Path(getattr(sys.modules[name], "__file__", "") or "").parent == tmp_path:
            del sys.modules[name]


def test_the_docs_show_commands_for_each_page_that_has_them():
    where = {place.split(":")[0] for place, _ in documented_commands()}
    assert "README.md" in where and "plugins/tlsync-cvat/README.md" in where
    assert len(documented_commands()) >= 20


@pytest.mark.parametrize("place,args", documented_commands(), ids=[p for p, _ in documented_commands()])
def test_documented_command_parses(example_plugins, place: str, args: list[str]):
    problem = parse_problem(args)
    assert problem is None, f"{place}: tlsync {shlex.join(args)}\n  {problem}"


@pytest.mark.parametrize("line,problem", [
    ("tlsync pull --source coco --path x --dataset d", None),
    ("tlsync pull --source coco --path x", "Missing option '--dataset'"),
    ("tlsync pull --source coco --path x --dataset d --frobnicate", "No such option '--frobnicate'"),
    ("tlsync pull --source nosuch --dataset d", "unknown source 'nosuch'"),
    ("tlsync datasets show", "Missing argument"),
    ("tlsync datasets", "NoArgsIsHelpError"),
    ("tlsync train --epochs many", "'many' is not a valid integer"),
    ("tlsync pull --source cvat --path task/annotations.xml --dataset parts --help", None),
])
def test_the_parser_check_fails_on_what_a_user_would_hit(example_plugins, line: str, problem: str | None):
    (args,) = tlsync_invocations(line)
    found = parse_problem(args)
    assert found == problem if problem is None else (found is not None and problem in found), found


def test_an_option_declared_twice_is_reported(example_plugins, monkeypatch):
    """click only warns on a duplicate option, and the user's value silently goes to one of the two.

    (Plugins are refused such an option when they register; a command's own could still repeat one.)
    """
    pull = cli.commands["pull"]
    monkeypatch.setattr(pull, "params", [*pull.params, click.Option(["--dataset"], "dataset_again")])
    assert "The parameter --dataset is used more than once" in (
        parse_problem(["pull", "--source", "synthetic", "--dataset", "d"]) or "")


def test_code_blocks_are_found_in_all_their_spellings():
    page = ("Prose that names tlsync pull is not a command.\n\n"
            "    tlsync sources        # listed\n"
            "    ROBOFLOW_API_KEY=... tlsync pull --source roboflow \\\n"
            "        --workspace acme --dataset chess\n\n"
            "```bash\n.venv/bin/pip install x && .venv/bin/tlsync quickstart\n"
            "torchrun --nproc-per-node 2 -m tlsync train --dataset chess\n```\n")
    found = [args for _, line in code_lines(page) for args in tlsync_invocations(line)]
    assert found == [["sources"], ["pull", "--source", "roboflow", "--workspace", "acme", "--dataset", "chess"],
                     ["quickstart"], ["train", "--dataset", "chess"]]


def test_ci_runs_exactly_the_readmes_test_command():
    """A newcomer runs the README's test command; CI must run that very line, not a drifted copy."""
    ci = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.strip() and not line.startswith(("#", "set ", "cd "))]
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(ci) == 1 and f"    {ci[0]}" in readme, f".ci/run runs {ci!r}, which the README does not show"
