"""The trainer's public face: ``from tlsync.trainer import TrainConfig, train, load_model``.

Everything here needs torch, and importing torch takes seconds, so the names are resolved
lazily (PEP 562): ``import tlsync.trainer`` is free, and the first use of a name imports only
the module that holds it. Code outside the trainer (tests, benchmarks, notebooks, plugins)
uses these names rather than reaching into the packages, so the packages can be rearranged
without breaking it.

The packages, one per capability: ``training`` (settings, the loop, data, checkpoints, runs),
``distributed``, ``models``, ``evaluation``, ``deploy``, ``select``, ``curve``, ``trackers``,
and ``commands`` (the click commands ``tlsync.cli`` loads by name).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> the module that holds it
PUBLIC = {
    "TrainConfig": "training.settings",
    "default_workers": "training.settings",
    "train": "training.fit",
    "resume": "training.fit",
    "resolve_device": "training.device",
    "load_model": "training.checkpoint",
    "load_checkpoint": "training.checkpoint",
    "save_checkpoint": "training.checkpoint",
    "create_run_dir": "training.runs",
    "DetectionDataset": "training.data",
    "build_model": "models.zoo",
    "launch": "distributed.launcher",
    "evaluate_split": "evaluation.evaluate",
    "predict_items": "evaluation.predict",
    "load_image": "evaluation.predict",
    "write_report": "evaluation.report",
    "load_exported": "deploy.runner",
    "run_curve": "curve.run",
}

__all__ = [
    "DetectionDataset",
    "TrainConfig",
    "build_model",
    "create_run_dir",
    "default_workers",
    "evaluate_split",
    "launch",
    "load_checkpoint",
    "load_exported",
    "load_image",
    "load_model",
    "predict_items",
    "resolve_device",
    "resume",
    "run_curve",
    "save_checkpoint",
    "train",
    "write_report",
]  # the keys of PUBLIC (a test keeps them in step)

if TYPE_CHECKING:
    from .curve.run import run_curve
    from .deploy.runner import load_exported
    from .distributed.launcher import launch
    from .evaluation.evaluate import evaluate_split
    from .evaluation.predict import load_image, predict_items
    from .evaluation.report import write_report
    from .models.zoo import build_model
    from .training.checkpoint import load_checkpoint, load_model, save_checkpoint
    from .training.data import DetectionDataset
    from .training.device import resolve_device
    from .training.fit import resume, train
    from .training.runs import create_run_dir
    from .training.settings import TrainConfig, default_workers


def __getattr__(name: str) -> Any:
    module = PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'tlsync.trainer' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(PUBLIC))
