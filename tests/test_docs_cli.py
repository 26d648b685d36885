"""docs/cli.md is the CLI's own ``--help``, regenerated here: a changed option fails until the file is.

The reference is written by ``python -m tlsync.docs_cli`` (as simonw/llm's docs/help.md), with the
example plugins installed as .ci/run installs them, so a new command, option or help text that is
not in the file fails this test with the lines that differ.
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path

import pytest
import tomllib

from tlsync import docs_cli

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "cli.md"


def plugin_modules() -> list[tuple[str, Path]]:
    """(module, its file in plugins/) for every module the example plugins install."""
    found = []
    for pyproject in sorted((ROOT / "plugins").glob("*/pyproject.toml")):
        modules = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["setuptools"]["py-modules"]
        found += [(module, pyproject.parent / f"{module}.py") for module in modules]
    return found


@pytest.mark.parametrize("module,source", plugin_modules(), ids=[m for m, _ in plugin_modules()])
def test_the_installed_example_plugins_are_this_checkouts(module: str, source: Path):
    """The reference documents plugins/ as it is here; a stale install would document an older one."""
    installed = Path(importlib.import_module(module).__file__ or "")
    folder = source.parent.relative_to(ROOT)
    assert installed.read_bytes() == source.read_bytes(), (
        f"{installed} differs from {source.relative_to(ROOT)}: pip install --no-deps ./{folder}")


@pytest.fixture(scope="module")
def generated() -> str:
    """The reference as the CLI prints it now (generated once: it imports every command)."""
    return docs_cli.generate()


def test_cli_reference_matches_every_commands_help(generated: str):
    current = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    diff = "".join(difflib.unified_diff(current.splitlines(True), generated.splitlines(True),
                                        "docs/cli.md", "tlsync --help (now)", n=1))
    assert not diff, f"docs/cli.md is out of step with the CLI; run python -m tlsync.docs_cli\n{diff[:4000]}"


def test_the_reference_covers_every_command_and_each_plugins_options(generated: str):
    """What the file must hold, so a generator that dropped a section would fail too."""
    text = generated
    for heading in ("## tlsync --help", "### tlsync datasets show --help", "## tlsync train --help",
                    "### tlsync pull --source cvat --help", "### tlsync pull --source labelstudio --help",
                    "### tlsync push --target nucleus --help", "### tlsync select --target labelstudio --help"):
        assert f"\n{heading}\n" in text, heading
    cvat = text.split("### tlsync pull --source cvat --help")[1].split("\n### ")[0]
    assert "--images DIRECTORY" in cvat and "--dataset TEXT" in cvat
