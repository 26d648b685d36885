"""What a person sees on a real terminal, and in a log when there is none.

Each terminal test runs ``tlsync`` under a pseudo-terminal (``tests/pty_screen.py``) and reads
the emulated screen: a progress bar drawn as a bar, the summary after it, no control code
shown as ``\\x1b`` text, and a hostile class name still shown escaped rather than obeyed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pty_screen import run_on_terminal

from tlsync.testing import write_image

EVIL = "\x1b]0;owned\x07\x1b[2Jcat\u202e"


def assert_no_code_as_text(text: str) -> None:
    for code in ("\\x1b", "\\x0d", "\\x07", "\x1b", "\r"):
        assert code not in text, text


def test_a_pull_draws_a_bar_and_its_summary(tmp_path: Path):
    screen = run_on_terminal("pull", "--source", "synthetic", "--items", "40", "--size", "32", "--dataset", "shapes",
                             home=tmp_path)
    assert screen.exit_code == 0, screen.text
    bar = next(line for line in screen.lines if line.startswith("pull synthetic -> shapes "))
    assert "━━━━━━━━━━" in bar and "40/?" in bar and "items/s" in bar
    assert screen.lines[-2].startswith("40 items, ") and screen.lines[-1] == "new version shapes@1"
    assert_no_code_as_text(screen.text)
    assert b"\x1b[" in screen.raw  # the bar's colours reached the terminal as codes, not as text


def coco_export(folder: Path, categories: list[str]) -> Path:
    write_image(folder / "a.png")
    annotations = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 20]}]
    (folder / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}], "annotations": annotations,
        "categories": [{"id": n, "name": name} for n, name in enumerate(categories, 1)]}))
    return folder


def test_a_hostile_class_name_is_shown_escaped_on_a_terminal(tmp_path: Path):
    folder = coco_export(tmp_path / "export", [EVIL])
    pulled = run_on_terminal("pull", "--source", "coco", "--path", folder, "--dataset", "d", home=tmp_path / "home")
    assert pulled.exit_code == 0, pulled.text
    assert "━━━━━━━━━━" in pulled.text and "new version d@1" in pulled.text

    shown = run_on_terminal("datasets", "show", "d", home=tmp_path / "home")
    assert shown.exit_code == 0, shown.text
    assert shown.lines[0].startswith("d@1  (coco, created ")  # \x1b[2J did not clear the screen
    assert any(line.strip().startswith("\\x1b]0;owned\\x07\\x1b[2Jcat\\u202e") for line in shown.lines)
    assert shown.title == ""  # \x1b]0;...\x07 did not retitle the window
    assert b"\x1b]0;" not in shown.raw and "\u202e".encode() not in shown.raw

    coco_export(folder, [EVIL, EVIL])  # a second class of the same name: an error quoting it
    failed = run_on_terminal("pull", "--source", "coco", "--path", folder, "--dataset", "d", home=tmp_path / "home")
    assert failed.exit_code == 1
    assert "\\x1b]0;owned\\x07" in failed.text and failed.title == ""


def test_without_a_terminal_progress_is_plain_lines_at_a_bounded_rate(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    run = subprocess.run([sys.executable, "-m", "tlsync", "pull", "--source", "synthetic", "--items", "300",
                          "--size", "48", "--concurrency", "1", "--dataset", "shapes"],
                         capture_output=True, text=True, timeout=120,
                         env={**env, "TLSYNC_HOME": str(tmp_path), "TLSYNC_LOAD_PLUGINS": "",
                              "TLSYNC_PROGRESS_EVERY": "0.2"})
    assert run.returncode == 0, run.stderr
    lines = run.stderr.splitlines()
    assert lines, "a pull of several tenths of a second must say how it goes"
    for line in lines:
        assert line.startswith("pull synthetic -> shapes: ") and " items, " in line and " items/s, " in line, line
    assert_no_code_as_text(run.stderr)
    seconds = float(run.stdout.split(" in ")[1].split("s")[0])
    assert len(lines) <= seconds / 0.2 + 1, (seconds, lines)


@pytest.mark.parametrize("value", ["soon", "-1", "nan"])
def test_a_bad_progress_interval_is_one_line_naming_the_variable(value: str, tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    run = subprocess.run([sys.executable, "-m", "tlsync", "pull", "--source", "synthetic", "--items", "3",
                          "--dataset", "shapes"], capture_output=True, text=True, timeout=120,
                         env={**env, "TLSYNC_HOME": str(tmp_path), "TLSYNC_PROGRESS_EVERY": value})
    assert run.returncode == 1
    assert run.stderr.strip() == (f"Error: TLSYNC_PROGRESS_EVERY={value!r}: give the seconds between progress "
                                  "lines, such as 30")


def test_train_draws_its_epoch_bar_and_prints_the_run_on_a_terminal(tmp_path: Path):
    home = tmp_path / "home"
    pulled = run_on_terminal("pull", "--source", "synthetic", "--items", "12", "--size", "64", "--split-ratios",
                             "0.6,0.4,0", "--dataset", "shapes", home=home)
    assert pulled.exit_code == 0, pulled.text
    screen = run_on_terminal("train", "--dataset", "shapes", "--model", "fasterrcnn_efficientnet_lite0_fpn",
                             "--weights", "imagenet", "--img-size", "64", "--batch-size", "2", "--workers", "0",
                             "--device", "cpu", "--epochs", "1", "--name", "tty", home=home, cwd=tmp_path)
    assert screen.exit_code == 0, screen.text
    bar = next(line for line in screen.lines if line.startswith("epoch 1/1 classifier "))
    assert "━━━━━━━━━━" in bar and "img/s" in bar
    assert "run: runs/tty" in screen.lines and "report: runs/tty/report.html" in screen.lines
    assert_no_code_as_text(screen.text)


def test_predict_draws_its_bar_and_prints_its_summary_on_a_terminal(tmp_path: Path):
    import torch

    from tlsync.trainer import build_model, save_checkpoint

    images = tmp_path / "images"
    for n in range(6):
        write_image(images / f"{n}.png", seed=n)
    model_name, categories = "fasterrcnn_mobilenet_v3_large_320_fpn", ["circle", "square"]
    config = {"model": model_name, "img_size": 96, "weights": "none", "categories": categories, "device": "cpu"}
    torch.manual_seed(0)
    run = tmp_path / "runs" / "untrained"
    save_checkpoint(run / "weights" / "best.pt", build_model(model_name, 2, "none", 96), categories, config, epoch=1)
    (run / "config.json").write_text(json.dumps(config))
    screen = run_on_terminal("predict", "--run", run, images, "--out", tmp_path / "preds", "--device", "cpu",
                             home=tmp_path / "home")
    assert screen.exit_code == 0, screen.text
    bar = next(line for line in screen.lines if line.startswith("predict "))
    assert "━━━━━━━━━━" in bar and "6/6" in bar and "images/s" in bar
    assert any(line.startswith("6 images, ") and " boxes at conf >= 0.25 " in line for line in screen.lines)
    assert_no_code_as_text(screen.text)
