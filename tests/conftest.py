"""Shared fixtures: every test gets its own empty store and no autoloaded plugins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TLSYNC_HOME in a temp dir, no third-party plugins, no config file, offline torch hub."""
    home = tmp_path / "tlsync-home"
    monkeypatch.setenv("TLSYNC_HOME", str(home))
    monkeypatch.setenv("TLSYNC_LOAD_PLUGINS", "")
    monkeypatch.setenv("TLSYNC_CONFIG", str(tmp_path / "no-config.json"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("TLSYNC_DEBUG", raising=False)
    return home


@pytest.fixture
def store(isolated_home: Path):
    from tlsync.store import Store

    return Store(isolated_home)


@pytest.fixture
def shared_datasets() -> Path:
    """../shared/datasets; tests that need it skip with a clear message where it is absent."""
    if not SHARED.exists():
        pytest.skip(f"shared datasets not found at {SHARED}")
    return SHARED


@pytest.fixture
def run_cli():
    """Run the CLI in-process like a user would; returns (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from tlsync import cli

    class Entry:  # CliRunner calls .main(); route through tlsync.cli.main for its error handling
        name = "tlsync"

        def main(self, args, prog_name=None, **_):
            cli.main(list(args))

    def run(*args: str, input: str | None = None):
        """-> click Result with .exit_code, .stdout, .stderr"""
        return CliRunner().invoke(Entry(), [str(a) for a in args], input=input, catch_exceptions=False)

    return run


def pytest_configure(config):
    os.environ.setdefault("OMP_NUM_THREADS", "2")
