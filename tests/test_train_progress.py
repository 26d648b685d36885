"""A training run that nobody watches on a terminal still says how it goes, and one stopped early
says what it kept and how to carry on.

``tlsync train`` runs here as a separate program with stderr a pipe, as under CI, nohup or a
notebook: no bar is drawn there, so progress must come as plain lines, at a bounded rate.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

MODEL = ("--model", "fasterrcnn_efficientnet_lite0_fpn", "--weights", "imagenet")
SMALL = ("--img-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu")
VAL = re.compile(r"^epoch 1/1 val: (\d+)/(\d+) img, [\d.,]+ img/s, elapsed \d:\d\d:\d\d(, ETA \d:\d\d:\d\d)?$")
LINE = re.compile(r"^epoch (\d)/1 classifier [\d.]+ .*: step (\d+)/(\d+), (\d+)/(\d+) img, [\d.,]+ img/s, "
                  r"elapsed \d:\d\d:\d\d(, ETA \d:\d\d:\d\d)?$")


@pytest.fixture
def workspace(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """12 synthetic images (10 train, 2 val) in a fresh store; the environment a child ``tlsync`` runs in."""
    monkeypatch.chdir(tmp_path)
    pulled = run_cli("pull", "--source", "synthetic", "--dataset", "shapes", "--items", 12, "--size", 64,
                     "--split-ratios", "0.5,0.5,0")
    assert pulled.exit_code == 0, pulled.stderr
    clean = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    return {**clean, "TLSYNC_PROGRESS_EVERY": "0"}


def tlsync(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """``tlsync`` as a terminal starts it: a suite run in the background (``cmd &``) ignores SIGINT, and a
    child would inherit that, so Ctrl-C is given back its default first."""
    return subprocess.Popen([sys.executable, "-m", "tlsync", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_without_a_terminal_each_epoch_prints_step_rate_and_eta_lines(workspace: dict[str, str]):
    proc = tlsync(workspace, "train", "--dataset", "shapes", *MODEL, *SMALL, "--epochs", "1", "--name", "plain")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("epoch ") and ": step " in line]
    val = [VAL.match(line) for line in err.splitlines() if line.startswith("epoch 1/1 val")]
    assert val and all(val) and [int(m.group(1)) for m in val if m] == [1, 2], val  # the val phase speaks too
    matched = [LINE.match(line) for line in lines]
    assert lines and all(matched), lines
    steps = [m for m in matched if m]
    assert [int(m.group(2)) for m in steps] == list(range(1, int(steps[0].group(3)) + 1))  # every step, in order
    assert steps[-1].group(4) == steps[-1].group(5)  # the last step has seen every train image
    assert all(m and m.group(6) for m in matched if m and m.group(4) != m.group(5))  # an ETA until the end
    assert "\x1b" not in err and "\r" not in err


def test_a_run_stopped_before_its_first_checkpoint_says_so_and_resume_trains_it_there(workspace: dict[str, str],
                                                                                       run_cli):
    run = Path("runs/early")
    proc = tlsync(workspace, "train", "--dataset", "shapes", *MODEL, *SMALL, "--epochs", "1", "--name", "early")
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the first step's progress line: the epoch is under way, no checkpoint yet
        seen.append(line)
        if line.startswith("epoch 1/1 ") and ": step 1/" in line:
            break
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, rest = proc.communicate(timeout=120)
    err = "".join(seen) + rest
    assert proc.returncode == 130, err[-3000:]
    assert not (run / "weights" / "last.pt").exists(), "the interrupt came too late for this test"
    assert (f"stopped before the first checkpoint: {run} holds no weights yet; "
            f"tlsync train --resume {run} trains it again there from epoch 1") in err

    again = run_cli("train", "--dataset", "shapes", *MODEL, *SMALL, "--name", "early")
    assert again.exit_code == 1
    assert again.stderr.strip().splitlines()[-1] == (
        f"Error: run directory {run} already exists and stopped before its first checkpoint; "
        f"tlsync train --resume {run} trains it again there, or choose another --name")

    resumed = run_cli("train", "--resume", run)
    assert resumed.exit_code == 0, resumed.stderr[-3000:]
    assert (f"{run} stopped before its first checkpoint: training it again from epoch 1 with its config.json"
            in resumed.stderr)
    with open(run / "metrics.csv", newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1"]
    assert (run / "weights" / "last.pt").is_file() and (run / "report.html").is_file()


def test_sigterm_from_a_scheduler_stops_a_run_as_ctrl_c_does(workspace: dict[str, str]):
    """SLURM, ``docker stop`` and ``kill`` send SIGTERM: the run says what it kept, exit 143."""
    run = Path("runs/termed")
    proc = tlsync(workspace, "train", "--dataset", "shapes", *MODEL, *SMALL, "--epochs", "1", "--name", "termed")
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("epoch 1/1 ") and ": step 1/" in line:
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    err = "".join(seen) + rest
    assert proc.returncode == 143, err[-3000:]
    assert f"tlsync train --resume {run} trains it again there from epoch 1" in err
    assert err.strip().splitlines()[-1] == "Terminated."
    assert "Traceback" not in err
