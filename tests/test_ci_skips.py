"""``tests/ci_skips.py``: a module that skips itself whole is a failure under CI=true, a skip otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SKIPPING = """
import pytest

pytest.importorskip("tlsync_no_such_module")


def test_never_runs():
    pass
"""


def run_pytest(folder: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci is not None else {})
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "ci_skips", "-p", "no:cacheprovider",
                           "--rootdir", str(folder), str(folder / "test_skipping.py")],
                          capture_output=True, text=True, env=env, cwd=folder, timeout=120)


@pytest.mark.parametrize("ci, code, says", [
    ("true", 2, "the whole module was skipped under CI=true (Skipped: could not import 'tlsync_no_such_module'"),
    (None, 5, "1 skipped"),  # 5: pytest's "no tests ran", all a lone skipped module gives
])
def test_a_module_skipped_whole_fails_only_in_ci(tmp_path: Path, ci: str | None, code: int, says: str) -> None:
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    result = run_pytest(tmp_path, ci)
    assert result.returncode == code, result.stdout + result.stderr
    assert says in result.stdout, result.stdout
