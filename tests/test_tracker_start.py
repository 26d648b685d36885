"""A tracker named in ``--log`` opens its store before the first epoch, or the run is refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlsync.connectors.synthetic import SyntheticSource
from tlsync.pull import pull
from tlsync.store import Store

pytest.importorskip("mlflow")

ARGS = ("--dataset", "shapes", "--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--weights", "none",
        "--img-size", "64", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--epochs", "1",
        "--patience", "0", "--name", "tracked")


@pytest.fixture
def shapes(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    pull(store, SyntheticSource(), {"items": 8, "size": 64, "seed": 0}, "shapes", split_ratios=(0.5, 0.5, 0.0))
    return tmp_path


def test_an_mlflow_store_that_will_not_open_refuses_the_run_before_it_trains(shapes: Path, run_cli,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (shapes / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    result = run_cli("train", *ARGS, "--log", "mlflow")
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.stderr
    assert "--log mlflow: the tracker could not start" in errors[0]
    assert "sqlite:///" in errors[0] and "MLFLOW_ALLOW_FILE_STORE=true" in errors[0]
    assert "training was not started" in errors[0]
    run = shapes / "runs" / "tracked"
    assert not (run / "weights" / "last.pt").exists() and not (run / "weights" / "best.pt").exists()
    assert "Traceback" not in result.stderr


def test_a_tracker_that_fails_only_later_warns_once_and_training_goes_on(shapes: Path, run_cli,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The refusal is for the start only: a tracker whose store fails mid-run keeps today's behaviour."""
    from tlsync.trainer.trackers.mlflow_tracker import MlflowLogger

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{shapes / 'mlflow.db'}")

    def broken(self, event) -> None:
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(MlflowLogger, "on_epoch_end", broken)
    result = run_cli("train", *ARGS, "--log", "mlflow")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("tracking server went away") == 1 and "training goes on" in result.stderr
    assert (shapes / "runs" / "tracked" / "weights" / "best.pt").exists()
