"""``tlsync select``: rank the pool's unlabelled images by how much labelling them should help
the run's model, write the selection, and optionally send it to a labelling platform.

Loaded lazily by ``tlsync.cli`` (it imports torch). The local selection is written before
anything is sent, so a target that fails leaves it in place and says what was sent; the
same command again sends only what the platform is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tlsync.cli import PluginOptionsCommand
from tlsync.console import info, progress
from tlsync.errors import TlsyncError
from tlsync.secrets import redact

from ..select.strategies import STRATEGIES

# The best mean test mAP50-95 in benchmarks/select_vs_random.py (BENCHMARKS.md): random, 0.109 vs
# uncertainty 0.108; no strategy beat random by more than random's spread there.
DEFAULT_STRATEGY = "random"


class SelectionTargetCommand(PluginOptionsCommand):
    """``select`` grows the chosen target's ``selection_options``, so ``--target X --help`` lists them."""

    kind = "target"
    options_attr = "selection_options"


@click.command(cls=SelectionTargetCommand)
@click.option("--run", "run", required=True, type=click.Path(path_type=Path), help="The run directory.")
@click.option("--pool", default=None, help="Dataset (name or name@version) to choose from.")
@click.option("--pool-path", type=click.Path(path_type=Path), default=None,
              help="A folder of images to choose from (pulled into the dataset pool-<folder> first).")
@click.option("--exclude", multiple=True, help="Also leave out images in this dataset (repeatable).")
@click.option("--budget", type=int, required=True, help="How many images to select.")
@click.option("--strategy", type=click.Choice(STRATEGIES), default=DEFAULT_STRATEGY, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True,
              help="For random (and ties); same seed, same selection.")
@click.option("--conf", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="Predicted boxes kept in the selection, the contact sheet and what targets receive.")
@click.option("--name", default=None, help="Selection folder name (default: <pool>-N).")
@click.option("--project", type=click.Path(path_type=Path), default=Path("selections"), show_default=True,
              help="Parent folder of selection folders.")
@click.option("--batch-size", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Images per forward pass.")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Image-decoding processes (default: min(4, CPUs-1)).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--target", "target_name", default=None, help="Also send the selection here (e.g. nucleus, labelstudio).")
@click.pass_context
def select(ctx: click.Context, run: Path, pool: str | None, pool_path: Path | None, exclude: tuple[str, ...],
           budget: int, strategy: str, seed: int, conf: float, name: str | None, project: Path, batch_size: int,
           workers: int | None, device: str, target_name: str | None, **target_options: Any) -> None:
    """Pick the pool images worth labelling next (uncertainty, diversity, hybrid or random)."""
    from tlsync.store import Store

    from ..select.output import claim_folder, rows, write_selection
    from ..select.pool import build_pool, describe, pull_folder
    from ..select.run import choose, report_unreadable, score_pool, summary
    from ..training.checkpoint import load_model
    from ..training.fit import default_workers, resolve_device
    from ..training.runs import read_config
    from .evaluate import run_dir

    if (pool is None) == (pool_path is None):
        raise TlsyncError("give the pool: --pool DATASET[@VERSION] or --pool-path FOLDER (one of them)")
    if budget <= 0:
        raise TlsyncError(f"--budget {budget}: nothing to select; give how many images to label next (>= 1)")
    if target_name:
        from tlsync.targets import Target

        if type(ctx.meta["tlsync.target"]).send_selection is Target.send_selection:
            raise TlsyncError(f"target '{target_name}' cannot receive a selection (it only supports tlsync push)")
    run = run_dir(run)
    config = read_config(run)
    if not config.get("dataset"):
        raise TlsyncError(f"{run}/config.json names no dataset, so tlsync cannot tell what is labelled already")
    store = Store()
    if pool_path is not None:
        with progress(f"pull {pool_path} -> pool", unit="images") as update:
            pool, pulled = pull_folder(store, pool_path, update)
        if pulled.skipped:
            info(f"skipped {sum(pulled.skipped.values())} unreadable files in {pool_path}")
    assert pool is not None
    candidates = build_pool(store.open(pool), store.open(config["dataset"]), [store.open(ref) for ref in exclude])
    info(describe(candidates))
    torch_device = resolve_device(device)
    model, categories, config = load_model(run, device=torch_device)
    with progress(f"select: score {len(candidates.items)} images", total=len(candidates.items) or None,
                  unit="images") as update:
        scores = score_pool(model, candidates, store.open(config["dataset"]), categories, torch_device,
                            int(config.get("img_size") or 640), strategy, batch_size,
                            default_workers() if workers is None else workers, update)
    report_unreadable(scores.scored)
    choice = choose(scores, strategy, budget, seed, conf)
    for note in choice.notes:
        info(note)
    run_info = {"name": run.name, "dir": str(run), "dataset": config["dataset"], "categories": categories,
                "config": config}
    folder = claim_folder(project, name, candidates.version.name)
    selected = rows(choice.items, [p.score for p in choice.picks], [p.components for p in choice.picks])
    meta = summary(run_info, candidates, strategy, budget, seed, scores, choice, categories, conf)
    write_selection(folder, selected, meta, choice.items, [candidates.version.image_path(i) for i in choice.items],
                    categories)
    click.echo(f"selected {len(choice.items)} of {len(candidates.items)} candidates from {candidates.version.ref} "
               f"({strategy}, seed {seed}), {meta['seconds']['per_1000_pool_images']:,.1f} s per 1,000 pool images: "
               f"{folder}")
    if target_name:
        _send(ctx, folder, choice, candidates, strategy, run_info, target_name, target_options)


def _send(ctx: click.Context, folder: Path, choice: Any, candidates: Any, strategy: str, run_info: dict[str, Any],
          target_name: str, options: dict[str, Any]) -> None:
    """Hand the written selection to the target; on failure say that the local selection stays."""
    from tlsync.targets import Selection

    target = ctx.meta["tlsync.target"]
    selection = Selection(folder.name, choice.items, [p.score for p in choice.picks], candidates.version.ref,
                          strategy, folder, candidates.version.image_path)
    try:
        sent = target.send_selection(selection, run_info, **options)
    except TlsyncError as e:
        raise TlsyncError(f"{e} (the selection itself is written: {folder}; re-run the same command to send "
                          f"what is missing)") from None
    click.echo(redact(f"{target_name}: " + ", ".join(f"{k} {v}" for k, v in sent.items())))
