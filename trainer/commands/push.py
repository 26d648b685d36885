"""``tlsync push``: run a trained model over a dataset and send the predictions to a target.

tlsync does the predicting and hands the target a stream of predicted ``Item``s, so a
target only speaks its platform's upload API (``tlsync.targets``, torch-free). This half
runs the model, so it lives in the trainer and ``tlsync.cli`` loads it lazily, by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tlsync.cli import TargetCommand
from tlsync.console import echo, progress
from tlsync.errors import TlsyncError
from tlsync.format import SPLITS
from tlsync.store import Store

from ..evaluation.predict import predict_items
from ..training.checkpoint import load_model
from ..training.device import resolve_device


@click.command(cls=TargetCommand)
@click.option("--target", "target_name", required=True, help="Where to send predictions (e.g. nucleus).")
@click.option("--run", "run", required=True, type=click.Path(path_type=Path), help="Run directory or checkpoint file.")
@click.option("--dataset", default=None, help="Dataset (name or name@version) to predict on; default: the run's.")
@click.option("--split", type=click.Choice(SPLITS), default=None, help="Only this split (default: every item).")
@click.option("--conf", type=click.FloatRange(0, 1), default=0.05, show_default=True,
              help="Drop predicted boxes below this confidence.")
@click.option("--batch-size", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Images per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.pass_context
def push(ctx: click.Context, target_name: str, run: Path, dataset: str | None, split: str | None, conf: float,
         batch_size: int, device: str, **target_options: Any) -> None:
    """Predict a dataset with a run's model and push the predictions to a target."""
    target = ctx.meta["tlsync.target"]
    if not run.exists():
        raise TlsyncError(f"run '{run}' not found")
    torch_device = resolve_device(device)
    model, categories, config = load_model(run, device=torch_device)
    ref = dataset or config.get("dataset")
    if not ref:
        raise TlsyncError(f"run '{run}' records no dataset; pass --dataset NAME@VERSION")
    version = Store().open(ref)
    wanted = target.item_filter(**target_options)
    items = (item for item in version.items(split) if wanted is None or wanted(item))
    counts = version.info.get("counts", {})
    total = counts.get("splits", {}).get(split, {}).get("items") if split else counts.get("items")
    run_info = {"name": run.name if run.is_dir() else run.stem, "categories": categories, "config": config,
                "dataset": version.ref}
    with progress(f"push {version.ref} -> {target_name}", total=None if wanted else total, unit="images") as update:
        def counted(predictions: Any) -> Any:
            for n, item in enumerate(predictions, 1):
                yield item
                update(n)

        predictions = predict_items(model, items, version.image_path, categories, torch_device, batch_size, conf)
        summary = target.push(counted(predictions), run_info, **target_options)
    for key, value in summary.items():
        echo(f"{key}: {value}")
