"""``tlsync curve``: what more labels buy, measured on the user's own data.

Loaded lazily by ``tlsync.cli``. Every ``tlsync train`` option passes through (the same
click options, so help and defaults never drift); the curve sets the dataset, run names
and seeds of its points itself. The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from tlsync.console import echo
from tlsync.errors import TlsyncError

from .folder_options import folder_options
from .train import RESUME_OPTIONS as TRAIN_RESUME_OPTIONS
from .train import options_for_runs

# What --resume may change: what train's --resume allows (where and how fast each point runs), and the
# question asked of the fit.
RESUME_OPTIONS = (*TRAIN_RESUME_OPTIONS, "target_map")


@click.command()
@click.option("--dataset", default=None, help="Dataset: NAME (latest version) or NAME@N.")
@click.option("--fractions", default="0.25,0.5,0.75,1", show_default=True,
              help="Fractions of the train split to train on (nested: each smaller subset inside the larger).")
@click.option("--seeds", type=click.IntRange(1), default=2, show_default=True,
              help="Subsets and training seeds per fraction (the error bars and the fit's interval).")
@click.option("--target-map", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Also print the labelled images the fit needs to reach this test mAP50-95.")
@folder_options("curve", "curves", "points")
@click.pass_context
def curve(ctx: click.Context, dataset: str | None, fractions: str, seeds: int, target_map: float | None,
          name: str | None, project: Path, resume: Path | None, **train_options: Any) -> None:
    """Train on nested subsets of train, score each on test, fit a power law: is labelling more worth it?"""
    from tlsync.store import Store

    from ..curve.report import summary
    from ..curve.run import load_plan, new_plan, run_curve, train_point
    from ..curve.subsets import parse_fractions

    given = [n for n in ctx.params if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]
    if resume is not None:
        extra = [f"--{n.replace('_', '-')}" for n in given if n not in RESUME_OPTIONS]
        if extra:
            raise TlsyncError(f"--resume carries on with the curve's own settings; drop {', '.join(extra)}")
        plan, done = load_plan(resume)
        for key in TRAIN_RESUME_OPTIONS:
            if key in given and key in train_options:
                plan.train_options[key] = train_options[key]
        if "target_map" in given:  # a new question of the same points; otherwise the first run's
            plan.target_map = target_map
    else:
        if not dataset:
            raise TlsyncError("give --dataset NAME (or --resume curves/NAME)")
        plan, done = new_plan(Store(), dataset, parse_fractions(fractions), seeds, train_options, name, project), []
        plan.target_map = target_map
    echo(f"curve {plan.folder}: {plan.dataset}, fractions {', '.join(f'{f:g}' for f in plan.fractions)}, "
         f"{plan.seeds} seed(s), scored on {plan.split}")
    data = run_curve(plan, done, train_point)
    for line in summary(data):
        echo(line)
    echo(f"curve: {plan.folder / 'curve.json'}, {plan.folder / 'curve.png'}")


curve.params.extend(options_for_runs())
