"""Under CI (``CI=true``) a whole test module skipped is a failure, not a skip (a pytest plugin).

``pytest.importorskip`` at module level hides every test of a file behind one "s" when a test
dependency is missing; on a developer's machine that is a convenience, in CI it would let a
whole area (ONNX export, the trackers) go untested with a green run. ``tests/conftest.py``
loads this; ``tests/test_ci_skips.py`` runs it on a module that skips itself.
"""

from __future__ import annotations

import os
from collections.abc import Generator

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
        collector: pytest.Collector) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """A module-level skip becomes a collection failure naming the module and the reason, under CI=true."""
    report = yield
    if os.environ.get("CI", "").lower() == "true" and report.skipped and isinstance(collector, pytest.Module):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{collector.nodeid}: the whole module was skipped under CI=true ({reason})"
    return report
