"""A training run from start to finish: check the data, build the model, fit, evaluate, report.

``train`` starts a new run and ``resume`` continues one from its last finished epoch; both
resolve the run's settings once (``settings.RunSettings``, which ``config.json`` holds) and
read the data once (``TrainData``), then hand over to ``fit``: ``setup`` builds the loader,
optimiser and schedule, ``run_epochs`` trains epoch by epoch, ``end_of_epoch`` decides what
an epoch leaves behind (val metrics, checkpoints, the metrics row, the early stop) and
``end_of_training`` is the one place after the last epoch (the best model's evaluation,
the report). Anything that writes files checks ``runtime.is_main`` so that a multi-process
(DistributedDataParallel) run writes once, from rank 0; ``runtime`` also lets such a run
swap in a distributed sampler and wrap the model, while checkpoints always hold the
unwrapped model (``distributed.py`` holds that runtime).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from tlsync.console import info, progress
from tlsync.errors import TlsyncError
from tlsync.events import VAL_METRICS
from tlsync.store import DatasetVersion, Store

from ..distributed.ddp import lost_contact
from ..distributed.runtime import Runtime
from ..evaluation.evaluate import evaluate_split
from ..evaluation.forgetting import check_forgetting
from ..evaluation.report import write_report
from ..models.zoo import freeze
from . import callbacks as events
from . import precise_bn, roi_align_cpu, runs
from .checkpoint import (
    load_checkpoint,
    rebuild_model,
    save_checkpoint,
)
from .data import DetectionDataset, make_loader, start_epoch, train_transforms
from .device import resolve_device
from .engine import (
    EpochResult,
    NonFiniteLoss,
    amp_settings,
    build_optimizer,
    build_scheduler,
    restore_training_state,
    rng_state,
    short,
    train_one_epoch,
)
from .settings import (
    BASE_BATCH,
    BASE_LR,
    DEFAULT_MODEL,
    RunSettings,
    TrainConfig,
    default_workers,
)
from .start import TrainData, check_data, initial_model, seed_everything

__all__ = ["BASE_BATCH", "BASE_LR", "DEFAULT_MODEL", "RunSettings", "RunState", "Runtime", "TrainConfig", "TrainData",
           "default_workers", "resolve_device", "resume", "train"]


@dataclass
class RunState:
    """What carries over from epoch to epoch and across a resume."""

    epoch: int = 0  # epochs finished
    best: float = -1.0  # best val mAP50-95 so far
    best_epoch: int = 0
    elapsed: float = 0.0  # wall seconds of training so far


@dataclass
class Fit:
    """Everything the epoch loop works with, built once by ``setup``."""

    run: Path
    settings: RunSettings
    version: DatasetVersion
    data: TrainData
    model: nn.Module  # the bare model, as checkpoints hold it
    net: nn.Module  # what the training steps call (wrapped for DDP, compiled)
    runtime: Runtime
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    metrics_log: runs.MetricsLog

    @property
    def weights(self) -> Path:
        return self.run / "weights"

    @property
    def has_val(self) -> bool:
        return bool(self.data.val)


def train(cfg: TrainConfig, store: Store | None = None, runtime: Runtime | None = None) -> Path:
    """Start a new run; returns its directory."""
    runtime = runtime or Runtime(resolve_device(cfg.device))
    version = runtime.open_dataset(store or Store(), cfg.dataset)
    data = check_data(version)
    seed_everything(cfg.seed)
    model, model_name, weights_source = initial_model(cfg, version.categories,
                                                      version.info.get("derived_from", {}).get("class_map", {}))
    settings = RunSettings.resolve(
        cfg, dataset=version.ref, content_hash=version.content_hash, categories=version.categories, model=model_name,
        weights_source=weights_source, world_size=runtime.world_size, device=str(runtime.device),
        versions=runs.environment())
    run = runtime.from_main(lambda: start_run(settings, version, data, runtime))
    with runs.says_where_it_stopped(run), events.session(run, settings.as_config(), version, runtime.is_main):
        return fit(run, settings, version, data, model, runtime, RunState(), None)


def start_run(settings: RunSettings, version: DatasetVersion, data: TrainData, runtime: Runtime) -> Path:
    """Create the run folder (rank 0 only) and write ``config.json``."""
    run = runs.create_run_dir(Path(settings.project), settings.name, version.name, settings.exist_ok)
    runs.write_config(run, settings.as_config())
    on = f"{runtime.world_size} processes, global batch {settings.global_batch}" if runtime.world_size > 1 \
        else f"device {runtime.device}"
    info(f"run {run}: {settings.model}, weights {settings.weights_source}, on {version.ref} "
         f"({len(data.train)} train / {len(data.val)} val images), {on}")
    return run


def resume(run: Path, store: Store | None = None, device: str | None = None, workers: int | None = None,
           runtime: Runtime | None = None, amp: str | None = None) -> Path:
    """Continue ``run`` from ``weights/last.pt``: same data, settings, optimiser state and random state.

    ``device``, ``workers`` and ``amp`` may change: where and how fast it runs (a run resumed on
    another GPU may need another precision), not what it computes. A run stopped before its
    first checkpoint has only ``config.json``: it starts again from epoch 1 in its own folder,
    with those settings, so its name is not used up.
    """
    run = Path(run)
    settings = RunSettings.from_config(runs.read_config(run))
    last = run / "weights" / "last.pt"
    runtime = runtime or Runtime(resolve_device(device or settings.device))
    settings = dataclasses.replace(settings, device=str(runtime.device), amp=amp or settings.amp,
                                   workers=settings.workers if workers is None else workers)
    if settings.world_size != runtime.world_size:
        raise TlsyncError(f"{run} was trained by {settings.world_size} process(es) and this job has "
                          f"{runtime.world_size}; resume it with as many (the global batch and data shards "
                          f"depend on it)")
    version = runtime.open_dataset(store or Store(), settings.dataset)
    if version.content_hash != settings.content_hash:
        raise TlsyncError(f"dataset {version.ref} changed since {run} started (content hash differs); "
                          f"start a new run with --weights {run} instead")
    if not last.exists():
        return restart(run, settings, version, runtime)
    checkpoint = load_checkpoint(last)
    model = rebuild_model(checkpoint)
    model.load_state_dict(checkpoint["model"])
    state = RunState(checkpoint["epoch"], checkpoint["best"], checkpoint["best_epoch"], checkpoint["elapsed"])
    if state.epoch >= settings.epochs or checkpoint.get("stopped"):
        raise TlsyncError(f"{run} already finished ({state.epoch} of {settings.epochs} epochs"
                          f"{', stopped early' if checkpoint.get('stopped') else ''}); nothing to resume")
    if runtime.is_main:
        runs.MetricsLog(run).truncate(state.epoch)
        info(f"resuming {run} after epoch {state.epoch} of {settings.epochs}")
    with runs.says_where_it_stopped(run), \
            events.session(run, settings.as_config(), version, runtime.is_main, resumed_after=state.epoch):
        return fit(run, settings, version, TrainData.read(version), model, runtime, state, checkpoint)


def restart(run: Path, settings: RunSettings, version: DatasetVersion, runtime: Runtime) -> Path:
    """Train ``run`` from epoch 1 again, in its folder, with the settings its ``config.json`` holds."""
    data = check_data(version)
    seed_everything(settings.seed)
    model, _, _ = initial_model(settings, version.categories)
    if runtime.is_main:
        runs.MetricsLog(run).truncate(0)
        info(f"{run} stopped before its first checkpoint: training it again from epoch 1 with its config.json")
    with runs.says_where_it_stopped(run), events.session(run, settings.as_config(), version, runtime.is_main):
        return fit(run, settings, version, data, model, runtime, RunState(), None)


def fit(run: Path, settings: RunSettings, version: DatasetVersion, data: TrainData, model: nn.Module,
        runtime: Runtime, state: RunState, checkpoint: dict[str, Any] | None) -> Path:
    """Set up, train epoch by epoch until done or stopped, then finish the run."""
    loop = setup(run, settings, version, data, model, runtime, checkpoint)
    with roi_align_cpu.faster_backward():  # CPU tensors only: on CUDA nothing changes
        stop_reason = run_epochs(loop, state)
    end_of_training(loop, state, stop_reason)
    return run


def setup(run: Path, settings: RunSettings, version: DatasetVersion, data: TrainData, model: nn.Module,
          runtime: Runtime, checkpoint: dict[str, Any] | None) -> Fit:
    """The loader, the model on its device, optimiser, schedule and scaler (restored when resuming)."""
    device = runtime.device
    dataset = DetectionDataset(data.train, [version.image_path(i) for i in data.train], settings.categories,
                               train_transforms(settings.img_size), settings.img_size)
    gpu = device.type == "cuda"
    loader = make_loader(dataset, settings.batch_size, settings.workers, settings.seed,
                         sampler=runtime.sampler(dataset, settings), pin_memory=gpu, persistent_workers=gpu)
    # cudnn.benchmark stays off (torch's default): it re-tunes for every new input shape, and a detector's
    # shapes change with each batch's padding, orientation group and the val evaluation.
    set_rois_per_image(model, settings.rois_per_image)
    model.to(device)
    net = runtime.wrap(model, settings)
    optimizer = build_optimizer(model, settings.optimizer, settings.lr, settings.momentum, settings.weight_decay)
    steps = len(loader)
    warmup = min(1000, max(1, round(settings.warmup_epochs * steps)))
    scheduler = build_scheduler(optimizer, steps * settings.epochs, warmup)
    amp_dtype, scaler = amp_settings(device, settings.amp)
    if amp_dtype is not None and runtime.is_main:
        info(f"mixed precision: {str(amp_dtype).removeprefix('torch.')}"
             f"{' with a loss scaler' if scaler.is_enabled() else ''} (--amp {settings.amp})")
    if checkpoint is not None:
        restore_training_state(checkpoint, optimizer, scheduler, scaler, device)
    return Fit(run, settings, version, data, model, net, runtime, loader, optimizer, scheduler, scaler, amp_dtype,
               runs.MetricsLog(run))


def run_epochs(loop: Fit, state: RunState) -> str:
    """Train from ``state.epoch`` to the last epoch; returns why it stopped early ("" if it did not)."""
    if loop.runtime.is_main:
        info(f"{'epoch':>9} {'loss':>8} {'P':>7} {'R':>7} {'mAP50':>7} {'mAP50-95':>9} {'time':>7}")
    for epoch in range(state.epoch, loop.settings.epochs):
        started = time.perf_counter()
        result = train_epoch(loop, state, epoch)
        stop_reason = end_of_epoch(loop, state, epoch, result, started)
        if stop_reason:
            return stop_reason
    return ""


def train_epoch(loop: Fit, state: RunState, epoch: int) -> EpochResult:
    """One pass over the training data, with the backbone frozen or not as the settings say."""
    settings, runtime = loop.settings, loop.runtime
    if settings.freeze == "backbone" or settings.freeze_epochs:
        frozen = settings.freeze == "backbone" or epoch < settings.freeze_epochs
        freeze(loop.model, "backbone" if frozen else "none")
    loop.model.train()
    start_epoch(loop.loader, epoch, settings.seed)
    label = epoch_label(loop, epoch)
    total = len(loop.loader.batch_sampler.sampler) * runtime.world_size  # type: ignore[union-attr]
    steps = len(loop.loader)
    with progress(label, total=total, unit="img") as update:

        def shown(images: int, losses: str, step: int) -> None:
            update(images * runtime.world_size, description=f"{label} {losses}", steps=(step, steps))

        try:
            result = train_one_epoch(loop.net, loop.optimizer, loop.loader, runtime.device, loop.scheduler,
                                     loop.scaler, loop.amp_dtype, settings.clip_norm, shown)
        except NonFiniteLoss as e:
            kept = (f"{loop.weights / 'last.pt'} keeps epoch {state.epoch}, the last good one" if state.epoch
                    else "no epoch had finished, so no checkpoint was written")
            raise TlsyncError(f"{label}: {e}; training stopped and {kept}. "
                              f"Try a lower --lr (it was {settings.lr:g})") from None
        except torch.distributed.DistBackendError as e:  # DDP's gradient all-reduce: a peer died or timed out
            raise lost_contact(e) from None
    if result.failures:
        first = result.failures[0]
        info(f"warning: skipped {len(result.failures)} image(s) that failed to decode "
             f"(first: item '{first.item_id}': {first.reason})")
    result.losses = runtime.average(result.losses)
    return result


def epoch_label(loop: Fit, epoch: int) -> str:
    return f"epoch {epoch + 1}/{loop.settings.epochs}"


def end_of_epoch(loop: Fit, state: RunState, epoch: int, result: EpochResult, started: float) -> str:
    """What a trained epoch leaves behind: val metrics, ``best.pt``/``last.pt``, the metrics row and
    summary line, and whether to stop early (returned: the reason, or "" to go on).

    Every rank calls it (val evaluation is shared under DDP); only rank 0 writes.
    """
    # Batch-norm statistics that match the weights, for the val evaluation and the checkpoints (issue 12).
    precise_bn.recompute(loop.model, loop.loader.dataset, loop.settings.precise_bn_batches,  # type: ignore[arg-type]
                         loop.settings.batch_size, loop.settings.seed, loop.runtime.device, loop.settings.workers)
    val: dict[str, Any] = {}
    if loop.has_val:  # a phase of its own, with its own progress: a large val split takes a while
        with progress(f"{epoch_label(loop, epoch)} val", total=len(loop.data.val), unit="img") as update:
            val = loop.runtime.evaluate(loop.model.eval(), loop.version, "val", loop.settings.categories,
                                        loop.runtime.device, None, workers=loop.settings.workers, progress=update)
    state.epoch, state.elapsed = epoch + 1, state.elapsed + time.perf_counter() - started
    improved = not loop.has_val or val["map50_95"] > state.best
    if improved:
        state.best, state.best_epoch = val.get("map50_95", state.best), state.epoch
    reason = loop.runtime.from_main(lambda: stop_reason(loop, state))  # rank 0's clock decides for every rank
    if loop.runtime.is_main:
        seconds = time.perf_counter() - started
        loop.metrics_log.append({"epoch": state.epoch, "seconds": seconds, "train_seconds": result.seconds,
                                 "lr": result.lr, "loss": sum(result.losses.values()), **result.losses,
                                 **{k: val[k] for k in VAL_METRICS if k in val}})
        events.epoch_end(state.epoch, result.losses, result.lr, val, seconds)
        save_state(loop, state, improved, bool(reason))
        info(summary_line(epoch_label(loop, epoch), result.losses, val, seconds, improved and loop.has_val))
    return reason


def stop_reason(loop: Fit, state: RunState) -> str:
    """Why training stops after this epoch: no val improvement for ``patience`` epochs, or the time limit."""
    settings = loop.settings
    if settings.patience and loop.has_val and state.epoch - state.best_epoch >= settings.patience:
        return (f"early stop: val mAP50-95 has not improved for {settings.patience} epochs "
                f"(best {state.best:.3f} at epoch {state.best_epoch})")
    if settings.time_limit and state.elapsed >= settings.time_limit and state.epoch < settings.epochs:
        return f"time limit of {settings.time_limit:g}s reached after epoch {state.epoch}"
    return ""


def set_rois_per_image(model: nn.Module, rois: int | None) -> None:
    """Apply ``TrainConfig.rois_per_image`` to models with an RoI sampler (it only matters in training)."""
    sampler = getattr(getattr(model, "roi_heads", None), "fg_bg_sampler", None)
    if rois and sampler is not None:
        sampler.batch_size_per_image = rois


def summary_line(label: str, losses: dict[str, float], val: dict[str, Any], seconds: float, best: bool) -> str:
    """The per-epoch line, Ultralytics-style: total loss, then val P, R, mAP50, mAP50-95."""
    scores = " ".join(f"{val[k]:>{w}.3f}" if k in val else f"{'-':>{w}}"
                      for k, w in (("precision", 7), ("recall", 7), ("map50", 7), ("map50_95", 9)))
    parts = " ".join(f"{short(k)} {v:.3f}" for k, v in losses.items())
    return f"{label.removeprefix('epoch '):>9} {sum(losses.values()):>8.3f} {scores} {seconds:>6.1f}s" + \
        ("  *best" if best else "") + f"   ({parts})"


def save_state(loop: Fit, state: RunState, best: bool, stopped: bool) -> None:
    """``best.pt`` when this epoch is the best, then ``last.pt`` with everything ``resume`` needs.

    ``last.pt`` is written last because it marks the epoch as done: killed in between, the
    run resumes from the previous epoch and simply redoes this one.
    """
    config, categories = loop.settings.as_config(), loop.settings.categories
    if best:
        save_checkpoint(loop.weights / "best.pt", loop.model, categories, config, epoch=state.epoch,
                        best=state.best, elapsed=state.elapsed)
        events.checkpoint_saved(loop.weights / "best.pt", True, state.epoch)
    extra = dict(optimizer=loop.optimizer.state_dict(), scheduler=loop.scheduler.state_dict(),
                 scaler=loop.scaler.state_dict(), epoch=state.epoch, best=state.best, best_epoch=state.best_epoch,
                 elapsed=state.elapsed, rng=rng_state(loop.runtime.device), stopped=stopped)
    save_checkpoint(loop.weights / "last.pt", loop.model, categories, config, **extra)
    events.checkpoint_saved(loop.weights / "last.pt", False, state.epoch)


def end_of_training(loop: Fit, state: RunState, stop_reason: str) -> None:
    """The one place after the last epoch (or the early stop): on rank 0, evaluate ``best.pt`` on
    val into ``eval/`` and write the report."""
    if not loop.runtime.is_main:
        return
    if stop_reason:
        info(stop_reason)
    if loop.has_val:
        best = load_checkpoint(loop.weights / "best.pt")
        loop.model.load_state_dict(best["model"])
        metrics = evaluate_split(loop.model.eval(), loop.version, "val", loop.settings.categories,
                                 loop.runtime.device, loop.run / "eval", workers=loop.settings.workers,
                                 model_name="weights/best.pt")
        events.eval_end(loop.run / "eval", metrics)
        info(f"best epoch {best['epoch']}: val mAP50-95 {metrics['map50_95']:.3f}, mAP50 {metrics['map50']:.3f}, "
             f"P {metrics['precision']:.3f}, R {metrics['recall']:.3f}, F1 {metrics['f1']:.3f}")
    check_forgetting(loop.run, loop.settings.as_config(), loop.model, loop.runtime.device, loop.version.store)
    write_report(loop.run)
    events.run_end(loop.run, loop.run / "report.html", {**dataclasses.asdict(state), "stop_reason": stop_reason})
