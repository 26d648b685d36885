"""The run report: PNG plots and a self-contained ``report.html`` that links them.

Everything is rebuilt from the files a run already has (``config.json``, ``metrics.csv``,
``eval/``), so the report can be refreshed at any time (after ``tlsync eval``, or after a
crash) and never holds numbers the files do not. Plots use matplotlib's ``Figure`` directly
(the Agg canvas, no pyplot state), so reports can be written from any thread or process
without a display. Missing pieces (no eval yet, images moved away) leave their section out.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tlsync.atomic import atomic_write_text
from tlsync.errors import TlsyncError
from tlsync.format import Box

from ..training.runs import read_json, read_metrics_csv
from .drawing import TRUTH_COLOUR, colour, draw_boxes, scale_box, thumbnail, write_sheet
from .plots import figure, plain, save_figure, whole_epochs
from .summary import fmt

GRID_IMAGES = 8
GRID_COLUMNS = 4
THUMB = 320
LOSS_PREFIX = "loss"


# -- plots ---------------------------------------------------------------------------------

def plot_training(rows: list[dict[str, float]], path: Path) -> None:
    """Losses (left) and validation mAP (right) per epoch."""
    fig = figure(11, 4)
    losses, maps = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    epochs = [r.get("epoch", i + 1) for i, r in enumerate(rows)]
    for key in sorted({k for r in rows for k in r if k.startswith(LOSS_PREFIX)}):
        losses.plot(epochs, [r.get(key) for r in rows], marker=".", label=key)
    losses.set(title="training losses", xlabel="epoch", ylabel="loss")
    losses.legend(fontsize="small")
    for key, label in (("map50_95", "mAP50-95"), ("map50", "mAP50")):
        maps.plot(epochs, [r.get(key) for r in rows], marker=".", label=label)
    maps.set(title="validation mAP", xlabel="epoch", ylim=(0, 1))
    maps.legend(fontsize="small")
    whole_epochs(losses, maps)
    save_figure(fig, path)


def plot_pr_curve(metrics: dict[str, Any], path: Path) -> None:
    fig = figure()
    ax = fig.add_subplot()
    curve = metrics["pr_curve"]
    for name, precision in curve.get("per_class", {}).items():
        ax.plot(curve["recall"], precision, linewidth=0.8, alpha=0.6, label=plain(name))
    ax.plot(curve["recall"], curve["precision"], color="black", linewidth=2.5,
            label=f"all classes (mAP50 {metrics['map50']:.3f})")
    ax.set(title="precision-recall at IoU 0.5", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(fontsize="x-small", loc="lower left")
    save_figure(fig, path)


def plot_per_class_ap(metrics: dict[str, Any], path: Path) -> None:
    names = [n for n, ap in metrics["per_class_ap"].items() if ap is not None]
    fig = figure(6.4, max(2.5, 0.35 * len(names) + 1))
    ax = fig.add_subplot()
    ax.barh([plain(n) for n in names], [metrics["per_class_ap"][n] for n in names],
            color=[tuple(c / 255 for c in colour(i)) for i in range(len(names))])
    ax.invert_yaxis()
    ax.set(title="AP50-95 per class", xlim=(0, 1))
    save_figure(fig, path)


def plot_confusion(metrics: dict[str, Any], path: Path) -> None:
    import numpy as np

    matrix = np.array(metrics["confusion_matrix"])
    labels = [plain(n) for n in metrics["confusion_labels"]]
    size = max(4.5, 0.45 * len(labels) + 2)
    fig = figure(size, size)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize="small")
    ax.set_yticks(range(len(labels)), labels, fontsize="small")
    ax.set(xlabel="predicted", ylabel="true",
           title=f"confusion matrix (IoU 0.5, conf >= {metrics['confusion_conf']:.2f})")
    for (i, j), n in np.ndenumerate(matrix):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize="x-small",
                    color="white" if n > matrix.max() / 2 else "black")
    save_figure(fig, path)


def plot_val_grid(eval_dir: Path, conf: float, path: Path) -> bool:
    """A grid of the first evaluated images: truth in green, predictions in class colours.

    Returns False (and writes nothing) when none of the images can be read any more.
    """
    gt = read_json(eval_dir / "ground_truth.json")
    results = read_json(eval_dir / "predictions.json")
    names = {c["id"]: c["name"] for c in gt["categories"]}
    categories = [names[i] for i in sorted(names)]
    thumbs: list[Any] = []
    for image in gt["images"]:
        if len(thumbs) == GRID_IMAGES:
            break
        found = thumbnail(Path(image["file_name"]), THUMB)
        if found is None:
            continue
        picture, scale = found
        truth = [_box(names[a["category_id"]], a["bbox"]) for a in gt["annotations"] if a["image_id"] == image["id"]]
        preds = [_box(names[r["category_id"]], r["bbox"], r["score"]) for r in results
                 if r["image_id"] == image["id"] and r["score"] >= conf]
        draw_boxes(picture, [scale_box(b, scale) for b in truth], categories, fixed=TRUTH_COLOUR)
        draw_boxes(picture, [scale_box(b, scale) for b in preds], categories)
        thumbs.append(picture)
    if not thumbs:
        return False
    write_sheet(path, thumbs, THUMB, GRID_COLUMNS)
    return True


def _box(label: str, bbox: list[float], score: float | None = None) -> Box:
    x, y, w, h = bbox
    return Box(label, x, y, w, h, confidence=score)


# -- the report ----------------------------------------------------------------------------

def write_report(run_dir: Path) -> Path:
    """Write the PNGs and ``report.html`` of a run from its files; returns the HTML path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise TlsyncError(f"run '{run_dir}' not found")
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").exists() else {}
    rows = read_metrics_csv(run_dir / "metrics.csv")
    eval_dir = run_dir / "eval"
    metrics = read_json(eval_dir / "metrics.json") if (eval_dir / "metrics.json").exists() else None

    sections = [_summary_html(run_dir, config, rows, metrics)]
    if rows:
        plot_training(rows, run_dir / "training.png")
        sections.append(_figure_html("Training", "training.png"))
    if metrics:
        sections.append(_metrics_html(metrics))
        plot_pr_curve(metrics, run_dir / "pr_curve.png")
        plot_per_class_ap(metrics, run_dir / "per_class_ap.png")
        plot_confusion(metrics, run_dir / "confusion_matrix.png")
        sections += [_figure_html("Precision-recall", "pr_curve.png"), _figure_html("Per-class AP", "per_class_ap.png"),
                     _figure_html("Confusion matrix", "confusion_matrix.png")]
        conf = metrics.get("best_conf") or 0.25
        if (eval_dir / "predictions.json").exists() and plot_val_grid(eval_dir, conf, run_dir / "val_images.png"):
            sections.append(_figure_html(f"Evaluated images (truth green, predictions with conf >= {conf:.2f})",
                                         "val_images.png"))
    else:
        sections.append("<p>No evaluation yet: run <code>tlsync eval --run RUN</code>.</p>")
    if (run_dir / "forgetting.json").exists():
        sections.append(_forgetting_html(read_json(run_dir / "forgetting.json")))
    others = sorted(p for p in eval_dir.glob("*/metrics.json")) if eval_dir.is_dir() else []
    if others:
        sections.append(_other_evals_html([(p.parent.name, read_json(p)) for p in others]))

    title = html.escape(f"tlsync run {run_dir.name}")
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title><style>{CSS}</style></head>\n"
            f"<body><h1>{title}</h1>\n" + "\n".join(sections) + "\n</body></html>\n")
    out = run_dir / "report.html"
    atomic_write_text(out, page)
    return out


CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
       "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
       "th:first-child,td:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}")


def _table(header: list[str] | None, rows: list[list[str]]) -> str:
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _figure_html(title: str, file: str) -> str:
    return f"<h2>{html.escape(title)}</h2><img src='{html.escape(file)}' alt='{html.escape(title)}'>"


def _summary_html(run_dir: Path, config: dict[str, Any], rows: list[dict[str, float]], metrics: dict | None) -> str:
    facts = [
        ["model", str(config.get("model", "?"))],
        ["weights", str(config.get("weights", "?"))],
        ["dataset", f"{config.get('dataset', '?')} ({config.get('content_hash', '')[:19]})"],
        ["epochs done", str(len(rows))],
        ["device", str(config.get("device", "?"))],
    ]
    if metrics:
        facts.append(["evaluated on", f"{metrics.get('dataset', '?')} split {metrics.get('split', '?')}"])
    return "<h2>Run</h2>" + _table(None, facts)


def _metrics_html(m: dict[str, Any]) -> str:
    rows = [["best-F1 confidence", fmt(m.get("best_conf"), 2), fmt(m["precision"]), fmt(m["recall"]), fmt(m["f1"])]]
    if "at_conf" in m:
        a = m["at_conf"]
        rows.append([f"at conf {a['conf']:.2f}", fmt(a["conf"], 2), fmt(a["precision"]), fmt(a["recall"]),
                     fmt(a["f1"])])
    if "per_class" in m:  # eval files written before per-class P/R existed have AP only
        per_class = _table(["class", "true boxes", "P", "R", "F1", "AP50", "AP50-95"],
                           [[name, str(c["boxes"]), fmt(c["precision"]), fmt(c["recall"]), fmt(c["f1"]),
                             fmt(c["ap50"]), fmt(c["ap50_95"])] for name, c in m["per_class"].items()])
        per_class = f"<p>Per class, P/R/F1 at conf {fmt(m.get('confusion_conf'), 2)}:</p>" + per_class
    else:
        per_class = _table(["class", "AP50-95"], [[name, fmt(ap)] for name, ap in m["per_class_ap"].items()])
    return ("<h2>Evaluation</h2>"
            + _table(["mAP50-95", "mAP50", "images", "true boxes"],
                     [[fmt(m["map50_95"]), fmt(m["map50"]), str(m.get("images", "")),
                       str(m.get("ground_truth_boxes", ""))]])
            + _table(["threshold", "conf", "precision", "recall", "F1"], rows)
            + per_class)


def _other_evals_html(evals: list[tuple[str, dict[str, Any]]]) -> str:
    """One row per evaluation beside the main one, naming the model file it scored (a run's
    exports share its dataset and split, so those alone cannot tell the rows apart); files
    written before the name was recorded show their folder, which holds it."""
    rows = [[m.get("model") or folder, f"{m.get('dataset', '?')} {m.get('split', '?')}", fmt(m["map50_95"]),
             fmt(m["map50"]), fmt(m["precision"]), fmt(m["recall"]), fmt(m["f1"])] for folder, m in evals]
    return "<h2>Other evaluations</h2>" + _table(["model", "data", "mAP50-95", "mAP50", "P", "R", "F1"], rows)


def _forgetting_html(f: dict[str, Any]) -> str:
    """The forgetting check of a continued run: per-class AP of parent and child on the parent's data."""
    where = f.get("parent", {})
    rows = [[name, str(r["boxes"]), fmt(r["parent_ap50"]), fmt(r["child_ap50"]), _signed(r["delta_ap50"]),
             fmt(r["parent_ap50_95"]), fmt(r["child_ap50_95"]), _signed(r["delta_ap50_95"])]
            for name, r in f["classes"].items()]
    o = f["overall"]
    rows.append(["all", "", fmt(o["parent_map50"]), fmt(o["child_map50"]), _signed(o["delta_map50"]),
                 fmt(o["parent_map50_95"]), fmt(o["child_map50_95"]), _signed(o["delta_map50_95"])])
    notes = []
    if f.get("forgotten"):
        notes.append(f"AP50 fell by more than {f['tolerance_ap50']:g} for: {', '.join(f['forgotten'])}")
    if f.get("dropped_classes"):
        notes.append(f"dropped by this run: {', '.join(f['dropped_classes'])}")
    if f.get("new_classes"):
        notes.append(f"new in this run (not scored against the parent): {', '.join(f['new_classes'])}")
    data, split = (html.escape(str(where.get(k, "?"))) for k in ("dataset", "split"))
    return (f"<h2>Forgetting check</h2><p>On the parent's data, {data} split {split} "
            f"(parent: {html.escape(str(where.get('checkpoint', '?')))})</p>"
            + _table(["class", "boxes", "AP50 parent", "AP50 child", "delta", "AP50-95 parent",
                      "AP50-95 child", "delta"], rows)
            + "".join(f"<p>{html.escape(n)}</p>" for n in notes))


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.3f}"
