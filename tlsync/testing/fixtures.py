"""pytest fixtures for plugin tests. Enable them in the plugin's ``conftest.py``::

    pytest_plugins = ["tlsync.testing.fixtures"]

Every fixture keeps the test away from the user's real data and keys: the store lives in
a temp folder and the config file (where API keys may sit) is pointed at one that does
not exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..store import Store
from . import LoopbackServer, isolated_plugins
from . import run_cli as _run_cli


@pytest.fixture
def tlsync_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty ``TLSYNC_HOME`` for this test, and no config file with real keys."""
    home = tmp_path / "tlsync-home"
    monkeypatch.setenv("TLSYNC_HOME", str(home))
    monkeypatch.setenv("TLSYNC_CONFIG", str(tmp_path / "no-tlsync-config.json"))
    monkeypatch.delenv("TLSYNC_DEBUG", raising=False)
    return home


@pytest.fixture
def tlsync_store(tlsync_home: Path) -> Store:
    """The store in ``tlsync_home``: pass it to ``check_source(..., store=...)`` or ``pull``."""
    return Store(tlsync_home)


@pytest.fixture
def tlsync_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., None]]:
    """Only the built-ins plus what the test registers: ``tlsync_plugins(my_plugin_module)``.

    Installed plugins stay out (``TLSYNC_LOAD_PLUGINS`` is emptied), so the test sees the
    same sources on every machine; the loader forgets everything afterwards.
    """
    monkeypatch.setenv("TLSYNC_LOAD_PLUGINS", "")
    with isolated_plugins() as register:
        yield register


@pytest.fixture
def run_cli(tlsync_home: Path) -> Callable[..., Any]:
    """``run_cli("pull", "--source", ...)``: the ``tlsync`` command in-process, on ``tlsync_home``.

    Returns a click ``Result`` with ``exit_code``, ``stdout`` and ``stderr``.
    """
    return _run_cli


@pytest.fixture
def loopback_server() -> Iterator[LoopbackServer]:
    """A running HTTP server on 127.0.0.1: add routes with ``@loopback_server.route(...)``.

    Its ``url``, request ``log`` and ``requests(method, prefix)`` show what a source sent.
    For latency or injected faults, construct ``LoopbackServer(latency=..., faults=Faults(...))``.
    """
    with LoopbackServer() as server:
        yield server
