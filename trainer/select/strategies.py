"""The selection strategies: which pool images to label next, best first.

All of them are pure functions of the scored pool (and, for diversity, the labelled
set's features) plus ``seed``, with ties broken by pool order (item id), so a selection
is reproducible from its run, pool, strategy and seed.

**uncertainty.** torchvision's detectors return, per box, only the winning class's score
after non-maximum suppression, so the per-detection uncertainty is the binary entropy of
that score, H(p) = -p log2 p - (1-p) log2 (1-p): 0 for a box the model is sure of (p near
1) or sure is nothing (p near 0), 1 bit at p = 0.5. Boxes are aggregated per image with
the **maximum**, as recommended by Haussmann et al. 2020 ("Scalable Active Learning for
Object Detection"), who found max aggregation the most reliable of max/sum/average, and
in line with Brust et al. 2018 ("Active Learning for Deep Object Detection"), who score
images from their individual detections' margins: a sum favours crowded images whatever
the model's confidence, and an average lets one hard object drown among easy ones. Mean
entropy and the number of uncertain boxes break ties and are reported as components.

**diversity.** k-center greedy (Sener & Savarese 2018, "Active Learning for Convolutional
Neural Networks: A Core-Set Approach"): repeatedly take the pool image farthest (in the
run's pooled backbone features) from everything labelled or already chosen, so the batch
covers the parts of the image space the training set does not.

**hybrid.** k-center greedy restricted to the most uncertain ``HYBRID_FACTOR x budget``
images: hard images, but not the same hard frame two hundred times. When that is the whole
pool (a budget of a quarter of the pool or more) hybrid is exactly diversity.

**random.** A seeded permutation: the baseline every claim is measured against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tlsync.format import Box

STRATEGIES = ("hybrid", "uncertainty", "diversity", "random")
HYBRID_FACTOR = 4  # candidates per selected image for hybrid
UNCERTAIN = 0.5  # bits: a box counts as "uncertain" from here on (score between ~0.11 and ~0.89)
_CHUNK = 4096


@dataclass
class Pick:
    """One selected pool image: its index in the scored pool, its score and what made it up."""

    index: int
    score: float
    components: dict[str, float] = field(default_factory=dict)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def uncertainty_components(boxes: Sequence[Box]) -> dict[str, float]:
    """Per-image uncertainty (``max_entropy``, the score) and the figures beside it."""
    scores = np.array([b.confidence or 0.0 for b in boxes], dtype=np.float64)
    if scores.size == 0:
        return {"max_entropy": 0.0, "mean_entropy": 0.0, "uncertain_boxes": 0.0, "top_confidence": 0.0}
    entropy = binary_entropy(scores)
    return {"max_entropy": round(float(entropy.max()), 6), "mean_entropy": round(float(entropy.mean()), 6),
            "uncertain_boxes": float((entropy >= UNCERTAIN).sum()), "top_confidence": round(float(scores.max()), 6)}


def rank_uncertain(boxes: Sequence[Sequence[Box]]) -> list[Pick]:
    """Every image, most uncertain first (max entropy, then mean entropy, then pool order)."""
    parts = [uncertainty_components(b) for b in boxes]
    order = sorted(range(len(parts)), key=lambda i: (-parts[i]["max_entropy"], -parts[i]["mean_entropy"], i))
    return [Pick(i, parts[i]["max_entropy"], parts[i]) for i in order]


def _min_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Euclidean distance from each point to its nearest centre (chunked: pools can be large)."""
    best = np.full(len(points), np.inf, dtype=np.float64)
    for start in range(0, len(centres), _CHUNK):
        c = centres[start:start + _CHUNK].astype(np.float64)
        for p0 in range(0, len(points), _CHUNK):
            p = points[p0:p0 + _CHUNK].astype(np.float64)
            d2 = (p * p).sum(1)[:, None] - 2 * p @ c.T + (c * c).sum(1)[None, :]
            best[p0:p0 + _CHUNK] = np.minimum(best[p0:p0 + _CHUNK], np.sqrt(np.maximum(d2, 0).min(1)))
    return best


def k_center_greedy(features: np.ndarray, labelled: np.ndarray, budget: int, seed: int = 0) -> list[Pick]:
    """``budget`` pool indices, each the farthest from the labelled set and earlier picks.

    The score is that distance at the moment of picking (it only falls, so the ranking is
    the order of picking). With nothing labelled, the first pick is drawn with ``seed``.
    """
    n = len(features)
    budget = min(budget, n)
    if budget <= 0:
        return []
    if len(labelled):
        distance = _min_distances(features, labelled)
    else:
        distance = np.full(n, np.inf)
    picks: list[Pick] = []
    for _ in range(budget):
        if np.isinf(distance).all():
            index = int(np.random.default_rng(seed).integers(n))
        else:
            index = int(np.argmax(distance))  # the first of equal distances: pool order
        picks.append(Pick(index, round(float(distance[index]), 6) if np.isfinite(distance[index]) else 0.0,
                          {"distance": round(float(distance[index]), 6) if np.isfinite(distance[index]) else 0.0}))
        distance = np.minimum(distance, _min_distances(features, features[index:index + 1]))
        distance[index] = -1.0  # never again
    return picks


def random_picks(n: int, budget: int, seed: int) -> list[Pick]:
    order = np.random.default_rng(seed).permutation(n)[:budget]
    return [Pick(int(i), 0.0, {}) for i in order]


def select(strategy: str, boxes: Sequence[Sequence[Box]], features: np.ndarray | None,
           labelled: np.ndarray | None, budget: int, seed: int) -> list[Pick]:
    """The ``budget`` best pool images (indices into ``boxes``/``features``) under ``strategy``."""
    n = len(boxes)
    budget = min(budget, n)
    if strategy == "random":
        return random_picks(n, budget, seed)
    if strategy == "uncertainty":
        return rank_uncertain(boxes)[:budget]
    assert features is not None and labelled is not None, "diversity and hybrid need features"
    if strategy == "diversity":
        return k_center_greedy(features, labelled, budget, seed)
    if strategy == "hybrid":
        ranked = rank_uncertain(boxes)[:max(budget, HYBRID_FACTOR * budget)]
        candidates = np.array([p.index for p in ranked])
        chosen = k_center_greedy(features[candidates], labelled, budget, seed)
        by_index = {p.index: p for p in ranked}
        return [Pick(int(candidates[c.index]), c.score,
                     {**by_index[int(candidates[c.index])].components, **c.components}) for c in chosen]
    raise ValueError(f"unknown strategy {strategy!r}")
