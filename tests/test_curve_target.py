"""``tlsync curve --target-map``: the question survives ``--resume``, and an answer far beyond
the data is called out of reach rather than printed as a 40-digit number of images.

Training is replaced by a stand-in that scores each point on a known, slowly rising curve
(mAP = 1 - 0.75 n^-0.02: it would reach 0.6 only at ~10^13 images), so the CLI, curve.json and
the summary are what is tested, in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tlsync.connectors.synthetic import SyntheticSource
from tlsync.pull import pull


def slow_curve(monkeypatch: pytest.MonkeyPatch, crash_at: int | None = None) -> list[str]:
    from tlsync.trainer.curve import run as curve_module

    trained: list[str] = []

    def train_point(cfg) -> Path:
        if crash_at is not None and len(trained) + 1 == crash_at:
            raise KeyboardInterrupt  # Ctrl-C during this point
        trained.append(cfg.name)
        return Path(cfg.project) / cfg.name

    def score(run, version, plan, fraction, seed):
        n = sum(1 for _ in version.items("train"))
        return {"fraction": fraction, "seed": seed, "train_images": n, "train_boxes": 0, "run": str(run),
                "map50_95": 1.0 - 0.75 * n ** -0.02, "map50": 0.5, "per_class_ap50": {}}

    monkeypatch.setattr(curve_module, "train_point", train_point)
    monkeypatch.setattr(curve_module, "score_point", score)
    return trained


def test_resume_keeps_the_target_and_a_target_beyond_reach_says_so(store, run_cli, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pull(store, SyntheticSource(), {"items": 60, "size": 32, "seed": 0}, "shapes", split_ratios=(0.8, 0.1, 0.1))
    slow_curve(monkeypatch, crash_at=3)
    first = run_cli("curve", "--dataset", "shapes", "--fractions", "0.25,0.5,0.75,1", "--seeds", "1",
                    "--target-map", "0.6")
    assert first.exit_code == 130  # stopped during the third point
    folder = tmp_path / "curves" / "shapes-1"
    assert json.loads((folder / "curve.json").read_text())["target_map"] == 0.6

    trained = slow_curve(monkeypatch)
    resumed = run_cli("curve", "--resume", folder)
    assert resumed.exit_code == 0, resumed.stderr
    assert trained == ["f0.75-s1", "f1-s1"]
    data = json.loads((folder / "curve.json").read_text())
    target = data["fit"]["target"]
    assert target["map50_95"] == 0.6 and target["images"] is None and target["beyond_reach"]
    n_today = data["fit"]["n_today"]
    assert (f"target mAP50-95 0.600: out of reach of this fit (it would need more than 100x today's "
            f"{n_today} labelled images)") in resumed.stdout
    assert "about" not in resumed.stdout

    asked = run_cli("curve", "--resume", folder, "--target-map", "0.3")  # a new question of the same points
    assert asked.exit_code == 0, asked.stderr
    assert json.loads((folder / "curve.json").read_text())["fit"]["target"]["map50_95"] == 0.3
    reachable = next(line for line in asked.stdout.splitlines() if line.startswith("target mAP50-95 0.300"))
    assert reachable.startswith("target mAP50-95 0.300: about ") and "labelled images" in reachable
