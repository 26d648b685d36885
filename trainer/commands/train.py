"""``tlsync train``.

Loaded lazily by ``tlsync.cli`` (they import torch). The option defaults are read from
``TrainConfig`` (``settings.py``) so the help text, the library and ``config.json`` never disagree.
Results (the run directory, the report) go to stdout; progress and the per-epoch lines
go to stderr.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from tlsync.console import echo
from tlsync.errors import TlsyncError

from ..trackers.builtin import check_trackers, parse_trackers
from ..training.settings import PER_RUN_FIELDS, TrainConfig

DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
# Options that may accompany --resume: where and how fast it runs, not what it computes.
RESUME_OPTIONS = ("resume", "device", "workers", "amp")


def option(*decls: str, **kwargs: Any) -> Any:
    """A click option whose default (when not given) is the ``TrainConfig`` field of the same name."""
    name = decls[-1].lstrip("-").replace("-", "_") if not decls[-1].isidentifier() else decls[-1]
    if name in DEFAULTS and "default" not in kwargs and not kwargs.get("is_flag"):
        kwargs["default"] = DEFAULTS[name]
        kwargs.setdefault("show_default", DEFAULTS[name] is not None)
    return click.option(*decls, **kwargs)


def trackers_option(value: str | None) -> tuple[str, ...]:
    try:
        return parse_trackers(value)
    except TlsyncError as e:
        raise click.BadParameter(str(e).removeprefix(f"--log {value}: ")) from None


@click.command()
@option("--dataset", multiple=True,
        help="Dataset to train on: NAME (latest version) or NAME@N. Repeat it to train on the union, derived "
             "as `tlsync datasets derive union-A-B --from A --from B` would (classes spelled alike stop the run).")
@option("--model", help="Detector (see `tlsync weights list`); default fasterrcnn_mobilenet_v3_large_fpn, "
                        "or the checkpoint's model with --weights PATH.")
@option("--weights", help="Start from: coco, imagenet (backbone only), none (scratch), "
                          "or a run directory / checkpoint file to continue from.")
@option("--class-map", "class_map", metavar="MAP",
        help="old=new,... or a .yaml/.json file: with --weights RUN, the parent's class 'old' seeds the child's "
             "'new' (Car=car); with several --dataset, also renames their classes before the union.")
@option("--epochs", type=click.IntRange(1))
@option("--batch-size", type=click.IntRange(1), help="Images per step per process (per GPU).")
@option("--img-size", type=click.IntRange(32), help="Longest image side fed to the model.")
@option("--optimizer", type=click.Choice(["sgd", "adamw"]))
@option("--lr", type=click.FloatRange(0, min_open=True),
        help="Peak learning rate; default 0.02 (SGD) or 1e-4 (AdamW) times the global batch size / 16 "
             "(global batch: --batch-size times the number of processes).")
@option("--momentum", type=click.FloatRange(0, 1))
@option("--weight-decay", type=click.FloatRange(0))
@option("--warmup-epochs", type=click.FloatRange(0), help="Linear warm-up length (capped at 1000 iterations).")
@option("--clip-norm", type=click.FloatRange(0, min_open=True), help="Gradient norm clip.")
@option("--rois-per-image", type=click.IntRange(1),
        help="Proposals sampled per image for Faster R-CNN's box head (torchvision's default is 512).")
@option("--freeze", type=click.Choice(["backbone"]),
        help="Train only the detection heads (RPN, box heads), for the whole run.")
@option("--freeze-epochs", type=click.IntRange(0), help="Freeze the backbone for the first N epochs, then train all.")
@option("--patience", type=click.IntRange(0), help="Stop after N epochs without a better val mAP50-95 (0: never).")
@option("--workers", type=click.IntRange(0), help="Data-loading processes; default min(4, CPUs - 1).")
@option("--device", help="auto, cpu, cuda or cuda:N.")
@option("--devices", type=click.IntRange(1),
        help="Train with N processes on this machine (DistributedDataParallel), one per GPU; with --device cpu, "
             "N CPU processes. Under torchrun, torchrun decides.")
@option("--sync-bn", is_flag=True, help="Synchronise batch-norm statistics across GPUs (SyncBatchNorm; CUDA only).")
@option("--precise-bn-batches", type=click.IntRange(0),
        help="Before each val eval and checkpoint, recompute batch-norm statistics over N seeded, un-augmented "
             "train batches (precise BN; only models with trainable batch norm; 0: off).")
@option("--compile", is_flag=True,
        help="torch.compile the backbone and FPN (the rest of a detector breaks graphs); costs start-up time.")
@option("--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]),
        help="Mixed precision on CUDA: auto picks bf16 on GPUs of compute capability 8.0+ (Ampere, Hopper), "
             "fp16 with loss scaling below; off trains in fp32 (the CPU always does).")
@option("--seed", type=int)
@option("--time-limit", type=click.FloatRange(0, min_open=True),
        help="Seconds; stop after the epoch that passes it.")
@option("--name", help="Run folder name; default <dataset>-N (the first free N).")
@option("--project", help="Folder that holds the runs.")
@option("--exist-ok", is_flag=True, help="Allow writing into an existing --name folder.")
@option("--log", default=None, callback=lambda ctx, param, value: trackers_option(value), metavar="TRACKERS",
        help="Send each epoch to trackers: tensorboard (RUN/tensorboard/), mlflow (MLFLOW_TRACKING_URI), "
             "or tensorboard,mlflow. Other trackers come as plugins (docs/plugins.md).")
@option("--log-images", is_flag=True, help="Also send the val image grid (pictures of your data) to the trackers.")
@option("--mlflow-experiment", help="MLflow experiment; default the dataset name.")
@option("--forget-check", type=click.Choice(["on", "off"]),
        help="Continuing a run: also score the new model on the parent's evaluation data (forgetting.json).")
@option("--forget-tolerance", type=click.FloatRange(0, 1), help="Warn when a class's AP50 drops by more than this.")
@option("--resume", type=click.Path(path_type=Path), default=None,
        help="Continue an interrupted run from its last finished epoch (with --device/--workers/--amp only).")
@click.pass_context
def train(ctx: click.Context, resume: Path | None, **options: Any) -> None:
    """Fine-tune a detector on a dataset, or resume an interrupted run."""
    from ..distributed import ddp as distributed
    from ..distributed import launcher
    from ..training import fit as training

    if resume is not None:
        run = _resume(ctx, resume, options)
    else:
        options["dataset"], options["class_map"] = _datasets(options["dataset"], options["class_map"],
                                                             options["weights"])
        cfg = TrainConfig(**options)
        check_trackers(cfg.log)  # a missing extra fails here, before a run folder exists
        run = launcher.run(partial(training.train, cfg), cfg.devices, cfg.device, cfg.sync_bn)
    if distributed.is_main():  # under torchrun every rank gets here; one prints
        echo(f"run: {run}")
        echo(f"report: {run / 'report.html'}")


def _datasets(refs: tuple[str, ...], class_map: str | None, weights: str) -> tuple[str, dict[str, str]]:
    """The one dataset a run trains on and the parsed ``--class-map``: ``--dataset`` itself, or the union
    of several, derived under ``tlsync datasets derive``'s rules (``tlsync.derive.train_union``)."""
    from tlsync.class_rules import parse_class_map
    from tlsync.console import info
    from tlsync.derive import train_union
    from tlsync.models import WEIGHTS
    from tlsync.store import Store

    if not refs:
        raise TlsyncError("give --dataset NAME (or --resume RUN)")
    mapping = parse_class_map(class_map) if class_map else {}
    if mapping and len(refs) == 1 and weights in WEIGHTS:
        raise TlsyncError("--class-map maps a parent run's classes (--weights RUN) or those of several --dataset; "
                          "to rename one dataset's classes: tlsync datasets derive NEW --from NAME --class-map MAP")
    if len(refs) == 1:
        return refs[0], mapping
    union = train_union(Store(), refs, mapping)
    sources = ", ".join(s["ref"] for s in union.provenance["sources"])
    info(f"training on {union.ref} ({'unchanged' if union.unchanged else 'new version'}), the union of {sources}: "
         f"{union.items} items, {union.boxes} boxes, classes {', '.join(union.categories)}")
    return union.ref, mapping


def _resume(ctx: click.Context, resume: Path, options: dict[str, Any]) -> Path:
    """``--resume RUN``: refuse options that would change what the run computes, then continue it."""
    from ..distributed import launcher
    from ..training import fit as training
    from ..training import runs

    given = [f"--{name.replace('_', '-')}" for name in options
             if name not in RESUME_OPTIONS and ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE]
    if given:
        raise TlsyncError(f"--resume continues a run with its own settings; drop {', '.join(given)} "
                          f"(only --device, --workers and --amp may change)")
    workers = options["workers"] if ctx.get_parameter_source("workers") == ParameterSource.COMMANDLINE else None
    device = options["device"] if ctx.get_parameter_source("device") == ParameterSource.COMMANDLINE else None
    amp = options["amp"] if ctx.get_parameter_source("amp") == ParameterSource.COMMANDLINE else None
    config = runs.read_config(resume)  # a distributed run resumes with as many processes as it had
    run: Path = launcher.run(partial(training.resume, resume, device=device, workers=workers, amp=amp),
                             config.get("devices", 1), device or config["device"], config.get("sync_bn", False))
    return run


def options_for_runs() -> list[click.Parameter]:
    """train's options that a command starting runs of its own (curve, audit) offers and passes to each run;
    it decides the rest (``PER_RUN_FIELDS``) per run, and has its own ``--resume``."""
    # --class-map too: it is parsed (and several --dataset derived) by train's own command
    return [p for p in train.params if p.name not in (*PER_RUN_FIELDS, "resume", "class_map")]
