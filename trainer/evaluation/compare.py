"""Comparing runs: the transfer-versus-scratch table and the mAP curves, from run files alone.

Each run's ``config.json`` says how it started (weights source, dataset version) and its
``metrics.csv`` how it went, epoch by epoch. The final numbers come from ``eval/metrics.json``
when there is one (that is the best checkpoint, evaluated with every metric) and otherwise
from the best epoch's row; the "evaluated on" column says which, so that a run scored on
test is never silently lined up against one scored on val.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlsync.errors import TlsyncError

from ..training.runs import CONFIG, METRICS, read_config, read_json, read_metrics_csv
from .plots import figure, save_figure, whole_epochs
from .summary import fmt


@dataclass
class RunSummary:
    label: str
    weights: str
    dataset: str
    epochs: str
    wall_seconds: float
    seconds_to_best: float
    map50_95: float | None  # None: no val split and no eval yet
    map50: float | None
    precision: float | None
    recall: float | None
    f1: float | None
    evaluated_on: str
    split: str  # the split the final numbers are from: val (training's) or what tlsync eval scored
    epoch_axis: list[float]
    seconds_axis: list[float]
    map_curve: list[float]
    on_parent: str | None = None  # continued runs: mAP50-95 on the parent's data, child vs parent (forgetting.json)


def summarise(run: Path, label: str | None = None) -> RunSummary:
    """One run's row and curves; a clear error for a folder that is not a finished-epoch run."""
    if not run.is_dir():
        raise TlsyncError(f"run '{run}' not found")
    config = read_config(run)
    rows = read_metrics_csv(run / METRICS)
    if not rows:
        raise TlsyncError(f"run '{run}' has no epochs in {METRICS} yet (it has a {CONFIG}, so it may still be running)")
    # metrics.csv holds each epoch's own duration; the wall clock is their running sum.
    elapsed, clock = [], 0.0
    for row in rows:
        clock += row.get("seconds", 0.0)
        elapsed.append(clock)
    maps = [row.get("map50_95", 0.0) for row in rows]
    best = max(range(len(rows)), key=lambda i: (maps[i], -i))
    final = _final_metrics(run, rows[best])
    planned = config.get("epochs")
    return RunSummary(
        label=label or run.name, weights=str(config.get("weights", "?")), dataset=str(config.get("dataset", "?")),
        epochs=f"{len(rows)}/{planned}" if planned else str(len(rows)),
        wall_seconds=elapsed[-1], seconds_to_best=elapsed[best],
        map50_95=final.get("map50_95"), map50=final.get("map50"),
        precision=final.get("precision"), recall=final.get("recall"), f1=final.get("f1"),
        evaluated_on=final["evaluated_on"], split=str(final.get("split", "val")),
        epoch_axis=[row.get("epoch", i + 1) for i, row in enumerate(rows)], seconds_axis=elapsed, map_curve=maps,
        on_parent=_on_parent(run),
    )


def _on_parent(run: Path) -> str | None:
    """'0.412 (parent 0.450, -0.038; forgot dog)' from the forgetting check, or None when it has not run."""
    path = run / "forgetting.json"
    if not path.exists():
        return None
    f = read_json(path)
    o = f["overall"]
    forgot = f"; forgot {', '.join(f['forgotten'])}" if f.get("forgotten") else ""
    return f"{fmt(o['child_map50_95'])} (parent {fmt(o['parent_map50_95'])}, {o['delta_map50_95']:+.3f}{forgot})"


def _final_metrics(run: Path, best_row: dict[str, float]) -> dict[str, Any]:
    path = run / "eval" / "metrics.json"
    if path.exists():
        m = read_json(path)
        return {**m, "evaluated_on": f"{m.get('dataset', '?')} {m.get('split', '?')}"}
    return {**best_row, "evaluated_on": f"val, epoch {int(best_row.get('epoch', 0))} (metrics.csv)"}


def compare_runs(runs: list[str | Path]) -> list[RunSummary]:
    """Summaries in the order given; runs that share a folder name are labelled by their path."""
    paths = [Path(r) for r in runs]
    names = [p.name for p in paths]
    return [summarise(p, p.name if names.count(p.name) == 1 else str(p)) for p in paths]


HEADER = ["run", "weights", "dataset", "epochs", "wall time", "to best", "mAP50-95", "mAP50", "P", "R", "F1",
          "evaluated on"]


def table(summaries: list[RunSummary]) -> str:
    """A plain-text table (aligned columns, no box drawing) that survives being piped or pasted.

    Runs continued from another gain an "on parent data" column (mAP50-95 on the parent's
    evaluation data, from the forgetting check); it is left out when no run has one.
    """
    rows = [[s.label, s.weights, s.dataset, s.epochs, duration(s.wall_seconds), duration(s.seconds_to_best),
             fmt(s.map50_95), fmt(s.map50), fmt(s.precision), fmt(s.recall), fmt(s.f1), s.evaluated_on]
            for s in summaries]
    header = HEADER
    if any(s.on_parent for s in summaries):
        header = [*HEADER, "on parent data"]
        rows = [[*row, s.on_parent or "-"] for row, s in zip(rows, summaries, strict=True)]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    left = {0, 1, 2, len(HEADER) - 1, len(HEADER)}
    lines = ["  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines + split_note(summaries))


def split_note(summaries: list[RunSummary]) -> list[str]:
    """A warning line when the rows were scored on different splits: a val score (what training
    picked its best epoch on) next to a test score reads as a comparison and is not one."""
    splits: dict[str, list[str]] = {}
    for s in summaries:
        splits.setdefault(s.split, []).append(s.label)
    if len(splits) < 2:
        return []
    groups = "; ".join(f"{split}: {', '.join(labels)}" for split, labels in sorted(splits.items()))
    return [f"note: these rows were scored on different splits ({groups}), so their numbers do not compare; "
            "score them on one split (tlsync eval --run RUN --split SPLIT)"]


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def plot(summaries: list[RunSummary], path: Path) -> None:
    """``compare.png``: validation mAP50-95 per epoch (left) and per wall-clock second (right)."""
    fig = figure(12, 4.5)
    by_epoch, by_time = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for s in summaries:
        label = f"{s.label} ({s.weights})"
        by_epoch.plot(s.epoch_axis, s.map_curve, marker=".", label=label)
        by_time.plot(s.seconds_axis, s.map_curve, marker=".", label=label)
    by_epoch.set(title="val mAP50-95 per epoch", xlabel="epoch", ylabel="mAP50-95", ylim=(0, None))
    by_time.set(title="val mAP50-95 per wall-clock second", xlabel="training seconds", ylabel="mAP50-95",
                ylim=(0, None))
    by_epoch.legend(fontsize="small")
    whole_epochs(by_epoch)
    save_figure(fig, path)
