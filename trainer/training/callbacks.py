"""Hands a run's events to the plugins' training callbacks, without letting them touch the run.

``train.py`` opens one ``session`` per run (``train`` and ``resume``) and fires the events
with one-line calls (``epoch_end``, ``checkpoint_saved``, ``eval_end``, ``run_end``); the
active session lives in a context variable, so the calls need no object threaded through
the epoch loop, and they do nothing outside a session or on a rank other than 0.

Callbacks cannot change what is trained: they get copies of plain data (never the model or
optimiser), and every random generator's state is put back after each call, so a callback
that samples (an image grid, a retry jitter) leaves the next batch and augmentation as they
would have been. One that raises is reported once, naming its plugin, and is kept: a
tracker that drops one request should still get the next epoch.

The exception is the start: a callback with ``required = True`` (every tracker named in
``--log``) must open its store in ``on_run_start``, before the first epoch; if it cannot,
the run is refused with one line saying why and, from its ``start_hint(error)``, what to
set. A user who typed ``--log mlflow`` learns that now, not hours later from an empty UI.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from tlsync.console import info
from tlsync.errors import TlsyncError
from tlsync.events import (
    VAL_METRICS,
    CheckpointSaved,
    EpochEnd,
    EvalEnd,
    RunEnd,
    RunStart,
    public_config,
)
from tlsync.plugins import collect_callbacks
from tlsync.store import DatasetVersion

from .engine import rng_state, set_rng_state


class Dispatcher:
    """The callbacks of one run and the plugins they came from."""

    def __init__(self, run_dir: Path, callbacks: list[tuple[Any, str]]):
        self.run_dir = run_dir
        self.callbacks = callbacks
        self.warned: set[int] = set()  # callbacks (by position) already reported as failing
        self.failures: dict[str, int] = {}  # plugin -> failed calls
        self.ended = False

    def fire(self, method: str, event: Any) -> None:
        for index, (callback, plugin) in enumerate(self.callbacks):
            handler = getattr(callback, method, None)
            if not callable(handler):
                continue
            saved = rng_state()
            try:
                handler(copy.deepcopy(event))
            except Exception as e:  # a tracker's bug or outage never stops training, once it has started
                if method == "on_run_start" and getattr(callback, "required", False) is True:
                    del self.callbacks[index]  # it never started: no on_run_end for it
                    raise TrackerDidNotStart(start_failure(callback, plugin, e)) from None
                self.failures[plugin] = self.failures.get(plugin, 0) + 1
                if index not in self.warned:
                    self.warned.add(index)
                    info(f"warning: plugin '{plugin}': training callback {type(callback).__name__}.{method} raised "
                         f"{type(e).__name__}: {e}; training goes on (later errors from it are not shown)")
            finally:
                set_rng_state(saved)


class TrackerDidNotStart(TlsyncError):
    """A tracker the user asked for could not open its store: the run is refused before it trains."""


def start_failure(callback: Any, plugin: str, error: Exception) -> str:
    """One line: which tracker, the error's first line, and what to set (the tracker's ``start_hint``)."""
    name = getattr(callback, "tracker_name", None) or f"{type(callback).__name__} (plugin '{plugin}')"
    why = (str(error).strip().splitlines() or [""])[0][:300]
    hint = ""
    if callable(getattr(callback, "start_hint", None)):
        try:
            hint = str(callback.start_hint(error) or "")
        except Exception:  # a broken hint must not hide the error itself
            hint = ""
    return (f"--log {name}: the tracker could not start ({type(error).__name__}: {why}); "
            f"{hint + '; ' if hint else ''}training was not started")


_active: ContextVar[Dispatcher | None] = ContextVar("tlsync_training_events", default=None)


@contextmanager
def session(run: Path, config: dict[str, Any], version: DatasetVersion, is_main: bool,
            resumed_after: int | None = None) -> Iterator[None]:
    """Collect the callbacks and fire ``on_run_start``; fire ``on_run_end`` as failed if training raises.

    ``resumed_after``: the epochs a resumed run had already finished (``None`` for a new run).
    """
    if not is_main:
        yield
        return
    run, public = Path(run).absolute(), public_config(config)  # absolute: a callback may change folder
    dispatcher = Dispatcher(run, collect_callbacks(public))
    token = _active.set(dispatcher)
    started = time.perf_counter()
    try:
        dispatcher.fire("on_run_start", RunStart(run, public, version.ref, version.content_hash,
                                                 list(version.categories), resumed_after is not None,
                                                 resumed_after or 0))
        yield
    except BaseException as e:
        if not dispatcher.ended:
            reason = "interrupted" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
            dispatcher.fire("on_run_end", RunEnd(run, {"status": "failed", "error": public_config(
                {"error": reason})["error"], "seconds": time.perf_counter() - started}, None))
        raise
    finally:
        _active.reset(token)


def _fire(method: str, event: Any) -> None:
    dispatcher = _active.get()
    if dispatcher is not None:
        dispatcher.fire(method, event)


def epoch_end(epoch: int, losses: dict[str, float], lr: float, val: dict[str, Any], seconds: float) -> None:
    """``val``: the epoch's evaluation (empty without a val split); its headline metrics are passed on."""
    _fire("on_epoch_end", EpochEnd(epoch, {k: float(v) for k, v in losses.items()}, float(lr),
                                   {k: float(val[k]) for k in VAL_METRICS if k in val}, float(seconds)))


def checkpoint_saved(path: Path, is_best: bool, epoch: int) -> None:
    _fire("on_checkpoint_saved", CheckpointSaved(Path(path).absolute(), is_best, epoch))


def eval_end(eval_dir: Path, metrics: dict[str, Any]) -> None:
    _fire("on_eval_end", EvalEnd(Path(eval_dir).absolute(), metrics))


def run_end(run: Path, report: Path | None, summary: dict[str, Any]) -> None:
    """The run finished (early stop and time limit included): ``summary`` gets ``status: finished``."""
    dispatcher = _active.get()
    if dispatcher is not None:
        dispatcher.fire("on_run_end", RunEnd(Path(run).absolute(), {"status": "finished", **summary},
                                                  None if report is None else Path(report).absolute()))
        dispatcher.ended = True
