"""What more labels buy: a saturating power law fitted to a learning curve, with intervals.

mAP(n) = a - b * n^-c is the shape learning curves take in the literature (Hestness et al.
2017, "Deep learning scaling is predictable"): accuracy rises with the number n of
labelled images and levels off at a < 1. The fit is robust (soft-L1 loss, so one bad seed
cannot drag it) and bounded (0 <= a <= 1, 0.01 <= c <= 3). The interval comes from a
bootstrap over seeds: each replicate draws, at every size, that many of its seeds with
replacement and refits; the 5th and 95th percentiles of the predictions make a 90% band.

An extrapolation is a guess with error bars, not a measurement: ``diagnose`` says when the
data cannot support one (too few sizes, accuracy that falls with more labels, a fit that
misses its own points), and the README says how far to trust it.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MULTIPLES = (1.5, 2.0, 4.0)
BOOTSTRAP = 200
# A target that needs more than this many times today's labels is out of reach of the fit: the
# power law was fitted on a few fractions of today's data, and a number of images 100x beyond
# them (let alone 10^38, as a flat fit gives) is no estimate.
REACH = 100


@dataclass
class Fit:
    a: float
    b: float
    c: float
    rmse: float  # of the fit against the per-size mean

    def predict(self, n: float) -> float:
        return self.a - self.b * n ** -self.c

    def labels_for(self, target: float) -> float | None:
        """Labelled images for ``target`` mAP, or None where the curve levels off below it."""
        if target >= self.a or self.b <= 0:
            return None
        return (self.b / (self.a - target)) ** (1 / self.c)


@dataclass
class CurveFit:
    fit: Fit | None
    n_today: int
    predictions: list[dict[str, Any]] = field(default_factory=list)  # multiple, images, map, low, high
    target: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        params = None if self.fit is None else {"a": self.fit.a, "b": self.fit.b, "c": self.fit.c,
                                                "rmse": self.fit.rmse}
        return {"model": "map50_95 = a - b * n^-c", "params": params, "n_today": self.n_today,
                "predictions": self.predictions, "target": self.target, "warnings": self.warnings,
                "poor": bool(self.warnings)}


def fit_power_law(ns: np.ndarray, ys: np.ndarray, start: Fit | None = None) -> Fit | None:
    """The best of a few starts of a robust bounded least-squares fit, or None when none converges.

    A bootstrap replicate starts from the full fit (``start``) only: one start is enough so close.
    """
    from scipy.optimize import least_squares

    best = None
    a0 = min(1.0, float(ys.max()) + 0.05)
    starts = [(a0, max(1e-3, (a0 - float(ys.min())) * float(ns.min()) ** c0), c0) for c0 in (0.3, 0.7, 1.5)]
    if start is not None:
        starts = [(min(1.0, start.a), max(0.0, start.b), min(3.0, max(0.01, start.c)))]
    for x0 in starts:
        try:
            result = least_squares(lambda p: p[0] - p[1] * ns ** -p[2] - ys, x0,
                                   bounds=([0.0, 0.0, 0.01], [1.0, np.inf, 3.0]), loss="soft_l1", f_scale=0.02)
        except (ValueError, FloatingPointError):
            continue
        if result.success and (best is None or result.cost < best.cost):
            best = result
    if best is None:
        return None
    a, b, c = (float(v) for v in best.x)
    return Fit(a, b, c, 0.0)


def by_size(points: list[dict[str, Any]], key: str = "map50_95") -> dict[int, list[float]]:
    sizes: dict[int, list[float]] = defaultdict(list)
    for p in points:
        sizes[int(p["train_images"])].append(float(p[key]))
    return dict(sorted(sizes.items()))


def analyse(points: list[dict[str, Any]], target: float | None = None, seed: int = 0) -> CurveFit:
    """Fit the finished points, predict at 1.5x/2x/4x today's labels, and say what makes it unreliable."""
    sizes = by_size(points)
    n_today = max(sizes) if sizes else 0
    out = CurveFit(None, n_today)
    out.warnings = diagnose(sizes)
    if len(sizes) < 3:
        return out
    ns = np.array([n for n, ys in sizes.items() for _ in ys], dtype=float)
    ys = np.array([y for _, values in sizes.items() for y in values], dtype=float)
    out.fit = fit_power_law(ns, ys)
    if out.fit is None:
        out.warnings.append("the power law did not converge on these points; no prediction")
        return out
    means = np.array([np.mean(v) for v in sizes.values()])
    out.fit.rmse = float(np.sqrt(np.mean((np.array([out.fit.predict(n) for n in sizes]) - means) ** 2)))
    replicates = _bootstrap(sizes, out.fit, seed)
    for m in MULTIPLES:
        n = n_today * m
        low, high = _interval([f.predict(n) for f in replicates])
        out.predictions.append({"multiple": m, "images": round(n), "map50_95": out.fit.predict(n),
                                "low": low, "high": high})
    if target is not None:
        out.target = _target(out.fit, replicates, target, REACH * n_today)
    out.warnings += _fit_warnings(out.fit, sizes, out.predictions)
    return out


def _target(fit: Fit, replicates: list[Fit], target: float, reach: float) -> dict[str, Any]:
    """The labelled images ``target`` needs, with its interval; ``images`` None when the curve
    levels off below it (``beyond_reach`` False) or only gets there past ``reach`` images (True)."""
    need = fit.labels_for(target)
    reps = [f.labels_for(target) for f in replicates]
    reachable = [r for r in reps if r is not None and r <= reach]
    low, high = _interval(reachable) if len(reachable) >= len(reps) / 2 and reachable else (None, None)
    beyond = need is not None and need > reach
    return {"map50_95": target, "images": None if need is None or beyond else math.ceil(need),
            "low": low, "high": high if len(reachable) == len(reps) else None, "plateau": fit.a,
            "beyond_reach": beyond, "reach_images": round(reach)}


def diagnose(sizes: dict[int, list[float]]) -> list[str]:
    """Reasons the data cannot support an extrapolation, before any fit."""
    warnings = []
    if len(sizes) < 3:
        warnings.append(f"only {len(sizes)} training size(s): a 3-parameter curve needs at least 3 "
                        "(4 or more to be checked); no prediction")
    elif len(sizes) == 3:
        warnings.append("3 training sizes for 3 parameters: the curve goes through them and nothing checks it")
    means = [(n, float(np.mean(v)), float(np.std(v))) for n, v in sizes.items()]
    for (n1, m1, s1), (n2, m2, s2) in zip(means, means[1:], strict=False):
        if m2 < m1 - max(0.01, s1, s2):
            warnings.append(f"non-monotone: mean mAP50-95 falls from {m1:.3f} at {n1} images to {m2:.3f} at {n2} "
                            "(noise, too few epochs for the larger sets, or a ceiling)")
    return warnings


def _fit_warnings(fit: Fit, sizes: dict[int, list[float]], predictions: list[dict[str, Any]]) -> list[str]:
    warnings = []
    spread = max((float(np.std(v)) for v in sizes.values()), default=0.0)
    if fit.rmse > max(0.02, 2 * spread):
        warnings.append(f"the fit misses its own points by {fit.rmse:.3f} mAP (rms): the curve does not have "
                        "this shape")
    if fit.c >= 2.99 or fit.c <= 0.011:
        warnings.append(f"exponent c={fit.c:.2f} sits at its bound: the points barely constrain the curve")
    if fit.a >= 0.999:
        # benchmarks/learning_curve.py: thermal's points up to 50% did this, and under-predicted 100% by 0.076
        warnings.append("the plateau sits at its bound (mAP 1.0): the points are still rising steeply and do not "
                        "show where the curve levels off; the predictions extend the rising part, which tends "
                        "to under-predict")
    wide = [p for p in predictions if p["low"] is not None and p["high"] - p["low"] > 0.1]
    if wide:
        warnings.append(f"wide intervals (up to {max(p['high'] - p['low'] for p in wide):.2f} mAP): "
                        "more seeds or more sizes would narrow them")
    return warnings


def _bootstrap(sizes: dict[int, list[float]], start: Fit, seed: int) -> list[Fit]:
    """Refits on seed-resampled data; empty when every size has one seed (nothing to resample)."""
    if all(len(v) < 2 for v in sizes.values()):
        return []
    rng = random.Random(seed)
    fits = []
    for _ in range(BOOTSTRAP):
        ns, ys = [], []
        for n, values in sizes.items():
            for _ in values:
                ns.append(n)
                ys.append(rng.choice(values))
        fit = fit_power_law(np.array(ns, dtype=float), np.array(ys, dtype=float), start)
        if fit is not None:
            fits.append(fit)
    return fits


def _interval(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    low, high = np.percentile(values, [5, 95])
    return float(low), float(high)
