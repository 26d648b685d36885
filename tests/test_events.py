"""Training events reach plugins: in order, on resume too, without secrets, and harmlessly.

One shared run (module scope): 8 synthetic 64 px images, EfficientNet-Lite0 from its shipped
ImageNet weights, 2 epochs; a plugin interrupts it (Ctrl-C) after epoch 1's checkpoint and it
is resumed. Beside the recorder sit a tracker that always raises and one that consumes every
random generator and vandalises what it is given; a straight run without plugins must still
train exactly the same weights.
"""

from __future__ import annotations

import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from tlsync.connectors.synthetic import SyntheticSource
from tlsync.errors import TlsyncError
from tlsync.events import TrainingCallback, public_config
from tlsync.hookspecs import hookimpl
from tlsync.plugins import collect_callbacks
from tlsync.pull import pull
from tlsync.store import Store
from tlsync.testing import isolated_plugins, run_cli

SECRET = "nucleus-key-0123456789"
ARGS = ("--dataset", "shapes", "--model", "fasterrcnn_efficientnet_lite0_fpn", "--weights", "imagenet",
        "--img-size", "64", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--epochs", "2",
        "--patience", "0")


class Recorder(TrainingCallback):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def on_run_start(self, event): self.events.append(("run_start", event))
    def on_epoch_end(self, event): self.events.append(("epoch_end", event))
    def on_eval_end(self, event): self.events.append(("eval_end", event))
    def on_checkpoint_saved(self, event): self.events.append(("checkpoint_saved", event))
    def on_run_end(self, event): self.events.append(("run_end", event))


class Interrupt(TrainingCallback):
    """Ctrl-C once, right after the first epoch's last.pt is written."""

    def __init__(self) -> None:
        self.done = False

    def on_checkpoint_saved(self, event):
        if not self.done and event.path.name == "last.pt":
            self.done = True
            raise KeyboardInterrupt


class Flaky(TrainingCallback):
    def __getattribute__(self, name):
        if name.startswith("on_"):
            def fail(event):
                raise RuntimeError("tracker down")
            return fail
        return super().__getattribute__(name)


class Vandal(TrainingCallback):
    """Draws from every generator and mutates its events: training must not notice."""

    def _spoil(self, event):
        torch.rand(1000), random.random(), np.random.rand(10)
        for value in vars(event).values():
            if isinstance(value, (dict, list)):
                value.clear()

    on_run_start = on_epoch_end = on_eval_end = on_checkpoint_saved = on_run_end = _spoil


@dataclass
class Plugin:
    """A plugin object whose hook registers fixed callbacks (and, like a simple plugin, ignores config)."""

    callbacks: tuple[Any, ...]

    @hookimpl
    def tlsync_register_callbacks(self, register):
        for callback in self.callbacks:
            register(callback)


class BrokenHook:
    @hookimpl
    def tlsync_register_callbacks(self, register, config):
        raise RuntimeError("cannot reach the tracker")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("events")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for name, value in {"TLSYNC_HOME": root / "home", "TLSYNC_CONFIG": root / "no-config.json",
                            "TORCH_HOME": root / "torch", "TLSYNC_LOAD_PLUGINS": "", "NUCLEUS_API_KEY": SECRET}.items():
            mp.setenv(name, str(value))
        pull(Store(root / "home"), SyntheticSource(), {"items": 8, "size": 64, "seed": 0}, "shapes",
             split_ratios=(0.5, 0.5, 0.0))
        recorder = Recorder()
        with isolated_plugins(recorder=Plugin((recorder, Interrupt())), flaky=Plugin((Flaky(),)),
                              vandal=Plugin((Vandal(),)), broken_hook=BrokenHook()):
            first = run_cli("train", *ARGS, "--name", "tracked")
            resumed = run_cli("train", "--resume", "runs/tracked")
        straight = run_cli("train", *ARGS, "--name", "straight")
    return SimpleNamespace(root=root, run=root / "runs" / "tracked", first=first, resumed=resumed,
                           straight=straight, events=recorder.events)


def of(events: list[tuple[str, Any]], kind: str) -> list[Any]:
    return [e for k, e in events if k == kind]


def test_an_interrupted_run_reports_failed_and_the_resume_says_where_it_continues(shared):
    assert shared.first.exit_code == 130, shared.first.stderr
    assert shared.resumed.exit_code == 0, shared.resumed.stderr
    kinds = [k for k, _ in shared.events]
    assert kinds == ["run_start", "epoch_end", "checkpoint_saved", "checkpoint_saved", "run_end",
                     "run_start", "epoch_end", *["checkpoint_saved"] * (kinds.count("checkpoint_saved") - 2),
                     "eval_end", "run_end"]
    new, again = of(shared.events, "run_start")
    assert (new.resumed, new.start_epoch, again.resumed, again.start_epoch) == (False, 0, True, 1)
    assert new.run_dir == again.run_dir == shared.run
    config = json.loads((shared.run / "config.json").read_text())
    assert new.dataset == config["dataset"] == "shapes@1" and new.content_hash == config["content_hash"]
    assert new.classes == config["categories"] and new.config["model"] == "fasterrcnn_efficientnet_lite0_fpn"
    failed, finished = of(shared.events, "run_end")
    assert failed.summary["status"] == "failed" and failed.report is None
    assert finished.summary["status"] == "finished" and finished.summary["epoch"] == 2
    assert finished.report == shared.run / "report.html" and finished.report.exists()


def test_epoch_events_carry_the_numbers_of_metrics_csv(shared):
    rows = (shared.run / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    for event, line in zip(of(shared.events, "epoch_end"), rows[1:], strict=True):
        row = dict(zip(header, line.split(","), strict=True))
        assert int(row["epoch"]) == event.epoch
        assert float(row["lr"]) == pytest.approx(event.lr, rel=1e-5)
        assert float(row["loss"]) == pytest.approx(sum(event.losses.values()), rel=1e-5)
        assert set(event.val) == {"map50_95", "map50", "precision", "recall", "f1"}
        assert float(row["map50_95"]) == pytest.approx(event.val["map50_95"], rel=1e-5, abs=1e-6)
        assert event.scalars()["train/loss"] == pytest.approx(float(row["loss"]), rel=1e-5)


def test_checkpoint_and_eval_events_point_at_the_files_written(shared):
    saved = of(shared.events, "checkpoint_saved")
    assert {(c.path.name, c.is_best) for c in saved} <= {("best.pt", True), ("last.pt", False)}
    assert [c.epoch for c in saved if c.path.name == "last.pt"] == [1, 2]
    (evaluated,) = of(shared.events, "eval_end")
    assert evaluated.metrics == json.loads((shared.run / "eval" / "metrics.json").read_text())


def test_a_failing_tracker_is_warned_once_per_run_and_training_goes_on(shared):
    for result in (shared.first, shared.resumed):
        warnings = re.findall(r"warning: plugin 'flaky': .*tracker down.*", result.stderr)
        assert len(warnings) == 1, result.stderr
        assert "plugin 'broken_hook': tlsync_register_callbacks raised RuntimeError" in result.stderr
    assert "run: runs/tracked" in shared.resumed.stdout


def test_callbacks_cannot_change_what_is_trained(shared):
    """Interrupted + resumed among plugins that raise, draw random numbers and mutate: same weights."""
    assert shared.straight.exit_code == 0, shared.straight.stderr
    losses = [[r.split(",")[i] for i in (0, 3, 4)] for r in (shared.run / "metrics.csv").read_text().splitlines()]
    straight = (shared.root / "runs" / "straight")
    assert losses == [[r.split(",")[i] for i in (0, 3, 4)] for r in (straight / "metrics.csv").read_text().splitlines()]
    a = torch.load(shared.run / "weights" / "last.pt", weights_only=True)["model"]
    b = torch.load(straight / "weights" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_no_secret_reaches_a_callback(shared, monkeypatch):
    assert SECRET not in repr(shared.events)
    monkeypatch.setenv("NUCLEUS_API_KEY", SECRET)
    config = public_config({"weights": f"/data/{SECRET}/best.pt", "nucleus_api_key": "x", "nested": {"token": "y"}})
    assert config == {"weights": "/data/***/best.pt", "nested": {}}


def test_only_rank_0_calls_callbacks(monkeypatch):
    from tlsync.trainer.training import callbacks as events

    recorder = Recorder()
    version = SimpleNamespace(ref="d@1", content_hash="h", categories=["a"])
    with isolated_plugins(rec=Plugin((recorder,))):
        with events.session(Path("run"), {}, version, is_main=False):
            events.epoch_end(1, {"loss_a": 1.0}, 0.1, {}, 1.0)
        assert recorder.events == []
        with events.session(Path("run"), {}, version, is_main=True):
            events.epoch_end(1, {"loss_a": 1.0}, 0.1, {}, 1.0)
        assert [k for k, _ in recorder.events] == ["run_start", "epoch_end"]


def test_a_plugin_may_refuse_the_run_and_an_invalid_callback_is_ignored(capsys):
    class Refuse:
        @hookimpl
        def tlsync_register_callbacks(self, register, config):
            if "wandb" in config.get("log", ()):
                raise TlsyncError("--log wandb needs WANDB_API_KEY")

    with isolated_plugins(refuse=Refuse(), odd=Plugin((object(),))):
        assert collect_callbacks({"log": []}) == []
        with pytest.raises(TlsyncError, match="needs WANDB_API_KEY"):
            collect_callbacks({"log": ["wandb"]})
    assert "plugin 'odd' registered <object" in capsys.readouterr().err


def test_the_guide_example_plugin_logs_each_epoch(tmp_path, monkeypatch):
    import importlib

    from tlsync.trainer.training import callbacks as events

    guide = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    code = re.search(r"<!-- tutorial: tlsync_epochlog.py -->\n```python\n(.*?)\n```", guide, re.S).group(1)
    (tmp_path / "tlsync_epochlog.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("tlsync_epochlog")
    version = SimpleNamespace(ref="street@2", content_hash="h", categories=["car"])
    with isolated_plugins(epochlog=module):
        with events.session(tmp_path / "street-1", {}, version, is_main=True):  # not set: stays out
            events.epoch_end(1, {"loss_a": 1.0}, 0.1, {}, 1.0)
        monkeypatch.setenv("EPOCHLOG_FILE", str(tmp_path / "epochs.jsonl"))
        with events.session(tmp_path / "street-1", {}, version, is_main=True, resumed_after=3):
            events.epoch_end(4, {"loss_a": 0.5, "loss_b": 0.25}, 0.01, {"map50": 0.5}, 2.0)
    (line,) = (tmp_path / "epochs.jsonl").read_text().splitlines()
    assert json.loads(line) == {"run": "street-1 on street@2 from epoch 3", "epoch": 4, "train/loss": 0.75,
                                "train/loss_a": 0.5, "train/loss_b": 0.25, "lr": 0.01, "val/map50": 0.5,
                                "time/epoch_seconds": 2.0}
    sys.modules.pop("tlsync_epochlog", None)
