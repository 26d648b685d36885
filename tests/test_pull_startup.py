"""What a pull's start-up loads, and that its fetch threads degrade instead of hanging."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

PULL = ["pull", "--source", "synthetic", "--items", "3", "--size", "32", "--dataset", "shapes"]
CHECK = ("import sys\n"
         "from tlsync.cli import main\n"
         f"main({PULL!r})\n"
         "print(sorted(m for m in ('rich', 'yaml', 'defusedxml') if m in sys.modules))\n")


def _pull_in_child(home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """A pull in a fresh interpreter, stderr a pipe (not a terminal), as in CI or a script."""
    clean = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    return subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120,
                          env={**clean, "TLSYNC_HOME": str(home), "TLSYNC_LOAD_PLUGINS": "", **env})


def test_a_pull_without_a_terminal_loads_no_progress_bar_and_no_unused_parsers(tmp_path: Path):
    """Start-up is most of a small pull: rich (no bar to draw), YAML and XML parsers (no YOLO
    or VOC export to read) are left unloaded."""
    run = _pull_in_child(tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "new version shapes@1" in run.stdout
    assert run.stdout.strip().splitlines()[-1] == "[]"
    assert "\x1b[" not in run.stderr


def test_forced_colour_still_draws_the_progress_bar(tmp_path: Path):
    """FORCE_COLOR makes rich treat a pipe as a terminal; the shortcut must leave that to rich."""
    run = _pull_in_child(tmp_path, FORCE_COLOR="1")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "'rich'" in run.stdout.strip().splitlines()[-1]
    assert "pull synthetic -> shapes" in run.stderr


def test_a_pull_finishes_when_the_os_refuses_more_fetch_threads(run_cli, store, monkeypatch):
    """Under a thread limit (ulimit -u, a container's pids cap) the threads that did start,
    and the one that started them, share the work: the pull completes, it does not hang."""
    real_start = threading.Thread.start
    started: list[str] = []

    def start(self: threading.Thread) -> None:
        if self.name.startswith("tlsync-fetch_") and started:
            raise RuntimeError("can't start new thread")
        if self.name.startswith("tlsync-fetch_"):
            started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    result = run_cli("pull", "--source", "synthetic", "--items", "12", "--size", "32", "--concurrency", "8",
                     "--dataset", "limited")
    assert result.exit_code == 0, result.stderr
    assert "12 items" in result.stdout and "new version limited@1" in result.stdout
    assert started == ["tlsync-fetch_0"]
    assert len(list(store.open("limited").items())) == 12


def test_one_slow_image_does_not_hold_up_the_downloads_behind_it(run_cli, store, monkeypatch):
    """Items are written in the source's order, but the fetches behind a slow one go on: with 2 threads,
    the first image is released only once 20 later ones are in the store (the window is 16 per thread).
    Had the pull stopped starting fetches while it waited, it would have waited out the 20 s."""
    from tlsync.connectors.synthetic import SyntheticSource

    real_fetch = SyntheticSource.fetch
    done, lock, twenty = [0], threading.Lock(), threading.Event()
    waited: list[bool] = []

    def fetch(self: SyntheticSource, item, out) -> None:
        if item.id.endswith("-000000"):
            waited.append(twenty.wait(20))
        real_fetch(self, item, out)
        with lock:
            done[0] += 1
            if done[0] >= 20:
                twenty.set()

    monkeypatch.setattr(SyntheticSource, "fetch", fetch)
    result = run_cli("pull", "--source", "synthetic", "--items", "24", "--size", "32", "--concurrency", "2",
                     "--dataset", "patient")
    assert result.exit_code == 0, result.stderr
    assert waited == [True]
    assert [item.id for item in store.open("patient").items()][:2] == ["synthetic-0-000000", "synthetic-0-000001"]
