"""What a learning curve shows people: ``curve.png`` and the one table ``tlsync curve`` prints.

Both are rebuilt from ``curve.json`` alone, so they can be redrawn after a resume.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..evaluation.drawing import colour
from ..evaluation.plots import figure, save_figure
from ..evaluation.summary import fmt
from .fit import REACH, by_size


def plot_curve(data: dict[str, Any], path: Path) -> None:
    """mAP against labelled images (log x, seed spread as error bars, the fit dashed); per-class AP50 beside it."""
    points = data["points"]
    fig = figure(12, 4.5)
    overall, per_class = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for key, label in (("map50_95", "mAP50-95"), ("map50", "mAP50")):
        sizes = by_size(points, key)
        ns = list(sizes)
        means = [float(np.mean(v)) for v in sizes.values()]
        values = list(sizes.values())
        spread = [[m - min(v) for m, v in zip(means, values, strict=True)],
                  [max(v) - m for m, v in zip(means, values, strict=True)]]
        overall.errorbar(ns, means, yerr=spread, marker="o", capsize=3, label=f"{label} (min-max over seeds)")
    params = (data.get("fit") or {}).get("params")
    if params and points:
        n_max = max(p["train_images"] for p in points)
        xs = np.geomspace(min(p["train_images"] for p in points), 4 * n_max, 100)
        overall.plot(xs, params["a"] - params["b"] * xs ** -params["c"], "--", color="grey",
                     label=f"fit: {params['a']:.3f} - {params['b']:.3g} n^-{params['c']:.2f}")
        overall.axvline(n_max, color="lightgrey", linewidth=0.8)
    overall.set(xscale="log", title=f"{data['dataset']}: {data['split']} mAP vs labelled images",
                xlabel="labelled train images (log)", ylabel="mAP", ylim=(0, 1))
    overall.legend(fontsize="small")
    classes: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        for name, ap in p.get("per_class_ap50", {}).items():
            if ap is not None:
                classes[name][p["train_images"]].append(ap)
    for i, (name, sizes) in enumerate(classes.items()):
        ns = sorted(sizes)
        per_class.plot(ns, [float(np.mean(sizes[n])) for n in ns], marker=".", label=name,
                       color=tuple(c / 255 for c in colour(i)))
    per_class.set(xscale="log", title="AP50 per class (mean over seeds)", xlabel="labelled train images (log)",
                  ylabel="AP50", ylim=(0, 1))
    if classes:
        per_class.legend(fontsize="x-small", ncol=2)
    save_figure(fig, path)


def summary(data: dict[str, Any]) -> list[str]:
    """The measured points, the predictions with their intervals, the target, and the warnings."""
    lines = [f"{'labelled images':>15}  {'fraction':>8}  {'seeds':>5}  {data['split'] + ' mAP50-95':>16}  "
             f"{'mAP50':>6}"]
    rows: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for p in data["points"]:
        rows[p["train_images"]].append(p)
    for n in sorted(rows):
        maps = [p["map50_95"] for p in rows[n]]
        sd = f" ± {np.std(maps):.3f}" if len(maps) > 1 else ""
        lines.append(f"{n:>15}  {rows[n][0]['fraction']:>8g}  {len(maps):>5}  {np.mean(maps):>9.3f}{sd:<7}  "
                     f"{np.mean([p['map50'] for p in rows[n]]):>6.3f}")
    fit = data["fit"]
    if fit["params"]:
        a, b, c = (fit["params"][k] for k in "abc")
        lines.append(f"fit: mAP50-95 = {a:.3f} - {b:.3g} * n^-{c:.2f} (levels off at {a:.3f}); "
                     "90% intervals from a bootstrap over seeds")
        for p in fit["predictions"]:
            band = f"[{fmt(p['low'])}, {fmt(p['high'])}]" if p["low"] is not None else "(no interval: 1 seed)"
            lines.append(f"{p['images']:>15}  {str(p['multiple']) + 'x':>8}  {'pred':>5}  {p['map50_95']:>9.3f} {band}")
    target = fit.get("target")
    if target:
        if target.get("beyond_reach"):
            lines.append(f"target mAP50-95 {target['map50_95']:.3f}: out of reach of this fit (it would need more "
                         f"than {REACH}x today's {fit['n_today']} labelled images)")
        elif target["images"] is None:
            lines.append(f"target mAP50-95 {target['map50_95']:.3f}: out of reach of the fit, which levels off "
                         f"at {target['plateau']:.3f}")
        else:
            high = f"{target['high']:.0f}" if target["high"] is not None else "out of reach"
            band = f" [{target['low']:.0f}, {high}]" if target["low"] is not None else ""
            lines.append(f"target mAP50-95 {target['map50_95']:.3f}: about {target['images']} labelled images{band} "
                         f"(today {fit['n_today']})")
    for warning in fit["warnings"]:
        lines.append(f"poor fit: {warning}")
    return lines
