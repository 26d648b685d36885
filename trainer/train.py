"""A training run from start to finish: check the data, build the model, fit, evaluate, report.

``TrainConfig`` holds every knob with its default and the reason for it. ``train`` starts a
new run and ``resume`` continues one from its last finished epoch; both hand over to
``_fit``, the epoch loop. Anything that writes files checks ``runtime.is_main`` so that a
multi-process (DistributedDataParallel) run writes once, from rank 0; ``runtime`` also lets
such a run swap in a distributed sampler and wrap the model, while checkpoints always hold
the unwrapped model (``distributed.py`` holds that runtime).
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Sampler

from tlsync.console import info, progress
from tlsync.errors import TlsyncError
from tlsync.models import WEIGHTS
from tlsync.store import DatasetVersion, Store

from . import runs
from .checkpoint import load_checkpoint, rebuild_model, resolve_checkpoint, save_checkpoint, transfer_weights
from .data import DetectionDataset, make_loader, start_epoch, train_transforms
from .engine import (NonFiniteLoss, amp_settings, build_optimizer, build_scheduler, rng_state, set_rng_state,
                     short, train_one_epoch)
from .evaluate import evaluate_split
from .forgetting import check_forgetting
from .report import write_report
from .zoo import build_model, freeze

DEFAULT_MODEL = "fasterrcnn_mobilenet_v3_large_fpn"
BASE_BATCH = 16  # the batch size the base learning rates below were tuned for (torchvision's references)
BASE_LR = {"sgd": 0.02, "adamw": 1e-4}
VAL_METRICS = ("map50_95", "map50", "precision", "recall", "f1")
T = TypeVar("T")


@dataclass
class TrainConfig:
    """Every setting of a run; ``config.json`` records them all, ``--resume`` reads them back.

    The defaults suit small datasets fine-tuned from pretrained weights: SGD with momentum
    0.9 and weight decay 1e-4 (torchvision's detection recipe, which transfers well), the
    learning rate scaled linearly with the global batch size (``batch_size`` per process
    times the number of processes) from 0.02 at 16 images (the linear scaling rule of Goyal
    et al., which torchvision's references follow), a warm-up over the first epoch (fresh
    heads produce large gradients that would wreck pretrained features) and a cosine decay
    to 1% for a stable end. Gradients are clipped at norm 10.
    """

    dataset: str
    model: str | None = None  # default: DEFAULT_MODEL, or the checkpoint's model with --weights PATH
    weights: str = "coco"  # coco | imagenet | none | a run directory or checkpoint file
    epochs: int = 20
    batch_size: int = 4  # per process: a run on N GPUs takes N x batch_size images per step
    img_size: int = 640  # longest image side fed to the model
    optimizer: str = "sgd"  # sgd | adamw (AdamW suits transformer-like backbones and very small batches)
    lr: float | None = None  # default: BASE_LR[optimizer] * global batch / 16
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0  # capped at 1000 iterations
    clip_norm: float = 10.0
    # Region proposals sampled per image for the box head of two-stage (Faster R-CNN) models.
    # torchvision uses 512; Fast R-CNN used 64. 128 keeps every positive of a typical small
    # dataset image and makes a CPU step ~2.4x faster (RoIAlign's backward dominates on CPU).
    rois_per_image: int | None = 128
    freeze: str | None = None  # "backbone": train the heads only (backbone and FPN frozen) for the whole run
    freeze_epochs: int = 0  # backbone frozen for the first N epochs, then everything trains
    patience: int = 10  # stop after this many epochs without a better val mAP50-95 (0: never)
    workers: int | None = None  # data-loading processes; default min(4, CPUs - 1)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    devices: int = 1  # worker processes on this machine (one per GPU); torchrun sets its own
    sync_bn: bool = False  # batch-norm statistics over the global batch (CUDA, several processes)
    compile: bool = False  # torch.compile the model (speeds up models it can capture; costs start-up time)
    seed: int = 0
    time_limit: float | None = None  # seconds; stop after the epoch that passes it (quickstart)
    name: str | None = None  # run folder name; default <dataset>-N
    project: str = "runs"
    exist_ok: bool = False
    forget_check: str = "on"  # on | off: score a continued run on its parent's evaluation data (forgetting.py)
    forget_tolerance: float = 0.05  # warn when a shared class's AP50 drops by more than this

    def resolved_lr(self, world_size: int = 1) -> float:
        """``--lr``, else the base rate scaled to the global batch of ``world_size`` processes."""
        if self.lr is not None:
            return self.lr
        if self.optimizer not in BASE_LR:
            raise TlsyncError(f"unknown optimizer '{self.optimizer}' (use {' or '.join(BASE_LR)})")
        return BASE_LR[self.optimizer] * self.batch_size * world_size / BASE_BATCH


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
        return torch.compile(model) if cfg.compile else model

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


@dataclass
class RunState:
    """What carries over from epoch to epoch and across a resume."""

    epoch: int = 0  # epochs finished
    best: float = -1.0  # best val mAP50-95 so far
    best_epoch: int = 0
    elapsed: float = 0.0  # wall seconds of training so far


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TlsyncError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise TlsyncError(f"--device {name}: no such CUDA device on this machine "
                          f"({torch.cuda.device_count()} available); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise TlsyncError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))


def check_data(version: DatasetVersion) -> tuple[list, list]:
    """The train and val items; refuse data that cannot train, warn about classes that will not."""
    train_items, val_items = list(version.items("train")), list(version.items("val"))
    if not train_items:
        raise TlsyncError(f"dataset {version.ref} has no items in its train split; nothing to train on "
                          f"(pull more data, or change --split-ratios)")
    if not any(item.annotations for item in train_items):
        raise TlsyncError(f"dataset {version.ref} has no boxes in its train split ({len(train_items)} images); "
                          f"a detector needs labelled boxes")
    labelled = {box.label for item in train_items for box in item.annotations}
    missing = [name for name in version.categories if name not in labelled]
    if missing:
        info(f"warning: {len(missing)} class(es) have no training boxes and cannot be learned: {', '.join(missing)}")
    if not val_items:
        info(f"warning: {version.ref} has no val split: no per-epoch evaluation, no early stopping, "
             f"best.pt is the last epoch")
    return train_items, val_items


def initial_model(cfg: TrainConfig, categories: list[str]) -> tuple[nn.Module, str, str]:
    """``(model, model name, weights source)``: pretrained or from scratch, or from an earlier tlsync model."""
    if cfg.weights in WEIGHTS:
        name = cfg.model or DEFAULT_MODEL
        return build_model(name, len(categories), cfg.weights, cfg.img_size), name, cfg.weights
    path = resolve_checkpoint(Path(cfg.weights))
    checkpoint = load_checkpoint(path)
    name = checkpoint["config"]["model"]
    if cfg.model and cfg.model != name:
        raise TlsyncError(f"--weights {cfg.weights} holds a {name} model; it cannot start a {cfg.model} "
                          f"(leave out --model, or use --weights coco|imagenet|none)")
    model = rebuild_model(checkpoint, len(categories), cfg.img_size)
    mapping = transfer_weights(model, checkpoint, categories)
    info(f"continuing from {path} ({checkpoint['config'].get('dataset', '?')}):")
    for line in describe_mapping(mapping):
        info("  " + line)
    return model, name, f"{path} ({checkpoint['config'].get('dataset', '?')})"


def describe_mapping(mapping: dict[str, Any]) -> list[str]:
    """Lines for the class mapping ``transfer_weights`` returned (kept, new and dropped classes)."""
    return [f"{key}: {', '.join(map(str, value)) or 'none'}" for key, value in mapping.items()]


def train(cfg: TrainConfig, store: Store | None = None, runtime: Runtime | None = None) -> Path:
    """Start a new run; returns its directory."""
    runtime = runtime or Runtime(resolve_device(cfg.device))
    version = runtime.open_dataset(store or Store(), cfg.dataset)
    train_items, val_items = check_data(version)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    model, model_name, weights_source = initial_model(cfg, version.categories)
    config = {
        **dataclasses.asdict(cfg), "dataset": version.ref, "content_hash": version.content_hash,
        "model": model_name, "weights_source": weights_source, "categories": version.categories,
        "lr": cfg.resolved_lr(runtime.world_size), "world_size": runtime.world_size,
        "global_batch": cfg.batch_size * runtime.world_size,
        "workers": default_workers() if cfg.workers is None else cfg.workers,
        "device": str(runtime.device), "versions": runs.environment(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

    def start_run() -> Path:
        run = runs.create_run_dir(Path(cfg.project), cfg.name, version.name, cfg.exist_ok)
        runs.write_config(run, config)
        on = f"{runtime.world_size} processes, global batch {config['global_batch']}" if runtime.world_size > 1 \
            else f"device {runtime.device}"
        info(f"run {run}: {model_name}, weights {weights_source}, on {version.ref} "
             f"({len(train_items)} train / {len(val_items)} val images), {on}")
        return run

    run = runtime.from_main(start_run)
    return _fit(run, config, version, model, runtime, RunState(), None)


def resume(run: Path, store: Store | None = None, device: str | None = None, workers: int | None = None,
           runtime: Runtime | None = None) -> Path:
    """Continue ``run`` from ``weights/last.pt``: same data, settings, optimiser state and random state."""
    run = Path(run)
    config = runs.read_config(run)
    last = run / "weights" / "last.pt"
    if not last.exists():
        raise TlsyncError(f"{run} has no finished epoch to resume from ({last} is missing); start it again")
    if workers is not None:
        config["workers"] = workers
    runtime = runtime or Runtime(resolve_device(device or config["device"]))
    config["device"] = str(runtime.device)
    if config.get("world_size", 1) != runtime.world_size:
        raise TlsyncError(f"{run} was trained by {config.get('world_size', 1)} process(es) and this job has "
                          f"{runtime.world_size}; resume it with as many (the global batch and data shards depend on it)")
    version = runtime.open_dataset(store or Store(), config["dataset"])
    if version.content_hash != config["content_hash"]:
        raise TlsyncError(f"dataset {version.ref} changed since {run} started (content hash differs); "
                          f"start a new run with --weights {run} instead")
    checkpoint = load_checkpoint(last)
    model = rebuild_model(checkpoint)
    model.load_state_dict(checkpoint["model"])
    state = RunState(checkpoint["epoch"], checkpoint["best"], checkpoint["best_epoch"], checkpoint["elapsed"])
    if state.epoch >= config["epochs"] or checkpoint.get("stopped"):
        raise TlsyncError(f"{run} already finished ({state.epoch} of {config['epochs']} epochs"
                          f"{', stopped early' if checkpoint.get('stopped') else ''}); nothing to resume")
    if runtime.is_main:
        runs.MetricsLog(run).truncate(state.epoch)
        info(f"resuming {run} after epoch {state.epoch} of {config['epochs']}")
    return _fit(run, config, version, model, runtime, state, checkpoint)


def _fit(run: Path, config: dict[str, Any], version: DatasetVersion, model: nn.Module, runtime: Runtime,
         state: RunState, checkpoint: dict[str, Any] | None) -> Path:
    """The epoch loop: train, evaluate on val, log, checkpoint, stop early or at the limit."""
    cfg = TrainConfig(**{f.name: config[f.name] for f in dataclasses.fields(TrainConfig) if f.name in config})
    device, categories = runtime.device, config["categories"]
    items = list(version.items("train"))
    has_val = any(True for _ in version.items("val"))
    dataset = DetectionDataset(items, [version.image_path(i) for i in items], categories,
                               train_transforms(cfg.img_size), cfg.img_size)
    gpu = device.type == "cuda"
    loader = make_loader(dataset, cfg.batch_size, config["workers"], cfg.seed, sampler=runtime.sampler(dataset, cfg),
                         pin_memory=gpu, persistent_workers=gpu)
    torch.backends.cudnn.benchmark = gpu  # picks the fastest conv kernels per input shape (shapes repeat)
    set_rois_per_image(model, cfg.rois_per_image)
    model.to(device)
    net = runtime.wrap(model, cfg)
    optimizer = build_optimizer(model, cfg.optimizer, config["lr"], cfg.momentum, cfg.weight_decay)
    steps = len(loader)
    scheduler = build_scheduler(optimizer, steps * cfg.epochs, min(1000, max(1, round(cfg.warmup_epochs * steps))))
    amp_dtype, scaler = amp_settings(device)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
    metrics_log, weights = runs.MetricsLog(run), run / "weights"
    if runtime.is_main:
        info(f"{'epoch':>9} {'loss':>8} {'P':>7} {'R':>7} {'mAP50':>7} {'mAP50-95':>9} {'time':>7}")
    stop_reason = ""
    for epoch in range(state.epoch, cfg.epochs):
        started = time.perf_counter()
        if cfg.freeze == "backbone" or cfg.freeze_epochs:
            freeze(model, "backbone" if cfg.freeze == "backbone" or epoch < cfg.freeze_epochs else "none")
        model.train()
        start_epoch(loader, epoch, cfg.seed)
        label = f"epoch {epoch + 1}/{cfg.epochs}"
        with progress(label, total=len(loader.batch_sampler.sampler) * runtime.world_size, unit="img") as update:
            try:
                result = train_one_epoch(net, optimizer, loader, device, scheduler, scaler, amp_dtype, cfg.clip_norm,
                                         lambda n, losses: update(n * runtime.world_size,
                                                                  description=f"{label} {losses}"))
            except NonFiniteLoss as e:
                kept = (f"{weights / 'last.pt'} keeps epoch {state.epoch}, the last good one" if state.epoch
                        else "no epoch had finished, so no checkpoint was written")
                raise TlsyncError(f"{label}: {e}; training stopped and {kept}. "
                                  f"Try a lower --lr (it was {config['lr']:g})") from None
        if result.failures:
            first = result.failures[0]
            info(f"warning: skipped {len(result.failures)} image(s) that failed to decode "
                 f"(first: item '{first.item_id}': {first.reason})")
        result.losses = runtime.average(result.losses)
        val = runtime.evaluate(model.eval(), version, "val", categories, device, None) if has_val else {}
        state.epoch, state.elapsed = epoch + 1, state.elapsed + time.perf_counter() - started
        improved = not has_val or val["map50_95"] > state.best
        if improved:
            state.best, state.best_epoch = val.get("map50_95", state.best), state.epoch
        if cfg.patience and has_val and state.epoch - state.best_epoch >= cfg.patience:
            stop_reason = (f"early stop: val mAP50-95 has not improved for {cfg.patience} epochs "
                           f"(best {state.best:.3f} at epoch {state.best_epoch})")
        elif cfg.time_limit and state.elapsed >= cfg.time_limit and state.epoch < cfg.epochs:
            stop_reason = f"time limit of {cfg.time_limit:g}s reached after epoch {state.epoch}"
        stop_reason = runtime.from_main(lambda: stop_reason)  # rank 0's clock decides for every rank
        if runtime.is_main:
            seconds = time.perf_counter() - started
            metrics_log.append({"epoch": state.epoch, "seconds": seconds, "train_seconds": result.seconds,
                                "lr": result.lr, "loss": sum(result.losses.values()), **result.losses,
                                **{k: val[k] for k in VAL_METRICS if k in val}})
            save_state(weights, model, config, optimizer, scheduler, scaler, state, improved, bool(stop_reason))
            info(summary_line(label, result.losses, val, seconds, improved and has_val))
        if stop_reason:
            break
    if runtime.is_main:
        finish(run, config, version, model, device, stop_reason, has_val)
    return run


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


def save_state(weights: Path, model: nn.Module, config: dict[str, Any], optimizer: torch.optim.Optimizer,
               scheduler: Any, scaler: torch.amp.GradScaler, state: RunState, best: bool, stopped: bool) -> None:
    """``best.pt`` when this epoch is the best, then ``last.pt`` with everything ``resume`` needs.

    ``last.pt`` is written last because it marks the epoch as done: killed in between, the
    run resumes from the previous epoch and simply redoes this one.
    """
    if best:
        save_checkpoint(weights / "best.pt", model, config["categories"], config, epoch=state.epoch,
                        best=state.best, elapsed=state.elapsed)
    extra = dict(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), scaler=scaler.state_dict(),
                 epoch=state.epoch, best=state.best, best_epoch=state.best_epoch, elapsed=state.elapsed,
                 rng=rng_state(), stopped=stopped)
    save_checkpoint(weights / "last.pt", model, config["categories"], config, **extra)


def finish(run: Path, config: dict[str, Any], version: DatasetVersion, model: nn.Module, device: torch.device,
           stop_reason: str, has_val: bool) -> None:
    """Evaluate ``best.pt`` on val into ``eval/`` and write the report."""
    if stop_reason:
        info(stop_reason)
    if has_val:
        best = load_checkpoint(run / "weights" / "best.pt")
        model.load_state_dict(best["model"])
        metrics = evaluate_split(model.eval(), version, "val", config["categories"], device, run / "eval")
        info(f"best epoch {best['epoch']}: val mAP50-95 {metrics['map50_95']:.3f}, mAP50 {metrics['map50']:.3f}, "
             f"P {metrics['precision']:.3f}, R {metrics['recall']:.3f}, F1 {metrics['f1']:.3f}")
    check_forgetting(run, config, model, device, version.store)  # continued runs: scored on the parent's data
    write_report(run)
