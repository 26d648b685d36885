"""How a training process takes part in a run: alone, or as one rank of many.

``train.fit`` calls these methods at the points where a multi-process run differs;
``distributed.DistributedRuntime`` overrides them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from tlsync.console import info
from tlsync.store import DatasetVersion, Store

from ..evaluation.evaluate import evaluate_split
from ..training.checkpoint import unwrap
from ..training.device import use_device
from ..training.settings import TrainConfig

T = TypeVar("T")


def compile_backbone(model: nn.Module) -> bool:
    """``torch.compile`` the backbone (with its FPN), in place; returns whether the model had one.

    Not the whole detector: its ``.item()`` calls, NMS and data-dependent proposal counts
    break the graph and force recompiles, so compiling it all costs start-up time for little.
    The backbone, a fixed stack of convolutions, is where the time goes and captures whole.
    ``Module.compile`` compiles in place, so parameter names, and checkpoints, stay as they are.
    """
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        info(f"note: --compile: {type(model).__name__} has no backbone module; nothing compiled")
        return False
    backbone.compile()
    return True


@dataclass
class Runtime:
    """How this process takes part: a single process here, one rank of many under DDP.

    The methods are the points where a multi-process run differs; ``distributed.
    DistributedRuntime`` overrides them. Anything that writes files checks ``is_main``.
    """

    device: torch.device
    is_main: bool = True
    world_size: int = 1

    def __post_init__(self) -> None:
        use_device(self.device)  # --device cuda:N: this process's GPU is N, for everything that asks

    def wrap(self, model: nn.Module, cfg: TrainConfig) -> nn.Module:
        """The module the training steps call; checkpoints keep ``model``. ``--compile`` compiles its backbone."""
        if cfg.compile:
            compile_backbone(unwrap(model))
        return model

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
                 batch_size: int = 4, workers: int = 0,
                 progress: Callable[..., None] | None = None) -> dict[str, Any]:
        """The per-epoch evaluation: images decoded by ``workers`` processes, at the model's input size."""
        return evaluate_split(model, version, split, categories, device, out_dir, conf, progress=progress,
                              batch_size=batch_size, workers=workers, draft=True)
