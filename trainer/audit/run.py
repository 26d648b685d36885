"""Running an audit: the plan, the K fold runs (resumable) and their out-of-sample predictions.

An audit lives in ``audits/<name>/``: ``audit.json`` (the settings, every finished fold, and at
the end the counts and timings; rewritten atomically after each fold, so a crash loses at most
the fold in progress), one ordinary run directory per fold (``fold-1``...), which ``tlsync
eval`` and the report read like any run, and the fold's predictions on its held-out images
(``predictions-fold-1.jsonl``). ``--resume`` reads the settings back from ``audit.json``, keeps
the finished folds, resumes a fold whose run was interrupted after an epoch (as ``tlsync
curve`` does, through the same ``train_point``) and starts the others.

``--run`` skips the folds: the run's own model predicts every audited image. Those images were
mostly its training data, so it has learnt their errors; the audit says so in its summary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tlsync.atomic import atomic_write_json, atomic_write_text
from tlsync.console import info
from tlsync.errors import TlsyncError
from tlsync.format import Item
from tlsync.store import DatasetVersion, Store

from ..training import runs
from ..training.settings import PER_RUN_FIELDS
from .folds import audited_items, fold_version, make_folds

AUDIT = "audit.json"
PREDICT_FLOOR = 0.05  # predictions kept down to here (torchvision's own box_score_thresh): the scores see them all
# Per-run options an audit sets itself for every fold.
OWN_OPTIONS = PER_RUN_FIELDS


@dataclass
class AuditPlan:
    name: str
    folder: Path
    dataset: str  # NAME@V read
    content_hash: str
    folds: int  # 0: --run mode (the run's own, in-sample predictions)
    seed: int
    splits: list[str]
    train_options: dict[str, Any]
    run: str | None
    conf: float
    created: str

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items() if k != "folder"}


def new_plan(store: Store, dataset: str, folds: int, seed: int, splits: list[str], train_options: dict[str, Any],
             name: str | None, project: Path, conf: float, run: str | None = None) -> AuditPlan:
    """Check the data and the fold count first, then claim ``project/<dataset>-N`` (never overwritten)."""
    base = store.open(dataset)
    items = audited_items(base, tuple(splits))
    if run is None:
        make_folds(items, folds, seed)  # a bad --folds fails here, before any folder is made
    folder = runs.claim_folder(project, name, base.name,
                               taken="audit {} already exists; choose another --name (audits are never overwritten)")
    options = {k: v for k, v in train_options.items() if k not in OWN_OPTIONS}
    return AuditPlan(folder.name, folder, base.ref, base.content_hash, 0 if run else folds, seed, list(splits),
                     options, run, conf, datetime.now(timezone.utc).isoformat(timespec="seconds"))


def load_plan(folder: Path) -> tuple[AuditPlan, list[dict[str, Any]]]:
    """The plan and finished folds of an earlier audit, for ``--resume``."""
    path = folder / AUDIT
    if not path.is_file():
        raise TlsyncError(f"--resume {folder}: no {AUDIT} there (is it an audit folder, e.g. audits/horses-1?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        s = data["settings"]
        plan = AuditPlan(folder.name, folder, s["dataset"], s["content_hash"], s["folds"], s["seed"], s["splits"],
                         s["train_options"], s["run"], s["conf"], s["created"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise TlsyncError(f"{path}: not an audit file written by tlsync audit ({type(e).__name__}: {e})") from None
    return plan, list(data.get("fold_runs", []))


def predictions_file(plan: AuditPlan, fold: int) -> Path:
    return plan.folder / f"predictions-fold-{fold}.jsonl"


def run_folds(plan: AuditPlan, done: list[dict[str, Any]], train_fold: Callable[[Any], Path],
              store: Store) -> tuple[DatasetVersion, list[Item], dict[str, Item], list[dict[str, Any]]]:
    """Every fold not in ``done``; returns the base version, audited items, predictions by item id, fold records."""
    base = store.open(plan.dataset)
    if base.content_hash != plan.content_hash:
        raise TlsyncError(f"dataset {base.ref} changed since the audit started (content hash differs)")
    items = audited_items(base, tuple(plan.splits))
    if not (plan.folder / AUDIT).is_file():
        write_progress(plan, [])  # the plan on disk before the first fold: a kill during it can be resumed
    if plan.run:
        return base, items, *_in_sample(plan, base, items, done)
    folds = make_folds(items, plan.folds, plan.seed)
    records = {r["fold"]: r for r in done if predictions_file(plan, r["fold"]).is_file()}
    if records:
        info(f"audit {plan.folder}: {len(records)} of {plan.folds} folds already finished, kept")
    for n, held_out in enumerate(folds, 1):
        if n in records:
            continue
        version = fold_version(store, base, held_out, plan.folds, n, plan.seed)
        info(f"audit fold {n} of {plan.folds}: train on {len(items) - len(held_out)} images, "
             f"predict {len(held_out)}{_eta(records.values(), folds, n)}")
        started = time.perf_counter()
        run = train_fold(_fold_config(plan, version, n))
        predicted = predict(run, held_out, base, plan.train_options)
        write_predictions(predictions_file(plan, n), predicted)
        records[n] = {"fold": n, "run": str(run), "dataset": version.ref, "train_images": len(items) - len(held_out),
                      "images": len(held_out), "seconds": round(time.perf_counter() - started, 2)}
        info(f"audit fold {n} of {plan.folds} done in {records[n]['seconds']:.0f}s")
        write_progress(plan, [records[k] for k in sorted(records)])
    fold_runs = [records[k] for k in sorted(records)]
    predictions: dict[str, Item] = {}
    for record in fold_runs:
        predictions.update((p.id, p) for p in read_predictions(predictions_file(plan, record["fold"])))
    return base, items, predictions, fold_runs


def _in_sample(plan: AuditPlan, base: DatasetVersion, items: list[Item],
               done: list[dict[str, Any]]) -> tuple[dict[str, Item], list[dict[str, Any]]]:
    assert plan.run is not None
    path = predictions_file(plan, 0)
    if not (done and path.is_file()):
        info(f"audit with {plan.run}: in-sample predictions (the model trained on most of these images and has "
             f"learnt their errors; --folds finds more)")
        started = time.perf_counter()
        write_predictions(path, predict(Path(plan.run), items, base, plan.train_options))
        done = [{"fold": 0, "run": plan.run, "images": len(items), "in_sample": True,
                 "seconds": round(time.perf_counter() - started, 2)}]
        write_progress(plan, done)
    return {p.id: p for p in read_predictions(path)}, done


def _fold_config(plan: AuditPlan, version: DatasetVersion, fold: int) -> Any:
    from ..training.settings import TrainConfig

    return TrainConfig(**{**plan.train_options, "dataset": version.ref, "project": str(plan.folder),
                          "name": f"fold-{fold}", "exist_ok": True})


def predict(run: Path, items: list[Item], base: DatasetVersion, options: dict[str, Any]) -> list[Item]:
    """The run's best model's boxes (down to ``PREDICT_FLOOR``) on ``items``, in order."""
    from ..evaluation.predict import predict_items
    from ..training.checkpoint import load_model
    from ..training.device import resolve_device

    device = resolve_device(str(options.get("device") or "auto"))
    model, categories, _ = load_model(run, device=device)
    missing = set(base.categories) - set(categories)
    if missing:
        raise TlsyncError(f"{run} does not know the classes {', '.join(sorted(missing))} of {base.ref}; "
                          f"audit with a run trained on this dataset")
    return list(predict_items(model, items, base.image_path, categories, device,
                              int(options.get("batch_size") or 4), PREDICT_FLOOR))


def write_predictions(path: Path, predictions: list[Item]) -> None:
    atomic_write_text(path, "".join(json.dumps(p.to_dict()) + "\n" for p in predictions))


def read_predictions(path: Path) -> list[Item]:
    try:
        return [Item.from_dict(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]
    except (ValueError, KeyError, TypeError) as e:
        raise TlsyncError(f"{path}: unreadable predictions ({type(e).__name__}); delete it to predict that fold "
                          f"again") from None


def write_progress(plan: AuditPlan, fold_runs: list[dict[str, Any]]) -> None:
    atomic_write_json(plan.folder / AUDIT, {"settings": plan.to_dict(), "fold_runs": fold_runs, "finished": False})


def _eta(finished: Any, folds: list[list[Item]], n: int) -> str:
    """Remaining time from the finished folds' seconds per training image (empty before the first)."""
    done = list(finished)
    if not done:
        return ""
    per_image = sum(r["seconds"] for r in done) / max(1, sum(r["train_images"] for r in done))
    total = sum(len(f) for f in folds)
    left = sum(total - len(f) for i, f in enumerate(folds, 1) if i >= n and i not in {r["fold"] for r in done})
    minutes, seconds = divmod(round(per_image * left), 60)
    return f", ETA {minutes}m{seconds:02d}s"
