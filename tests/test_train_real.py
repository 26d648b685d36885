"""The whole path on real data: a Roboflow YOLO export pulled, trained on, evaluated, reported.

thermal-dogs-people-yolo (../shared/datasets) has 142 train, 41 val and 20 test images,
18 of them true negatives. One epoch at 64 px with few sampled proposals keeps this to
seconds of compute; the point is that real files (JPEGs, empty label files, two classes)
flow through every stage, including a data-loading worker process.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

PNGS = {"training.png", "pr_curve.png", "per_class_ap.png", "confusion_matrix.png", "val_images.png"}


def test_thermal_pull_train_eval_report(run_cli, shared_datasets: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli("pull", "--source", "roboflow", "--path", shared_datasets / "thermal-dogs-people-yolo",
                     "--dataset", "thermal")
    assert result.exit_code == 0, result.stderr

    result = run_cli("train", "--dataset", "thermal", "--model", "fasterrcnn_efficientnet_lite0_fpn",
                     "--weights", "imagenet", "--img-size", "64", "--batch-size", "8", "--epochs", "1",
                     "--rois-per-image", "32", "--workers", "1", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    run = Path("runs/thermal-1")
    assert f"run: {run}" in result.stdout
    assert "1/1" in result.stderr and "best epoch 1: val mAP50-95" in result.stderr
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == "thermal@1" and config["categories"] == ["dog", "person"]
    val = json.loads((run / "eval" / "metrics.json").read_text())
    assert (val["split"], val["images"]) == ("val", 41)

    result = run_cli("eval", "--run", run, "--device", "cpu")  # the test split, replacing the val eval
    assert result.exit_code == 0, result.stderr
    test = json.loads((run / "eval" / "metrics.json").read_text())
    assert (test["split"], test["images"]) == ("test", 20)

    html = (run / "report.html").read_text()
    assert set(re.findall(r"<img src='([^']+)'", html)) == PNGS
    assert all((run / png).stat().st_size > 0 for png in PNGS)
