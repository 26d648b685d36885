"""pytest fixtures for plugin tests. Enable them in the plugin's ``conftest.py``::

    pytest_plugins = ["tlsync.testing.fixtures"]

Every fixture keeps the test away from the user's real data and keys: the store lives in
a temp folder and the config file (where API keys may sit) is pointed at one that does
not exist. ``trained_parent``/``trained_home`` train a small detector once per session.
"""

from __future__ import annotations

import shutil
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


PARENT_RUN = "shapes-1"


@pytest.fixture(scope="session")
def trained_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``<home>/runs/shapes-1``: one small detector trained once for the whole session.

    Training is the slow part of every test that needs *a trained run* (select, serve, Label
    Studio's select), so they share this one: 1 epoch of MobileNet-320 from scratch on 4 synthetic
    64 px shapes (``shapes@1``, all in train); at ``--conf 0.2`` it still finds boxes on new images.
    Nothing may write into it: a test that changes its store or run takes ``trained_home``, a copy
    of its own. A test that only needs *a* checkpoint saves an untrained model instead
    (``build_model`` + ``save_checkpoint``).
    """
    pytest.importorskip("torch")
    home = tmp_path_factory.mktemp("trained-parent")
    with pytest.MonkeyPatch.context() as mp, isolated_plugins():
        mp.setenv("TLSYNC_HOME", str(home))
        mp.setenv("TLSYNC_LOAD_PLUGINS", "")
        mp.setenv("TLSYNC_CONFIG", str(home / "no-tlsync-config.json"))
        mp.setenv("TORCH_HOME", str(home / "torch-home"))
        mp.chdir(home)
        pulled = _run_cli("pull", "--source", "synthetic", "--dataset", "shapes", "--items", "4", "--size", "64",
                          "--split-ratios", "1,0,0")
        assert pulled.exit_code == 0, pulled.stderr
        trained = _run_cli("train", "--dataset", "shapes", "--model", "fasterrcnn_mobilenet_v3_large_320_fpn",
                           "--weights", "none", "--img-size", "64", "--epochs", "1", "--batch-size", "2",
                           "--workers", "0", "--device", "cpu", "--name", PARENT_RUN)
        assert trained.exit_code == 0, trained.stderr
    return home / "runs" / PARENT_RUN


@pytest.fixture(scope="module")
def trained_home(trained_parent: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of ``trained_parent``'s ``TLSYNC_HOME`` (its store and ``runs/shapes-1``) for this module.

    Copied, not shared: one module's pools, selections and datasets must not turn up in another's
    store (a pool pulled twice becomes ``@2``), whichever order the modules run in.
    """
    home = tmp_path_factory.mktemp("trained-home") / "home"
    shutil.copytree(trained_parent.parent.parent, home, symlinks=True)
    return home
