"""tlsync's fixtures (tlsync_home, tlsync_store, tlsync_plugins, run_cli, loopback_server) and the BCCD data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import ls_server
import pytest

pytest_plugins = ["tlsync.testing.fixtures"]

# The tlsync repository keeps real datasets in ../shared/datasets beside its checkout.
SHARED = Path(os.environ.get("TLSYNC_SHARED_DATASETS", Path(__file__).resolve().parents[4] / "shared" / "datasets"))


@pytest.fixture
def bccd() -> Path:
    """The BCCD blood-cell dataset in Pascal VOC layout (364 images, 640x480)."""
    root = SHARED / "bccd-voc" / "BCCD"
    if not root.is_dir():
        pytest.skip(f"shared dataset not found at {root} (set TLSYNC_SHARED_DATASETS)")
    return root


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ls_server.LabelStudio]:
    """A real Label Studio (one for the whole session), with a signed-up user's PAT and legacy token.

    Skipped with the install command where ``.lsvenv`` lacks it; under CI (``CI=true``) that is a failure.
    """
    why = ls_server.missing()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    server = ls_server.start(tmp_path_factory.mktemp("label-studio"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tiny_run(trained_home: Path) -> Path:
    """The session's trained parent (``tlsync.testing.fixtures``: 1 epoch on 4 synthetic shapes), in a
    store of this module's own (``TLSYNC_HOME`` is its ``parent.parent``), for select and serve."""
    return trained_home / "runs" / "shapes-1"
