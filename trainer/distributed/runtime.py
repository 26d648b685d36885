"""How a training process takes part in a run: alone, or as one rank of many.

``train.fit`` calls these methods at the points where a multi-process run differs;
``distributed.DistributedRuntime`` overrides them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from tlsync.store import DatasetVersion, Store

from ..evaluation.evaluate import evaluate_split
from ..training.settings import TrainConfig

T = TypeVar("T")


@dataclass
class Runtime:
    """How this process takes part: a single process here, one rank of many under DDP.

    The methods are the points where a multi-process run differs; ``distributed.
    DistributedRuntime`` overrides them. Anything that writes files checks ``is_main``.
    """

    device: torch.device
    is_main: bool = True
    world_size: int = 1

    def wrap(self, model: nn.Module, cfg: TrainConfig) -> nn.Module:
        """The module the training steps call (``--compile`` compiles it); checkpoints keep ``model``."""
        # torch.compile of a Module returns an OptimizedModule (a Module); its stub says Callable.
        return cast(nn.Module, torch.compile(model)) if cfg.compile else model

    def sampler(self, dataset: Dataset, cfg: TrainConfig) -> Sampler[int] | None:
        """This process's training order; ``None``: the loader's own seeded shuffle."""
        return None

    def open_dataset(self, store: Store, ref: str) -> DatasetVersion:
        return store.open(ref)

    def from_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` computed once (by rank 0) and shared, so every process takes the same decision."""
        return fn()

    def average(self, values: dict[str, float]) -> dict[str, float]:
        """Per-process training losses averaged over the processes, for the log."""
        return values

    def evaluate(self, model: nn.Module, version: DatasetVersion, split: str, categories: list[str],
                 device: torch.device, out_dir: Path | None, conf: float | None = None,
                 batch_size: int = 4) -> dict[str, Any]:
        return evaluate_split(model, version, split, categories, device, out_dir, conf, batch_size=batch_size)
