"""``--log tensorboard,mlflow``: what lands in TensorBoard and MLflow, read back with their own readers.

One shared run (module scope): 8 synthetic 64 px images, Lite0, 2 epochs, logging to TensorBoard
and to an MLflow file store, interrupted (Ctrl-C) after epoch 1 and resumed, with an API key in
the environment. The same run's recorded events are then replayed through the MLflow tracker
into a real ``mlflow server`` (sqlite backend) on 127.0.0.1, read back through ``MlflowClient``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tlsync.connectors.synthetic import SyntheticSource
from tlsync.events import RunStart, TrainingCallback
from tlsync.hookspecs import hookimpl
from tlsync.pull import pull
from tlsync.store import Store
from tlsync.testing import isolated_plugins, run_cli

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

SECRET = "nucleus-key-9876543210"
ARGS = ("--dataset", "shapes", "--model", "fasterrcnn_efficientnet_lite0_fpn", "--weights", "imagenet",
        "--img-size", "64", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--epochs", "2",
        "--patience", "0", "--log", "tensorboard,mlflow", "--log-images", "--name", "tracked")
SERVER_START_TIMEOUT = 240  # seconds; a loaded CI machine needs a while to create the sqlite tables


class Record(TrainingCallback):
    """Keeps every event, and presses Ctrl-C once after the first epoch's last.pt."""

    def __init__(self) -> None:
        self.sessions: list[list[tuple[str, Any]]] = []
        self.interrupted = False

    def on_run_start(self, event):
        self.sessions.append([("on_run_start", event)])

    def on_epoch_end(self, event):
        self.sessions[-1].append(("on_epoch_end", event))

    def on_eval_end(self, event):
        self.sessions[-1].append(("on_eval_end", event))

    def on_checkpoint_saved(self, event):
        self.sessions[-1].append(("on_checkpoint_saved", event))
        if not self.interrupted and event.path.name == "last.pt":
            self.interrupted = True
            raise KeyboardInterrupt

    def on_run_end(self, event):
        self.sessions[-1].append(("on_run_end", event))


class RecordPlugin:
    def __init__(self, record: Record):
        self.record = record

    @hookimpl
    def tlsync_register_callbacks(self, register):
        register(self.record)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    root = tmp_path_factory.mktemp("loggers")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        env = {"TLSYNC_HOME": root / "home", "TLSYNC_CONFIG": root / "no-config.json", "TORCH_HOME": root / "torch",
               "TLSYNC_LOAD_PLUGINS": "", "NUCLEUS_API_KEY": SECRET, "MLFLOW_TRACKING_URI": (root / "mlruns").as_uri(),
               "MLFLOW_ALLOW_FILE_STORE": "true"}
        for name, value in env.items():
            mp.setenv(name, str(value))
        pull(Store(root / "home"), SyntheticSource(), {"items": 8, "size": 64, "seed": 0}, "shapes",
             split_ratios=(0.5, 0.5, 0.0))
        record = Record()
        with isolated_plugins(record=RecordPlugin(record)):
            first = run_cli("train", *ARGS)
            resumed = run_cli("train", "--resume", "runs/tracked")
        assert first.exit_code == 130 and resumed.exit_code == 0, first.stderr + resumed.stderr
        run = root / "runs" / "tracked"
        with open(run / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        yield SimpleNamespace(root=root, run=run, rows=rows, sessions=record.sessions,
                              config=json.loads((run / "config.json").read_text()))


def test_tensorboard_scalars_match_metrics_csv(shared):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(shared.run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    losses = [c for c in shared.rows[0] if c.startswith("loss_")]
    expected = {"train/loss": "loss", "lr": "lr", **{f"train/{c}": c for c in losses},
                **{f"val/{m}": m for m in ("map50_95", "map50", "precision", "recall", "f1")}}
    for tag, column in expected.items():
        points = events.Scalars(tag)
        assert [p.step for p in points] == [1, 2], tag  # the resume purged nothing it needed, duplicated nothing
        assert [p.value for p in points] == pytest.approx([float(r[column]) for r in shared.rows], rel=1e-5, abs=1e-7)


def test_tensorboard_has_the_pr_curve_confusion_matrix_and_image_grid(shared):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(shared.run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert {"confusion_matrix", "pr_curve", "val_images"} <= set(events.Tags()["images"])
    image = events.Images("confusion_matrix")[-1]
    assert image.width > 100 and image.height > 100
    assert "pr_curve/all" in events.Tags()["tensors"]
    from tensorboard.util import tensor_util

    curve = tensor_util.make_ndarray(events.Tensors("pr_curve/all")[-1].tensor_proto)
    assert curve.shape == (6, 101)  # tp, fp, tn, fn, precision, recall per threshold
    metrics = json.loads((shared.run / "eval" / "metrics.json").read_text())
    assert curve[0, 0] + curve[3, 0] == metrics["ground_truth_boxes"]  # tp + fn at threshold 0: every true box


def check_mlflow_run(client: Any, run_dir: Path, shared: SimpleNamespace) -> None:
    """What a user sees in MLflow for the shared run, through the client API."""
    experiment = client.get_experiment_by_name("shapes")
    (run,) = client.search_runs([experiment.experiment_id])  # the resume appended, no second run
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == run.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    params = run.data.params
    assert params["lr"] == json.dumps(shared.config["lr"]) and params["model"] == "fasterrcnn_efficientnet_lite0_fpn"
    assert params["dataset"] == "shapes@1" and params["log"] == '["tensorboard", "mlflow"]'
    assert params["versions.torch"] == shared.config["versions"]["torch"]
    assert not any(SECRET in v for v in params.values())
    tags = run.data.tags
    assert tags["tlsync.dataset"] == "shapes@1" and tags["tlsync.content_hash"] == shared.config["content_hash"]
    assert tags["tlsync.model"] == "fasterrcnn_efficientnet_lite0_fpn" and tags["tlsync.weights_source"] == "imagenet"
    for key, column in (("val/map50_95", "map50_95"), ("train/loss", "loss"), ("lr", "lr")):
        history = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in history] == [1, 2]
        assert [m.value for m in history] == pytest.approx([float(r[column]) for r in shared.rows], rel=1e-5, abs=1e-7)
    assert "final/map50_95" in run.data.metrics
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.html", "metrics.csv", "training.png", "pr_curve.png", "confusion_matrix.png",
            "val_images.png", "weights", "eval"} <= top
    assert [a.path for a in client.list_artifacts(run.info.run_id, "weights")] == ["weights/best.pt"]


def test_mlflow_file_store_holds_the_run_its_params_metrics_and_artifacts(shared, monkeypatch):
    from mlflow import MlflowClient

    check_mlflow_run(MlflowClient((shared.root / "mlruns").as_uri()), shared.run, shared)


def replay(sessions: list[list[tuple[str, Any]]], old: Path, new: Path) -> None:
    """Feed recorded events to a fresh MLflow tracker per session, as the dispatcher does, for another run dir."""
    from tlsync.trainer.trackers.mlflow_tracker import MlflowLogger

    def moved(value: Any) -> Any:
        return new / Path(value).relative_to(old) if isinstance(value, Path) and value.is_relative_to(old) else value

    for session in sessions:
        logger = MlflowLogger(images=True)
        for method, event in session:
            changes = {f.name: moved(getattr(event, f.name)) for f in dataclasses.fields(event)}
            getattr(logger, method)(dataclasses.replace(event, **changes))


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[str]:
    """A real ``mlflow server`` on a free port of 127.0.0.1 with a sqlite backend; killed at teardown."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                               "--artifacts-destination", str(tmp_path / "artifacts")],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not come up: {(tmp_path / 'server.log').read_text()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def test_mlflow_server_gets_the_same_run_and_resume_appends_to_it(shared, mlflow_server, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    copy = tmp_path / "tracked"
    shutil.copytree(shared.run, copy)
    (copy / "mlflow.json").unlink()  # as if this run had only ever logged to the server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    replay(shared.sessions, shared.run, copy)
    check_mlflow_run(MlflowClient(mlflow_server), copy, shared)


def test_a_continued_run_is_tagged_with_the_run_it_continues(shared, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from tlsync.trainer.trackers.mlflow_tracker import MlflowLogger

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (shared.root / "mlruns").as_uri())
    child = tmp_path / "child"
    child.mkdir()
    config = {**shared.config, "weights": str(shared.run / "weights" / "best.pt")}
    logger = MlflowLogger()
    logger.on_run_start(RunStart(child, config, "shapes@1", shared.config["content_hash"], ["a"]))
    tags = MlflowClient().get_run(logger.run_id).data.tags
    parent = json.loads((shared.run / "mlflow.json").read_text())["run_id"]
    assert tags["tlsync.parent_run"] == str(shared.run.resolve())
    assert tags["mlflow.parentRunId"] == tags["tlsync.parent_mlflow_run_id"] == parent


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_a_missing_extra_is_one_line_naming_it(tracker, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, tracker, None)  # what an interpreter without the package does on import
    result = run_cli("train", "--dataset", "shapes", "--log", f"{tracker}")
    assert result.exit_code == 1
    expected = f"Error: --log {tracker} needs the {tracker} package: pip install 'tlsync[{tracker}]'"
    assert result.stderr.strip() == expected
    assert not (tmp_path / "runs").exists()


def test_an_unknown_tracker_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("train", "--dataset", "shapes", "--log", "tensorboard,wandb")
    assert result.exit_code == 2 and "unknown tracker 'wandb'" in result.stderr


def test_a_sqlite_tracking_uri_is_stored_as_mlflow_opens_it(tmp_path, monkeypatch):
    """``sqlite:////abs/path`` (four slashes) used to be stored as ``sqlite://abs/path``, a URI MLflow cannot
    open; a password in a server URI is still left out."""
    from mlflow import MlflowClient

    from tlsync.trainer.trackers.mlflow_tracker import without_credentials

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert uri.startswith("sqlite:////")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert run_cli("pull", "--source", "synthetic", "--items", "6", "--size", "64", "--split-ratios", "1,0,0",
                   "--dataset", "shapes").exit_code == 0
    args = [a for a in ARGS if a not in ("tensorboard,mlflow", "--log-images")]
    args[args.index("--log") + 1:args.index("--log") + 1] = ["mlflow"]
    args[args.index("--epochs") + 1] = "1"
    trained = run_cli("train", *args)
    assert trained.exit_code == 0, trained.stderr
    stored = json.loads((tmp_path / "runs" / "tracked" / "mlflow.json").read_text())
    assert stored["tracking_uri"] == uri
    run = MlflowClient(stored["tracking_uri"]).get_run(stored["run_id"])
    assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
    assert without_credentials("https://me:s3cret@mlflow.example:5000/x?y=1") == "https://mlflow.example:5000/x?y=1"
