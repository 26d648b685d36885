"""The built-in trackers (``--log tensorboard,mlflow``), registered through the same hook as a plugin's.

Each is registered as ``required``: one that cannot open its store before the first epoch
stops the run with one line (``training.callbacks``); one that fails later only warns.

This module is a plugin like any other (listed in ``tlsync.plugins.DEFAULT_PLUGINS``): it
reads ``log`` from the run's settings and registers a callback per tracker asked for.
Each tracker lives behind an optional extra, so its import is checked up front
(``check_trackers``, called by ``tlsync train`` before anything starts) and again here,
with a one-line error naming the extra. Nothing heavy is imported at module level:
``tlsync plugins`` imports this module to list it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from tlsync.errors import TlsyncError
from tlsync.hookspecs import hookimpl

# tracker name -> the module it needs (and the extra that installs it, of the same name)
TRACKERS = {"tensorboard": "tensorboard", "mlflow": "mlflow"}


def parse_trackers(value: str | None) -> tuple[str, ...]:
    """``"tensorboard,mlflow"`` -> ``("tensorboard", "mlflow")``; unknown names are refused."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in (value or "").split(",") if n.strip()))
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise TlsyncError(f"--log {value}: unknown tracker '{unknown[0]}'; use {', '.join(TRACKERS)} "
                          f"or both, comma-separated (--log tensorboard,mlflow)")
    return names


def check_trackers(names: tuple[str, ...] | list[str]) -> None:
    """Refuse, in one line naming the extra, a tracker whose package is not installed."""
    for name in names:
        try:
            importlib.import_module(TRACKERS[name])
        except ImportError:
            raise TlsyncError(f"--log {name} needs the {TRACKERS[name]} package: "
                              f"pip install 'tlsync[{name}]'") from None


def _tensorboard(config: dict[str, Any]) -> Any:
    from .tensorboard_tracker import TensorBoardLogger

    return TensorBoardLogger(images=bool(config.get("log_images")))


def _mlflow(config: dict[str, Any]) -> Any:
    from .mlflow_tracker import MlflowLogger

    return MlflowLogger(experiment=config.get("mlflow_experiment"), images=bool(config.get("log_images")))


BUILDERS: dict[str, Callable[[dict[str, Any]], Any]] = {"tensorboard": _tensorboard, "mlflow": _mlflow}


@hookimpl
def tlsync_register_callbacks(register: Callable[[Any], None], config: dict[str, Any]) -> None:
    names = [name for name in config.get("log") or () if name in TRACKERS]  # other names: other plugins'
    check_trackers(names)
    for name in names:
        tracker = BUILDERS[name](config)
        # Asked for by name: if it cannot open its store at the run's start, the run is refused
        # (training.callbacks.Dispatcher), rather than trained for hours with nothing logged.
        tracker.required, tracker.tracker_name = True, name
        register(tracker)
