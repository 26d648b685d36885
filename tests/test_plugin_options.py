"""A plugin option that would shadow its command's own is refused when the plugin registers.

The Label Studio target once declared ``--project``, which is also ``tlsync select``'s folder of
selections: click kept one, the selection went into ``./3`` and the target got project 0. The rule
covers every host: sources join ``pull``, targets' ``options`` join ``push`` and their
``selection_options`` join ``select``; a clash by flag or by parameter name is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import click
import pytest

from tlsync import hookimpl, plugins
from tlsync.plugin_options import command_options
from tlsync.sources import Source
from tlsync.targets import Target
from tlsync.testing import isolated_plugins


class Pusher(Target):
    name = "pusher"
    description = "a target whose options the tests set"

    def __init__(self, options: list[click.Option], selection_options: list[click.Option]):
        self.options, self.selection_options = options, selection_options  # type: ignore[misc]

    def push(self, predictions: Iterator[Any], run: dict[str, Any], **options: Any) -> dict[str, Any]:
        return {}


class Puller(Source):
    name = "puller"
    description = "a source whose options the tests set"

    def __init__(self, options: list[click.Option]):
        self.options = options  # type: ignore[misc]

    def items(self, ctx: Any, **options: Any) -> Iterator[Any]:
        return iter(())


def plugin(name: str, **hooks: Any) -> Any:
    """A plugin object named ``name`` whose attributes are hook implementations, as a module's are."""
    return type(name, (), {hook: staticmethod(hookimpl(fn)) for hook, fn in hooks.items()})()


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("TLSYNC_LOAD_PLUGINS", "")
    with isolated_plugins() as register:
        yield register


def test_the_commands_own_options_are_read_without_importing_torch() -> None:
    select = {opt for param in command_options("select") for opt in param.opts}
    push = {param.name for param in command_options("push")}
    pull = {opt for param in command_options("pull") for opt in param.opts}
    assert {"--project", "--run", "--budget", "--target", "--help"} <= select
    assert {"target_name", "run", "dataset", "conf"} <= push
    assert {"--source", "--dataset", "--on-error", "--help"} <= pull


@pytest.mark.parametrize("options, selection_options, message", [
    ([], [click.Option(["--project"], type=int)],
     "target 'pusher': option --project clashes with `tlsync select`'s own "
     "--project (parameter 'project'); the plugin must rename it (e.g. --pusher-project)"),
    ([click.Option(["--where", "run"])], [],
     "target 'pusher': option --where clashes with `tlsync push`'s own --run (parameter 'run')"),
    ([click.Option(["-h", "--help-me"])], [], None),
])
def test_a_target_option_that_shadows_its_commands_is_refused_at_registration(fresh, run_cli, options,
                                                                               selection_options, message):
    fresh(plugin("clash", tlsync_register_targets=lambda register: register(Pusher(options, selection_options))))
    listed = run_cli("plugins").stdout
    if message is None:
        assert "clash (?): tlsync_register_targets" in listed and "pusher" in plugins.get_targets()
        return
    assert f"clash (?): BROKEN: tlsync_register_targets raised TlsyncError: plugin 'clash': {message}" in listed
    assert "pusher" not in plugins.get_targets()


def test_a_source_option_that_shadows_pull_is_refused_and_named(fresh, run_cli):
    fresh(plugin("grabby", tlsync_register_sources=lambda register: register(
        Puller([click.Option(["--on-error/--no-on-error"])]))))
    listed = run_cli("sources").stdout
    assert "BROKEN grabby: tlsync_register_sources raised TlsyncError: plugin 'grabby': source 'puller': " \
           "option --on-error clashes with `tlsync pull`'s own --on-error" in listed
    assert "puller:" not in listed
