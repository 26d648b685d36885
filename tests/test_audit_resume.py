"""``tlsync audit`` killed with SIGKILL between its folds, then resumed: the finished fold is kept.

A real process is started and really killed (no recreated state): the audit must have left
enough on disk for ``--resume`` to carry on (``audit.json`` from before the first fold), must
not have published a result (no ``suspects.jsonl``, page or contact sheet; ``finished`` false),
and the resumed audit must keep fold 1 untouched (same checkpoint and predictions files) and
train only fold 2.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tlsync.connectors.synthetic import SyntheticSource
from tlsync.pull import pull
from tlsync.store import Store

TINY = ("--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--weights", "none", "--img-size", "64", "--epochs", "1",
        "--batch-size", "2", "--workers", "0", "--device", "cpu", "--precise-bn-batches", "0")
RESULTS = ("suspects.jsonl", "audit.html", "audit.png")


def fold_finished(folder: Path, fold: int) -> bool:
    """Whether ``audit.json`` records ``fold`` as finished (what --resume keeps)."""
    try:
        data = json.loads((folder / "audit.json").read_text())
    except (OSError, ValueError):
        return False
    return any(r["fold"] == fold for r in data.get("fold_runs", []))


def kill_after_first_fold(folder: Path, tmp_path: Path) -> None:
    """Start the audit as a user would and SIGKILL it as soon as fold 1 is recorded finished."""
    args = ["audit", "--dataset", "shapes", "--folds", "2", "--conf", "0.05", *TINY]
    log = tmp_path / "killed.stderr"
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tlsync", *args], stdout=subprocess.DEVNULL, stderr=err,
                                cwd=tmp_path, env=dict(os.environ))
        try:
            deadline = time.monotonic() + 300
            saw_plan_in_fold_1 = False
            while not fold_finished(folder, 1) and proc.poll() is None and time.monotonic() < deadline:
                if (folder / "fold-1").is_dir() and not saw_plan_in_fold_1:
                    # a kill during the first fold must be resumable too: the plan is on disk before it starts
                    saw_plan_in_fold_1 = (folder / "audit.json").is_file()
                    assert saw_plan_in_fold_1, "fold 1 started before audit.json was written"
                time.sleep(0.02)
            still_running = proc.poll() is None
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.wait()
    stderr = log.read_text()
    assert fold_finished(folder, 1), stderr
    assert still_running, f"the audit finished before it could be killed between folds:\n{stderr}"


def test_an_audit_killed_after_its_first_fold_resumes_and_keeps_it(store: Store, run_cli, tmp_path: Path,
                                                                   monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    pull(store, SyntheticSource(), {"items": 12, "size": 64, "seed": 0}, "shapes", split_ratios=(0.8, 0.2, 0))
    folder = tmp_path / "audits" / "shapes-1"
    kill_after_first_fold(folder, tmp_path)

    # nothing published by the killed audit: no results, and its audit.json says it is not finished
    assert not [name for name in RESULTS if (folder / name).exists()]
    killed = json.loads((folder / "audit.json").read_text())
    assert killed["finished"] is False and [r["fold"] for r in killed["fold_runs"]] == [1]
    assert not (folder / "predictions-fold-2.jsonl").exists()
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no half-written temp file
    assert not (tmp_path / "audits" / "shapes-2").exists()
    kept = {p: p.stat().st_mtime_ns for p in (folder / "predictions-fold-1.jsonl",
                                              folder / "fold-1" / "weights" / "last.pt")}
    assert all(p.is_file() for p in kept)

    refused = run_cli("audit", "--resume", folder, "--epochs", "3")  # the audit's own settings, not new ones
    assert refused.exit_code == 1 and "--epochs" in refused.stderr

    result = run_cli("audit", "--resume", folder)
    assert result.exit_code == 0, result.stderr
    assert "1 of 2 folds already finished, kept" in result.stderr
    assert "audit fold 1 of 2:" not in result.stderr and "audit fold 2 of 2: train on" in result.stderr
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # fold 1 not retrained, not predicted again
    summary = json.loads((folder / "audit.json").read_text())
    assert summary["finished"] and [r["fold"] for r in summary["fold_runs"]] == [1, 2]
    assert (folder / "fold-2" / "weights" / "last.pt").is_file()
    audited = {i.id for i in store.open("shapes").items() if i.split in ("train", "val")}
    predicted = [json.loads(line)["id"] for n in (1, 2)
                 for line in (folder / f"predictions-fold-{n}.jsonl").read_text().splitlines()]
    assert sorted(predicted) == sorted(audited)  # every image predicted once across the kept and the new fold
    rows = (folder / "suspects.jsonl").read_text().splitlines()
    assert summary["suspects"] == len(rows) and (folder / "audit.html").is_file() and (folder / "audit.png").is_file()
    assert str(folder / "suspects.jsonl") in result.stdout
