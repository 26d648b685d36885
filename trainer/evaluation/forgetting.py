"""The forgetting check: did a run continued from an earlier one get worse at the old data?

Continued fine-tuning can forget classes or cases the parent's data covered, and nobody
notices until production. After a run that started from ``--weights runs/X`` finishes,
the new model is scored on the parent's evaluation data: the test split (else val) of the
exact dataset version the parent trained on (by content hash). The parent's own numbers
on that data come from its ``eval/`` when they are there (they are of ``best.pt``, the
checkpoint a run directory continues from), and are computed otherwise.

Writes ``eval/parent/metrics.json`` (the child on the parent's data, like any eval) and
``forgetting.json`` (per class: AP50 and AP50-95 of parent and child, and the deltas),
prints a short table and warns, naming them, about shared classes whose AP50 fell by more
than ``--forget-tolerance``. Classes new in the child are listed, not scored against the
parent; classes the child no longer has are named (they score 0 on the parent's data).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlsync.console import info
from tlsync.errors import TlsyncError
from tlsync.manifest import atomic_write_json
from tlsync.models import WEIGHTS
from tlsync.store import DatasetVersion, Store

from ..training.checkpoint import load_checkpoint, load_model, resolve_checkpoint
from ..training.runs import read_json
from .evaluate import default_split, evaluate_split

FORGETTING = "forgetting.json"


def check_forgetting(run: Path, config: dict[str, Any], model: nn.Module, device: torch.device,
                     store: Store) -> dict[str, Any] | None:
    """Run the check for a continued run (None when off, not continued, or the parent's data is gone)."""
    if config.get("forget_check", "on") == "off" or config.get("weights") in WEIGHTS:
        return None
    try:
        checkpoint = resolve_checkpoint(Path(config["weights"]))
        parent_config = load_checkpoint(checkpoint)["config"]
        version = store.open(parent_config["dataset"])
    except (TlsyncError, KeyError) as e:
        info(f"forgetting check skipped: cannot find the parent's data ({e})")
        return None
    if version.content_hash != parent_config.get("content_hash"):
        info(f"forgetting check skipped: {version.ref} is not the data the parent trained on (content hash differs)")
        return None
    split = default_split(version)
    if next(version.items(split), None) is None:
        info(f"forgetting check skipped: {version.ref} has no test or val items")
        return None
    child = evaluate_split(model.eval(), version, split, config["categories"], device, run / "eval" / "parent")
    parent = parent_metrics(checkpoint, version, split, device)
    result = compare(parent, child, list(parent_config["categories"]), list(config["categories"]),
                     float(config.get("forget_tolerance", 0.05)))
    result["parent"] = {"checkpoint": str(checkpoint), "dataset": version.ref, "split": split,
                        "content_hash": version.content_hash}
    atomic_write_json(run / FORGETTING, result)
    for line in summary(result):
        info(line)
    return result


def parent_metrics(checkpoint: Path, version: DatasetVersion, split: str, device: torch.device) -> dict[str, Any]:
    """The parent's metrics on ``version``/``split``: from its eval/ if there for this checkpoint, else computed."""
    run = checkpoint.parent.parent
    if checkpoint.name == "best.pt" and (run / "eval").is_dir():
        for path in [run / "eval" / "metrics.json", *sorted((run / "eval").glob("*/metrics.json"))]:
            if path.is_file():
                m = read_json(path)
                if m.get("content_hash") == version.content_hash and m.get("split") == split and "per_class" in m:
                    return m
    model, categories, _ = load_model(checkpoint, device=device)
    return evaluate_split(model, version, split, categories, device, None)


def compare(parent: dict[str, Any], child: dict[str, Any], parent_classes: list[str], child_classes: list[str],
            tolerance: float) -> dict[str, Any]:
    """Per-class parent-vs-child figures on the parent's data, and which classes were forgotten."""
    classes = {}
    for name, p in parent["per_class"].items():
        if name not in parent_classes or not p["boxes"]:
            continue  # the parent never had the class, or this data holds none of it
        c = child["per_class"].get(name, {"ap50": 0.0, "ap50_95": 0.0})
        row = {"boxes": p["boxes"], "parent_ap50": p["ap50"], "child_ap50": c["ap50"],
               "parent_ap50_95": p["ap50_95"], "child_ap50_95": c["ap50_95"], "in_child": name in child_classes}
        row["delta_ap50"] = _delta(row["child_ap50"], row["parent_ap50"])
        row["delta_ap50_95"] = _delta(row["child_ap50_95"], row["parent_ap50_95"])
        classes[name] = row
    forgotten = [n for n, r in classes.items()
                 if r["in_child"] and r["delta_ap50"] is not None and r["delta_ap50"] < -tolerance]
    return {
        "tolerance_ap50": tolerance,
        "overall": {"parent_map50_95": parent["map50_95"], "child_map50_95": child["map50_95"],
                    "parent_map50": parent["map50"], "child_map50": child["map50"],
                    "delta_map50_95": child["map50_95"] - parent["map50_95"],
                    "delta_map50": child["map50"] - parent["map50"]},
        "classes": classes,
        "forgotten": forgotten,
        "new_classes": [n for n in child_classes if n not in parent_classes],
        "dropped_classes": [n for n in parent_classes if n not in child_classes],
    }


def _delta(child: float | None, parent: float | None) -> float | None:
    return None if child is None or parent is None else child - parent


def summary(result: dict[str, Any]) -> list[str]:
    """The short table and the warnings ``train`` prints."""
    o, where = result["overall"], result.get("parent", {})
    lines = [f"forgetting check on the parent's data ({where.get('dataset', '?')} {where.get('split', '?')}): "
             f"mAP50-95 {o['parent_map50_95']:.3f} -> {o['child_map50_95']:.3f} ({o['delta_map50_95']:+.3f}), "
             f"mAP50 {o['parent_map50']:.3f} -> {o['child_map50']:.3f} ({o['delta_map50']:+.3f})"]
    width = max([len(n) for n in result["classes"]] + [5])
    lines.append(f"  {'class':<{width}}  {'AP50 parent':>11}  {'child':>6}  {'delta':>6}  {'AP50-95 parent':>14}  "
                 f"{'child':>6}  {'delta':>6}")
    for name, r in result["classes"].items():
        cells = [_f(r["parent_ap50"], 11), _f(r["child_ap50"], 6), _f(r["delta_ap50"], 6, True),
                 _f(r["parent_ap50_95"], 14), _f(r["child_ap50_95"], 6), _f(r["delta_ap50_95"], 6, True)]
        lines.append(f"  {name:<{width}}  " + "  ".join(cells) + ("" if r["in_child"] else "  (dropped)"))
    if result["forgotten"]:
        lines.append(f"warning: forgetting: AP50 fell by more than {result['tolerance_ap50']:g} on the parent's data "
                     f"for {', '.join(result['forgotten'])}")
    if result["dropped_classes"]:
        lines.append(f"classes the parent had and this run dropped: {', '.join(result['dropped_classes'])}")
    if result["new_classes"]:
        lines.append(f"classes new in this run (not scored against the parent): {', '.join(result['new_classes'])}")
    return lines


def _f(value: float | None, width: int, signed: bool = False) -> str:
    if value is None:
        return f"{'n/a':>{width}}"
    return f"{value:>+{width}.3f}" if signed else f"{value:>{width}.3f}"
