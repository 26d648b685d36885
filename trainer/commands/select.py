"""``tlsync select``: rank the pool's unlabelled images by how much labelling them should help
the run's model, write the selection, and optionally send it to a labelling platform.

Loaded lazily by ``tlsync.cli`` (it imports torch). The local selection is written before
anything is sent, so a target that fails leaves it in place and says what was sent; the
same command again sends only what the platform is missing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from tlsync.cli import PluginOptionsCommand
from tlsync.console import echo
from tlsync.errors import TlsyncError

from ..select.settings import SelectConfig
from ..select.strategies import STRATEGIES

if TYPE_CHECKING:
    from ..select.run import Selected

DEFAULTS = {f.name: f.default for f in dataclasses.fields(SelectConfig)}
CONFIG_FIELDS = set(DEFAULTS)  # the other options are the target's selection_options


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
@click.option("--strategy", type=click.Choice(STRATEGIES), default=DEFAULTS["strategy"], show_default=True)
@click.option("--seed", type=int, default=DEFAULTS["seed"], show_default=True,
              help="For random (and ties); same seed, same selection.")
@click.option("--conf", type=click.FloatRange(0, 1), default=DEFAULTS["conf"], show_default=True,
              help="Predicted boxes kept in the selection, the contact sheet and what targets receive.")
@click.option("--name", default=None, help="Selection folder name (default: <pool>-N).")
@click.option("--project", type=click.Path(path_type=Path), default=DEFAULTS["project"], show_default=True,
              help="Parent folder of selection folders.")
@click.option("--batch-size", type=click.IntRange(1, 256), default=DEFAULTS["batch_size"], show_default=True,
              help="Images per forward pass.")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Image-decoding processes (default: min(4, CPUs-1)).")
@click.option("--device", default=DEFAULTS["device"], show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--target", "target_name", default=None, help="Also send the selection here (e.g. nucleus, labelstudio).")
@click.pass_context
def select(ctx: click.Context, target_name: str | None, **options: Any) -> None:
    """Pick the pool images worth labelling next (uncertainty, diversity, hybrid or random)."""
    from ..select.run import run_selection

    target_options = {k: options.pop(k) for k in list(options) if k not in CONFIG_FIELDS}
    cfg = SelectConfig(**options)
    if target_name:
        from tlsync.targets import Target

        if type(ctx.meta["tlsync.target"]).send_selection is Target.send_selection:
            raise TlsyncError(f"target '{target_name}' cannot receive a selection (it only supports tlsync push)")
    selected = run_selection(cfg)
    if target_name:
        _send(ctx, selected, cfg.strategy, target_name, target_options)


def _send(ctx: click.Context, selected: Selected, strategy: str, target_name: str, options: dict[str, Any]) -> None:
    """Hand the written selection to the target; on failure say that the local selection stays."""
    from tlsync.targets import Selection

    target = ctx.meta["tlsync.target"]
    folder, choice, version = selected.folder, selected.choice, selected.candidates.version
    selection = Selection(folder.name, choice.items, [p.score for p in choice.picks], version.ref,
                          strategy, folder, version.image_path)
    try:
        sent = target.send_selection(selection, selected.run, **options)
    except TlsyncError as e:
        raise TlsyncError(f"{e} (the selection itself is written: {folder}; re-run the same command to send "
                          f"what is missing)") from None
    echo(f"{target_name}: " + ", ".join(f"{k} {v}" for k, v in sent.items()))
