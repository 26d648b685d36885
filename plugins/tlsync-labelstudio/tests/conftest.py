"""tlsync's fixtures (tlsync_home, tlsync_store, tlsync_plugins, run_cli, loopback_server) and the BCCD data."""

from __future__ import annotations

import os
from pathlib import Path

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
