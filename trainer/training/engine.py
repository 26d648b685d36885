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

from tlsync.console import info
from tlsync.errors import TlsyncError

from ..distributed.ddp import failing_ranks
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


AMP_MODES = ("auto", "bf16", "fp16", "off")
# bf16 runs on tensor cores from Ampere (sm80). Below it torch.cuda.is_bf16_supported() still says yes (it counts
# emulation), but bf16 convolutions bypass cuDNN and run several times slower than fp16.
NATIVE_BF16 = (8, 0)


def amp_dtype(device: torch.device, mode: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``--amp mode`` on ``device`` (``None``: full precision).

    ``auto`` decides by compute capability: bf16 where it is native (no scaler needed, no
    overflow), else fp16 with a GradScaler. The CPU trains in fp32 (its autocast speeds up
    little and torchvision's detection ops do not all support it).
    """
    if mode not in AMP_MODES:
        raise TlsyncError(f"--amp {mode!r}: use {', '.join(AMP_MODES)}")
    if mode == "off" or (device.type != "cuda" and mode == "auto"):
        return None
    if device.type != "cuda":
        raise TlsyncError(f"--amp {mode}: mixed precision runs on CUDA GPUs only; use --amp auto or off on {device}")
    if mode == "fp16":
        return torch.float16
    capability = torch.cuda.get_device_capability(device)
    native = capability >= NATIVE_BF16
    if mode == "bf16" and not native:
        info(f"note: --amp bf16 on a GPU of compute capability {capability[0]}.{capability[1]} (below 8.0) is "
             f"emulated and slower than --amp fp16")
    if mode == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if native else torch.float16


def amp_settings(device: torch.device, mode: str = "auto") -> tuple[torch.dtype | None, torch.amp.GradScaler]:
    """``(autocast dtype, scaler)``: the scaler is live only for fp16, whose small range needs loss scaling."""
    dtype = amp_dtype(device, mode)
    return dtype, torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def train_one_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: Iterable, device: torch.device,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                    amp_dtype: torch.dtype | None = None, clip_norm: float = 10.0,
                    progress: Callable[..., None] | None = None) -> EpochResult:
    """Train over ``loader`` once; raise ``NonFiniteLoss`` (before stepping) if the loss blows up.

    ``progress(images_done, losses_text, steps_done)`` is called after every step.
    """
    started, images, failures = time.perf_counter(), 0, []
    totals: dict[str, float] = {}
    for step, (batch, targets, failed) in enumerate(loader):
        failures += failed
        # Under DDP a rank that decided alone (skip a step, stop) would leave the others waiting in the next
        # gradient all-reduce until the timeout; so each decision is one all-reduced flag, taken by every rank.
        if failing_ranks(not batch, device):  # every image of a batch failed to decode: all ranks skip the step
            continue
        batch = [img.to(device, non_blocking=True) for img in batch]
        targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss_dict = model(batch, targets)
            loss = sum(loss_dict.values())
        values = {k: v.item() for k, v in loss_dict.items()}
        bad = failing_ranks(not math.isfinite(loss.item()), device)
        if bad:
            raise NonFiniteLoss(non_finite_message(loss.item(), values, step, bad))
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
            progress(images, " ".join(f"{short(k)} {totals[k] / images:.3f}" for k in totals), step + 1)
    return EpochResult({k: v / max(images, 1) for k, v in totals.items()}, images, time.perf_counter() - started,
                       optimizer.param_groups[0]["lr"], failures)


def non_finite_message(loss: float, values: dict[str, float], step: int, bad: list[int]) -> str:
    """This rank's losses when its own loss blew up, else the ranks whose did."""
    if math.isfinite(loss):
        return f"the loss became non-finite on rank(s) {', '.join(map(str, bad))} at iteration {step + 1}"
    shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
    return f"the loss became {loss} at iteration {step + 1} ({shown})"


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

def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Every random generator's state, as plain data a ``weights_only`` load accepts.

    Of CUDA's generators only the training device's (default: the current one): a resume
    may see fewer GPUs (another machine, ``CUDA_VISIBLE_DEVICES``) or none, and it needs
    only the one it trains on.
    """
    device = device or current_device()
    # The legacy MT19937 generator always gives the 5-tuple; the stub also allows a dict.
    legacy = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    kind, keys, pos, has_gauss, cached = legacy
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def current_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore ``rng_state``'s generators; CUDA's onto ``device`` (nothing to restore when it was saved on the CPU).

    Checkpoints written before kept a list, one state per GPU then visible: this device's
    entry is used when there is one.
    """
    device = device or current_device()
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):
        cuda = cuda[device.index or 0] if (device.index or 0) < len(cuda) else None
    if device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def restore_training_state(checkpoint: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any,
                           scaler: torch.amp.GradScaler, device: torch.device) -> None:
    """Optimiser, schedule, loss scale and random state from ``last.pt``, for ``--resume``.

    A disabled scaler (a run on the CPU, in bf16 or with ``--amp off``) saves ``{}``, which an
    enabled one refuses to load: resumed under fp16, such a run starts a fresh loss scale,
    as it would have on its first fp16 step.
    """
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    if checkpoint.get("scaler"):
        scaler.load_state_dict(checkpoint["scaler"])
    set_rng_state(checkpoint["rng"], device)
