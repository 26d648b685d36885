"""``tlsync curve``: train on growing subsets of train, score each on test, fit, extrapolate.

A curve lives in ``curves/<name>/``: ``curve.json`` (the settings, every finished point and
the fit; rewritten atomically after each point, so a crash loses at most the point in
progress), ``curve.png`` and one ordinary run directory per point (``f0.25-s1``), which
``tlsync eval``, ``compare`` and the report read like any run. ``--resume`` reads the
settings back from ``curve.json``, keeps the finished points, resumes a point whose run
was interrupted after an epoch and starts the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tlsync.console import info
from tlsync.duplicates import leak_warning
from tlsync.errors import TlsyncError
from tlsync.manifest import atomic_write_json
from tlsync.store import DatasetVersion, Store

from ..training import runs
from ..training.settings import PER_RUN_FIELDS
from .fit import analyse
from .subsets import materialise, nested_order, subset_size

CURVE = "curve.json"
# Per-run options a curve sets itself for every point (each point trains with its own seed).
OWN_OPTIONS = (*PER_RUN_FIELDS, "seed")


@dataclass
class CurvePlan:
    name: str
    folder: Path
    dataset: str  # base NAME@V
    content_hash: str
    fractions: list[float]
    seeds: int
    seed: int  # the first training seed; point s (1-based) trains with seed + s - 1
    train_options: dict[str, Any]
    split: str  # what every point is scored on: test, else val
    created: str
    target_map: float | None = None  # --target-map: kept in curve.json, so --resume keeps answering it

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items() if k != "folder"}


def new_plan(store: Store, dataset: str, fractions: list[float], seeds: int, train_options: dict[str, Any],
             name: str | None, project: Path) -> CurvePlan:
    from ..evaluation.evaluate import default_split

    base = store.open(dataset)
    split = default_split(base)
    if split == "val" and next(base.items("val"), None) is None:
        raise TlsyncError(f"dataset {base.ref} has neither test nor val items: a curve needs held-out data to score")
    folder = runs.create_run_dir(project, name, base.name)
    options = {k: v for k, v in train_options.items() if k not in OWN_OPTIONS}
    return CurvePlan(folder.name, folder, base.ref, base.content_hash, fractions, seeds,
                     int(train_options.get("seed") or 0), options, split,
                     datetime.now(timezone.utc).isoformat(timespec="seconds"))


def load_plan(folder: Path) -> tuple[CurvePlan, list[dict[str, Any]]]:
    """The plan and finished points of an earlier curve, for ``--resume``."""
    path = folder / CURVE
    if not path.is_file():
        raise TlsyncError(f"--resume {folder}: no {CURVE} there (is it a curve folder, e.g. curves/horses-1?)")
    data = runs.read_json(path)
    try:
        plan = CurvePlan(folder.name, folder, data["dataset"], data["content_hash"], data["fractions"],
                         data["seeds"], data["seed"], data["train_options"], data["split"], data["created"],
                         data.get("target_map"))
    except KeyError as e:
        raise TlsyncError(f"{path}: missing field {e}; it was not written by tlsync curve") from None
    return plan, list(data.get("points", []))


def point_label(fraction: float, seed: int) -> str:
    return f"f{fraction:g}-s{seed}"


def run_curve(plan: CurvePlan, done: list[dict[str, Any]], train_point: Callable[[Any], Path],
              store: Store | None = None) -> dict[str, Any]:
    """Every point not in ``done``, in order (seed by seed, smallest first); returns the final curve.json."""
    store = store or Store()
    base = store.open(plan.dataset)
    if base.content_hash != plan.content_hash:
        raise TlsyncError(f"dataset {base.ref} changed since the curve started (content hash differs)")
    if warning := leak_warning(base, plan.split):
        info(warning)
    train_items = list(base.items("train"))
    if not train_items:
        raise TlsyncError(f"dataset {base.ref} has no train items")
    todo = [(f, s) for s in range(1, plan.seeds + 1) for f in plan.fractions]
    finished = {point_label(p["fraction"], p["seed"]): p for p in done}
    points = [finished[point_label(f, s)] for f, s in todo if point_label(f, s) in finished]
    if points:
        info(f"curve {plan.folder}: {len(points)} of {len(todo)} points already finished, kept")
    seconds_per_image = [p["seconds"] / max(1, p["train_images"]) for p in points]
    orders: dict[int, list] = {}
    for k, (fraction, seed) in enumerate(todo, 1):
        label = point_label(fraction, seed)
        if label in finished:
            continue
        order = orders.setdefault(seed, nested_order(train_items, seed))
        subset = order[:subset_size(fraction, len(order))]
        version = materialise(store, base, subset, fraction, seed)
        remaining = [subset_size(f, len(order)) for f, s in todo[k - 1:] if point_label(f, s) not in finished]
        eta = f", ETA {_duration(sum(remaining) * sum(seconds_per_image) / len(seconds_per_image))}" \
            if seconds_per_image else ""
        info(f"curve point {k} of {len(todo)}: {label}, {len(subset)} of {len(order)} train images{eta}")
        started = time.perf_counter()
        point = score_point(train_point(_point_config(plan, version, label, seed)), version, plan, fraction, seed)
        point["seconds"] = time.perf_counter() - started
        points.append(point)
        finished[label] = point
        seconds_per_image.append(point["seconds"] / max(1, point["train_images"]))
        info(f"curve point {k} of {len(todo)} done: {plan.split} mAP50-95 {point['map50_95']:.3f}, "
             f"mAP50 {point['map50']:.3f} in {_duration(point['seconds'])}")
        write_curve(plan, points)
    return write_curve(plan, points)


def _point_config(plan: CurvePlan, version: DatasetVersion, label: str, seed: int) -> Any:
    from ..training.fit import TrainConfig

    return TrainConfig(**{**plan.train_options, "dataset": version.ref, "project": str(plan.folder),
                          "name": label, "exist_ok": True, "seed": plan.seed + seed - 1})


def score_point(run: Path, version: DatasetVersion, plan: CurvePlan, fraction: float, seed: int) -> dict[str, Any]:
    """Score the point's best checkpoint on the curve's split into ``run/eval`` (as ``tlsync eval`` does)."""
    from ..evaluation.evaluate import evaluate_split
    from ..evaluation.report import write_report
    from ..training.checkpoint import load_model
    from ..training.fit import resolve_device

    device = resolve_device(str(plan.train_options.get("device") or "auto"))
    model, categories, _ = load_model(run, device=device)
    metrics = evaluate_split(model, version, plan.split, categories, device, run / "eval")
    write_report(run)
    train = list(version.items("train"))
    return {"fraction": fraction, "seed": seed, "train_images": len(train),
            "train_boxes": sum(len(i.annotations) for i in train), "run": str(run), "dataset": version.ref,
            "split": plan.split, "map50_95": metrics["map50_95"], "map50": metrics["map50"],
            "per_class_ap50": {name: c["ap50"] for name, c in metrics["per_class"].items()},
            "per_class_ap50_95": {name: c["ap50_95"] for name, c in metrics["per_class"].items()}}


def write_curve(plan: CurvePlan, points: list[dict[str, Any]]) -> dict[str, Any]:
    """``curve.json`` (atomically) and ``curve.png``, from the points so far."""
    from .report import plot_curve

    fit = analyse(points, plan.target_map)
    data = {**plan.to_dict(), "points": points, "fit": fit.to_dict(),
            "finished": len(points) == len(plan.fractions) * plan.seeds}
    atomic_write_json(plan.folder / CURVE, data)
    if points:
        plot_curve(data, plan.folder / "curve.png")
    return data


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.0f}s"


def train_point(cfg: Any) -> Path:
    """Train one point, or pick up its run where a crash left it (resumed, or only the scoring left to do)."""
    from functools import partial

    from ..distributed import launcher
    from ..training import fit as training
    from ..training.checkpoint import load_checkpoint

    run = Path(cfg.project) / cfg.name
    last = run / "weights" / "last.pt"
    if last.is_file():
        checkpoint = load_checkpoint(last)
        if checkpoint["epoch"] >= checkpoint["config"]["epochs"] or checkpoint.get("stopped"):
            return run
        info(f"resuming the interrupted point {run}")
        return launcher.run(partial(training.resume, run), cfg.devices, cfg.device, cfg.sync_bn)
    return launcher.run(partial(training.train, cfg), cfg.devices, cfg.device, cfg.sync_bn)
