"""How numbers and metrics read as text: ``tlsync eval``'s table, and the report's and compare's cells."""

from __future__ import annotations

from typing import Any

from tlsync.console import echo


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_metrics(m: dict[str, Any], what: str) -> None:
    echo(f"{what} on {m['dataset']} split {m['split']}: {m['images']} images, {m['ground_truth_boxes']} boxes")
    echo(f"mAP50-95 {fmt(m['map50_95'])}  mAP50 {fmt(m['map50'])}")
    echo(f"P {fmt(m['precision'])}  R {fmt(m['recall'])}  F1 {fmt(m['f1'])}  "
         f"at conf {fmt(m['best_conf'], 2)} (the confidence with the best F1)")
    if "at_conf" in m:
        a = m["at_conf"]
        echo(f"P {fmt(a['precision'])}  R {fmt(a['recall'])}  F1 {fmt(a['f1'])}  at conf {a['conf']:.2f}")
    echo(f"per class (P, R, F1 at conf {fmt(m['confusion_conf'], 2)}):")
    width = max(len(name) for name in [*m["per_class"], "class"])
    echo(f"  {'class':<{width}}  {'boxes':>6}  {'P':>5}  {'R':>5}  {'F1':>5}  {'mAP50':>5}  {'mAP50-95':>8}")
    pooled = m.get("at_conf", m)  # the per-class rows use --conf when given, else the best-F1 one
    rows = [("all", m["ground_truth_boxes"], pooled["precision"], pooled["recall"], pooled["f1"],
             m["map50"], m["map50_95"])]
    rows += [(name, c["boxes"], c["precision"], c["recall"], c["f1"], c["ap50"], c["ap50_95"])
             for name, c in m["per_class"].items()]
    for name, boxes, *values in rows:
        cells = "  ".join(f"{fmt(v):>{w}}" for v, w in zip(values, (5, 5, 5, 5, 8), strict=True))
        echo(f"  {name:<{width}}  {boxes:>6}  {cells}" + ("  (no boxes of this class here)" if not boxes else ""))
    if m.get("unknown_classes"):
        echo(f"classes the model was not trained on (scored as AP 0): {', '.join(m['unknown_classes'])}")
