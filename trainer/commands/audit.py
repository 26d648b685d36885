"""``tlsync audit``: rank the labels that are probably wrong, with the evidence drawn, and send them for review.

Loaded lazily by ``tlsync.cli``. Every ``tlsync train`` option passes through to the fold runs
(the same click options, so help and defaults never drift), as for ``tlsync curve``; the audit
names the fold runs and their data itself. ``--target`` grows the target's selection options,
as for ``tlsync select``. The summary goes to stdout, progress to stderr. Labels are fixed on the
labelling platform and pulled again as a new version; the audit records the version it read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from tlsync.console import echo, info
from tlsync.errors import TlsyncError

from .folder_options import folder_options
from .select import SelectionTargetCommand
from .train import options_for_runs

# tlsync train options passed to every fold run (the audit decides the rest per fold)
TRAIN_OPTIONS = tuple(p.name for p in options_for_runs())
# What may change when an audit is resumed: where it runs, and whether and where it sends.
RESUME_KEEPS = ("resume", "device", "workers", "target_name", "send_top")


@click.command(cls=SelectionTargetCommand)
@click.option("--dataset", default=None, help="Dataset: NAME (latest version) or NAME@N.")
@click.option("--folds", type=int, default=4, show_default=True,
              help="K: each image is predicted by a run trained on the other K-1 folds (K runs in all).")
@click.option("--run", "run", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Instead of folds, use this run's own model (fast; in-sample, so it misses errors it learnt).")
@click.option("--include-test", is_flag=True, help="Also audit the test split (left untouched by default).")
@click.option("--conf", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Predictions at least this confident count as evidence of a missing or misplaced label.")
@folder_options("audit", "audits", "folds")
@click.option("--target", "target_name", default=None,
              help="Also send the suspect images for review here (e.g. nucleus, labelstudio).")
@click.option("--send-top", type=click.IntRange(1), default=100, show_default=True,
              help="With --target: how many suspect images to send, most suspect first.")
@click.pass_context
def audit(ctx: click.Context, dataset: str | None, folds: int, run: Path | None, include_test: bool, conf: float,
          name: str | None, project: Path, resume: Path | None, target_name: str | None, send_top: int,
          **options: Any) -> None:
    """Find the labels that are probably wrong (missing, wrong class, badly placed), ranked, for review."""
    from tlsync.store import Store

    from ..audit.audit import run_audit
    from ..audit.folds import AUDITED_SPLITS
    from ..audit.run import load_plan, new_plan
    from ..curve.run import train_point

    train_options = {k: v for k, v in options.items() if k in TRAIN_OPTIONS}
    target_options = {k: v for k, v in options.items() if k not in TRAIN_OPTIONS}
    if target_name:
        _check_target(ctx, target_name)
    if resume is not None:
        given = [n for n in ctx.params if ctx.get_parameter_source(n) == ParameterSource.COMMANDLINE]
        extra = [f"--{n.replace('_', '-')}" for n in given if n not in RESUME_KEEPS and n not in target_options]
        if extra:
            raise TlsyncError(f"--resume carries on with the audit's own settings; drop {', '.join(extra)}")
        plan, done = load_plan(resume)
        plan.train_options.update({k: train_options[k] for k in ("device", "workers") if k in given})
    else:
        if not dataset:
            raise TlsyncError("give --dataset NAME (or --resume audits/NAME)")
        if run is not None:
            from ..training.runs import read_config

            read_config(run)  # a folder that is not a run fails here, before the audit folder is made
        splits = [*AUDITED_SPLITS, "test"] if include_test else list(AUDITED_SPLITS)
        plan = new_plan(Store(), dataset, folds, int(train_options.get("seed") or 0), splits, train_options, name,
                        project, conf, str(run) if run is not None else None)
        done = []
    how = f"the in-sample predictions of {plan.run}" if plan.run else f"{plan.folds} folds"
    echo(f"audit {plan.folder}: {plan.dataset} ({', '.join(plan.splits)}), {how}")
    summary, rows, reviews = run_audit(plan, done, train_point)
    info(summary["note"])
    echo(summary_line(summary, plan.folder))
    for row in rows[:5]:
        echo("  " + row_line(row))
    if target_name:
        _send(ctx, plan, summary, reviews, target_name, target_options, send_top)


def summary_line(summary: dict[str, Any], folder: Path) -> str:
    kinds = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in summary["counts"]["per_kind"].items() if n)
    where = "in-sample" if summary["in_sample"] else f"{len(summary['fold_runs'])} folds"
    return (f"{summary['suspects']} suspects in {summary['images_with_suspects']} of {summary['images']} images "
            f"of {summary['dataset_version']} ({kinds or 'none'}; {where}): {folder / 'suspects.jsonl'}, "
            f"{folder / 'audit.html'}")


def row_line(row: dict[str, Any]) -> str:
    label = f"{row['label']['class']}" if row["label"] else "no label"
    suggestion = f"{row['suggestion']['class']}" if row["suggestion"] else "remove"
    return f"#{row['rank']} {row['item']}: {row['kind']} {row['score']:.2f} ({label} -> {suggestion})"


def _check_target(ctx: click.Context, target_name: str) -> None:
    from tlsync.targets import Target

    if type(ctx.meta["tlsync.target"]).send_selection is Target.send_selection:
        raise TlsyncError(f"target '{target_name}' cannot receive a review (it only supports tlsync push)")


def _send(ctx: click.Context, plan: Any, summary: dict[str, Any], reviews: list[Any], target_name: str,
          options: dict[str, Any], send_top: int) -> None:
    """Hand the top suspect images to the target; on failure say that the local audit stays."""
    from tlsync.store import Store
    from tlsync.targets import Selection

    from ..audit.audit import selection_items

    suggested, labelled, scores = selection_items(reviews)
    base = Store().open(plan.dataset)
    review = Selection(plan.folder.name, suggested[:send_top], scores[:send_top], plan.dataset, "audit",
                       plan.folder, base.image_path, labels=labelled[:send_top])
    run_info = {"name": f"audit-{plan.folder.name}", "dir": str(plan.folder), "dataset": plan.dataset,
                "categories": base.categories, "config": summary["settings"]}
    try:
        sent = ctx.meta["tlsync.target"].send_selection(review, run_info, **options)
    except TlsyncError as e:
        raise TlsyncError(f"{e} (the audit itself is written: {plan.folder}; re-run with --resume {plan.folder} "
                          f"and the same --target to send what is missing)") from None
    echo(f"{target_name}: " + ", ".join(f"{k} {v}" for k, v in sent.items()))


audit.params.extend(options_for_runs())
