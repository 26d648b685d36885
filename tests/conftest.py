"""Shared fixtures: every test gets its own empty store and no autoloaded plugins.

The store, the config-file isolation and ``run_cli`` come from ``tlsync.testing.fixtures``,
the fixtures plugin that third-party plugins' tests use too, so tlsync's own tests run on the
same kit it ships.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tlsync.store import Store

pytest_plugins = ["tlsync.testing.fixtures"]

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def isolated_home(tlsync_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tlsync_home`` (a temp TLSYNC_HOME, no config file) for every test, no third-party plugins,
    and an empty torch hub, so no test reads the user's data, keys or downloaded weights."""
    monkeypatch.setenv("TLSYNC_LOAD_PLUGINS", "")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tlsync_home


@pytest.fixture
def store(tlsync_store: Store) -> Store:
    return tlsync_store


@pytest.fixture
def shared_datasets() -> Path:
    """../shared/datasets; tests that need it skip with a clear message where it is absent."""
    if not SHARED.exists():
        pytest.skip(f"shared datasets not found at {SHARED}")
    return SHARED


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
