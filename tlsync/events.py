"""What a training run tells plugins: the callback protocol and its events (torch-free).

A plugin implements ``tlsync_register_callbacks`` and registers a ``TrainingCallback``
(TensorBoard and MLflow are built in exactly that way, in ``tlsync.trainer.trackers.builtin``). The
trainer (``tlsync.trainer.training.callbacks``) calls each method on rank 0 only, with plain data:
paths, numbers, lists and dicts that are copies, so a callback can keep or change them
without touching the run. Events are frozen dataclasses rather than positional arguments
so that a later tlsync can add a field without breaking a plugin written today.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TlsyncError
from .secrets import redact

# Setting names and environment variables that hold keys: left out of what callbacks see.
VAL_METRICS = ("map50_95", "map50", "precision", "recall", "f1")  # what EpochEnd.val holds, as in metrics.csv
SECRET_NAME = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential)", re.IGNORECASE)


@dataclass(frozen=True)
class RunStart:
    """A run begins, or continues (``resumed``) after ``start_epoch`` finished epochs."""

    run_dir: Path
    config: dict[str, Any]  # every resolved setting (config.json), secrets removed
    dataset: str  # name@version
    content_hash: str
    classes: list[str]
    resumed: bool = False
    start_epoch: int = 0  # epochs already done: 0 for a new run

    @property
    def dataset_name(self) -> str:
        return self.dataset.partition("@")[0]


@dataclass(frozen=True)
class EpochEnd:
    """One epoch finished; the same numbers as its ``metrics.csv`` row."""

    epoch: int  # 1-based: epochs finished so far
    losses: dict[str, float]  # each training loss, averaged over the epoch (and the processes)
    lr: float  # the learning rate at the end of the epoch
    val: dict[str, float]  # map50_95, map50, precision, recall, f1 on val (empty without a val split)
    seconds: float  # wall time of the epoch, val evaluation included

    def scalars(self) -> dict[str, float]:
        """The epoch as tracker scalars: ``train/loss``, ``train/<each loss>``, ``lr``, ``val/<metric>``.

        One naming for every tracker, so TensorBoard and MLflow charts line up with each other
        and with ``metrics.csv`` (whose column names follow the slash).
        """
        return {"train/loss": sum(self.losses.values()), **{f"train/{k}": v for k, v in self.losses.items()},
                "lr": self.lr, **{f"val/{k}": v for k, v in self.val.items()}, "time/epoch_seconds": self.seconds}


@dataclass(frozen=True)
class EvalEnd:
    """The final evaluation of ``best.pt`` on val is written: ``metrics`` is ``eval_dir/metrics.json``."""

    eval_dir: Path
    metrics: dict[str, Any]


@dataclass(frozen=True)
class CheckpointSaved:
    """``path`` (``weights/best.pt`` or ``weights/last.pt``) was written for ``epoch``."""

    path: Path
    is_best: bool
    epoch: int


@dataclass(frozen=True)
class RunEnd:
    """The run is over: ``summary`` says how (``status`` is ``finished`` or ``failed``)."""

    run_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)  # status, epochs, best_epoch, best, elapsed, stop_reason
    report: Path | None = None  # report.html; None when the run failed before writing it


class TrainingCallback:
    """Receives a run's events; override the methods you need (the others do nothing).

    Methods are called on rank 0 only. Exceptions are caught: the first is shown as one
    warning naming the plugin and training goes on, so a tracker that is down never costs
    a run. ``on_run_end`` is also called (with ``status: failed``) when training raises.
    """

    def on_run_start(self, event: RunStart) -> None:
        pass

    def on_epoch_end(self, event: EpochEnd) -> None:
        pass

    def on_eval_end(self, event: EvalEnd) -> None:
        pass

    def on_checkpoint_saved(self, event: CheckpointSaved) -> None:
        pass

    def on_run_end(self, event: RunEnd) -> None:
        pass


METHODS = ("on_run_start", "on_epoch_end", "on_eval_end", "on_checkpoint_saved", "on_run_end")


def check_callback(obj: Any, plugin: str) -> Any:
    """A registered callback must have at least one of the methods (subclassing is optional)."""
    if not any(callable(getattr(obj, name, None)) for name in METHODS):
        raise TlsyncError(f"plugin '{plugin}' registered {obj!r}, which has none of the training callback "
                          f"methods ({', '.join(METHODS)}); subclass tlsync.events.TrainingCallback")
    return obj


def secret_values() -> list[str]:
    """Values of environment variables whose names say they hold a key (NUCLEUS_API_KEY...)."""
    return [v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= 4]


def public_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without secrets: key-like settings dropped, known key values redacted.

    Applied to everything handed to callbacks, because trackers send their params to a
    server that more people can read than the run directory.
    """
    hidden = secret_values()

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if not SECRET_NAME.search(str(k))}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, str):
            for secret in hidden:
                value = value.replace(secret, "***")
            return redact(value)
        return value

    return clean(config)
