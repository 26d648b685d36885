"""One epoch of training, the optimiser and schedule it runs with, and the random state a resume restores.

``train_one_epoch`` follows torchvision's detection references (references/detection/
engine.py): the model returns a loss dict in training mode, the losses are summed, and the
step is taken with optional mixed precision and gradient clipping. The learning-rate
schedule advances every iteration, so warm-up works even when an epoch is a few batches.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from tlsync.errors import TlsyncError

from .data import DecodeFailure


class NonFiniteLoss(TlsyncError):
    """The loss became NaN or infinite; the step was not taken."""


@dataclass
class EpochResult:
    losses: dict[str, float]  # mean of each loss over the epoch
    images: int
    seconds: float
    lr: float
    failures: list[DecodeFailure] = field(default_factory=list)


def amp_settings(device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler]:
    """Mixed precision on CUDA only: bf16 where the GPU has it (no scaler needed), else fp16 with a scaler."""
    if device.type != "cuda":
        return None, torch.amp.GradScaler("cpu", enabled=False)
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, torch.amp.GradScaler("cuda", enabled=False)
    return torch.float16, torch.amp.GradScaler("cuda")


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Iterable, device: torch.device,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                    amp_dtype: torch.dtype | None = None, clip_norm: float = 10.0,
                    progress: Callable[..., None] | None = None) -> EpochResult:
    """Train over ``loader`` once; raise ``NonFiniteLoss`` (before stepping) if the loss blows up.

    ``progress(images_done, losses_text)`` is called after every step.
    """
    started, images, failures = time.perf_counter(), 0, []
    totals: dict[str, float] = {}
    for step, (batch, targets, failed) in enumerate(loader):
        failures += failed
        if not batch:
            continue
        batch = [img.to(device, non_blocking=True) for img in batch]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss_dict = model(batch, targets)
            loss = sum(loss_dict.values())
        values = {k: v.item() for k, v in loss_dict.items()}
        if not math.isfinite(loss.item()):
            shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            raise NonFiniteLoss(f"the loss became {loss.item()} at iteration {step + 1} ({shown})")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        images += len(batch)
        for k, v in values.items():
            totals[k] = totals.get(k, 0.0) + v * len(batch)
        if progress:
            progress(images, " ".join(f"{short(k)} {totals[k] / images:.3f}" for k in totals))
    return EpochResult({k: v / max(images, 1) for k, v in totals.items()}, images, time.perf_counter() - started,
                       optimizer.param_groups[0]["lr"], failures)


def short(loss_name: str) -> str:
    """``loss_box_reg`` -> ``box_reg``, to keep the progress line narrow."""
    return loss_name.removeprefix("loss_")


# -- optimiser and schedule -------------------------------------------------------------------

def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """SGD (the detection default) or AdamW over every parameter that can ever train.

    Parameters frozen for the first epochs are included: they have no gradient while
    frozen, which both optimisers skip, and they start learning once unfrozen.
    """
    params = list(model.parameters())
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise TlsyncError(f"unknown optimizer '{name}' (use sgd or adamw)")


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    warmup_factor: float = 0.001, final_factor: float = 0.01) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from ``warmup_factor * lr``, then cosine decay to ``final_factor * lr``, per step."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            alpha = step / warmup_steps
            return warmup_factor * (1 - alpha) + alpha
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# -- random state ------------------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Every random generator's state, as plain data a ``weights_only`` load accepts."""
    # The legacy MT19937 generator always gives the 5-tuple; the stub also allows a dict.
    legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    kind, keys, pos, has_gauss, cached = legacy
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
