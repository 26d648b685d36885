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

pytest_plugins = ["tlsync.testing.fixtures", "ci_skips"]

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


# Memory-backed temp folders where there is room: a training test writes a checkpoint of up to
# 155 MB every epoch, and on the CI machines ext4 takes ~0.7 s to accept one where tmpfs takes
# 0.1 s. What is written and fsynced is the same; only where it lands differs.
RAM_TEMP = Path("/dev/shm")
RAM_TEMP_FREE = 8 << 30


def ram_temp_root() -> Path | None:
    """``/dev/shm`` when it is a tmpfs with ``RAM_TEMP_FREE`` bytes free, else None (use the default)."""
    try:
        mounts = Path("/proc/mounts").read_text().split("\n")
        stats = os.statvfs(RAM_TEMP)
    except OSError:
        return None
    is_tmpfs = any(line.split()[1:3] == [str(RAM_TEMP), "tmpfs"] for line in mounts if line.strip())
    return RAM_TEMP if is_tmpfs and stats.f_bavail * stats.f_frsize >= RAM_TEMP_FREE else None


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    if not config.option.basetemp and "PYTEST_DEBUG_TEMPROOT" not in os.environ and (root := ram_temp_root()):
        os.environ["PYTEST_DEBUG_TEMPROOT"] = str(root)  # read when the first tmp_path is made
