"""A run's settings: the knobs a user sets (``TrainConfig``) and what a run resolved them to.

``TrainConfig`` holds every knob with its default and the reason for it. ``RunSettings``
is the same knobs after the run has decided what ``None`` means (the learning rate for
its world size, the data-loading workers, the model and its weights, the device) plus
what it learned from the data (the dataset version, its classes); it is decided once,
when a run starts, written to ``config.json`` and read back by ``--resume``, so every
later step reads one object and a resumed run computes exactly what the original did.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from tlsync.errors import TlsyncError

DEFAULT_MODEL = "fasterrcnn_mobilenet_v3_large_fpn"
BASE_BATCH = 16  # the batch size the base learning rates below were tuned for (torchvision's references)
BASE_LR = {"sgd": 0.02, "adamw": 1e-4}


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
    # old name -> new name: seeds a child class from a parent class spelled otherwise (``Car`` -> ``car``)
    # with --weights RUN, and renames classes of several --dataset before their union is derived
    class_map: dict[str, str] = field(default_factory=dict)
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
    compile: bool = False  # torch.compile the backbone and FPN (the rest breaks graphs: .item(), NMS, proposals)
    # Mixed precision on CUDA (engine.amp_dtype): auto is bf16 from compute capability 8.0 (Ampere), where it is
    # native, else fp16 with a GradScaler (bf16 is emulated below sm80, without cuDNN's convolutions); off on the CPU.
    amp: str = "auto"  # auto | bf16 | fp16 | off
    seed: int = 0
    # Batch-norm statistics recomputed over this many seeded, un-augmented train batches before every
    # val evaluation and checkpoint (precise BN, see precise_bn.py); 0: keep the moving averages. 50 x 4 images:
    # on thermal a 100-image sample of 142 scored test mAP50 0.036 under a recompute over all of them (issue 26)
    precise_bn_batches: int = 50
    time_limit: float | None = None  # seconds; stop after the epoch that passes it (quickstart)
    name: str | None = None  # run folder name; default <dataset>-N
    project: str = "runs"
    exist_ok: bool = False
    log: tuple[str, ...] = ()  # trackers fed each epoch: tensorboard, mlflow (events.py; loggers.py)
    log_images: bool = False  # also send the val image grid (pictures of the data) to the trackers
    mlflow_experiment: str | None = None  # default: the dataset name
    forget_check: str = "on"  # on | off: score a continued run on its parent's evaluation data (forgetting.py)
    forget_tolerance: float = 0.05  # warn when a shared class's AP50 drops by more than this

    def resolved_lr(self, world_size: int = 1) -> float:
        """``--lr``, else the base rate scaled to the global batch of ``world_size`` processes."""
        if self.lr is not None:
            return self.lr
        if self.optimizer not in BASE_LR:
            raise TlsyncError(f"unknown optimizer '{self.optimizer}' (use {' or '.join(BASE_LR)})")
        return BASE_LR[self.optimizer] * self.batch_size * world_size / BASE_BATCH


# TrainConfig fields that a command starting runs of its own (curve, audit) sets for each run it starts.
PER_RUN_FIELDS = ("dataset", "name", "project", "exist_ok")


def default_workers() -> int:
    return max(0, min(4, (os.cpu_count() or 1) - 1))


@dataclass
class RunSettings(TrainConfig):
    """A run's ``TrainConfig`` with every default decided, and what the run trains on.

    ``as_config()`` is ``config.json`` (and the ``config`` inside every checkpoint);
    ``from_config`` reads it back. Keys ``config.json`` holds that this version does not
    know (written by a newer tlsync) are kept in ``extra`` and written back unchanged.
    """

    model: str = DEFAULT_MODEL
    lr: float = 0.0
    workers: int = 0
    content_hash: str = ""
    weights_source: str = ""
    categories: list[str] = field(default_factory=list)
    world_size: int = 1
    global_batch: int = 0
    versions: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def resolve(cls, cfg: TrainConfig, *, dataset: str, content_hash: str, categories: list[str], model: str,
                weights_source: str, world_size: int, device: str, versions: dict[str, Any]) -> RunSettings:
        """``cfg`` as this run will use it: one process of ``world_size``, on ``device``."""
        return cls(**{
            **dataclasses.asdict(cfg), "dataset": dataset, "content_hash": content_hash, "model": model,
            "weights_source": weights_source, "categories": list(categories),
            "lr": cfg.resolved_lr(world_size), "world_size": world_size, "global_batch": cfg.batch_size * world_size,
            "workers": default_workers() if cfg.workers is None else cfg.workers, "device": device,
            "versions": versions, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> RunSettings:
        """The settings ``as_config`` wrote (``config.json``); fields it lacks take their defaults."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in config.items() if k in names},
                   extra={k: v for k, v in config.items() if k not in names})

    def as_config(self) -> dict[str, Any]:
        config = dataclasses.asdict(self)
        extra = config.pop("extra")
        return {**config, **extra}
