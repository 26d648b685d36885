"""``tlsync curve``: nested stratified subsets, the power-law fit, resume, and a real curve end to end."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from tlsync.connectors.synthetic import SyntheticSource
from tlsync.format import Box, ImageRef, Item
from tlsync.pull import pull
from tlsync.trainer.curve.fit import analyse
from tlsync.trainer.curve.run import CURVE, load_plan, new_plan, run_curve
from tlsync.trainer.curve.subsets import materialise, nested_order, parse_fractions, subset_size

SMALL = ("--model", "fasterrcnn_efficientnet_lite0_fpn", "--weights", "imagenet", "--img-size", "64",
         "--batch-size", "2", "--workers", "0", "--device", "cpu")


def items_with_a_rare_class(n: int = 60) -> list[Item]:
    """Mostly 'common' boxes; only three images hold the 'rare' class; some hold none."""
    out = []
    for i in range(n):
        label = "rare" if i in (7, 31, 52) else "common"
        boxes = [] if i % 10 == 3 else [Box(label, 1, 1, 5, 5)]
        out.append(Item(f"item-{i:03d}", ImageRef(f"mem://{i}", width=20, height=20), boxes, "train"))
    return out


def ids(items: list[Item]) -> list[str]:
    return [i.id for i in items]


def test_subsets_are_nested_stratified_and_seeded() -> None:
    items = items_with_a_rare_class()
    order = nested_order(items, seed=1)
    assert sorted(ids(order)) == sorted(ids(items))  # a permutation: nothing lost, nothing repeated
    subsets = [order[:subset_size(f, len(order))] for f in parse_fractions("0.1,0.25,0.5,1")]
    for small, large in zip(subsets, subsets[1:], strict=False):
        assert set(ids(small)) < set(ids(large))
    smallest = subsets[0]
    assert len(smallest) == 6
    assert any(b.label == "rare" for i in smallest for b in i.annotations)  # 3 of 60 images, yet present
    # Stratified: the half keeps roughly half of each class's images.
    half = subsets[2]
    assert 12 <= sum(1 for i in half if not i.annotations) + 12 <= 15
    assert ids(nested_order(items, seed=1)) == ids(order)  # same seed, same subsets
    assert ids(nested_order(list(reversed(items)), seed=1)) == ids(order)  # input order does not matter
    assert ids(nested_order(items, seed=2))[:30] != ids(order)[:30]


def test_bad_fractions_are_refused() -> None:
    from tlsync.errors import TlsyncError

    for text in ("0", "1.5", "a,b", ""):
        with pytest.raises(TlsyncError, match="--fractions"):
            parse_fractions(text)


def synthetic(store, name: str = "shapes", items: int = 24, ratios=(0.6, 0.2, 0.2)):
    pull(store, SyntheticSource(), {"items": items, "size": 64, "seed": 0}, name, split_ratios=ratios)
    return store.open(name)


def test_every_point_keeps_the_same_val_and_test(store) -> None:
    base = synthetic(store)
    order = nested_order(list(base.items("train")), 1)
    held_out = {s: ids(base.items(s)) for s in ("val", "test")}
    for fraction in (0.25, 1.0):
        version = materialise(store, base, order[:subset_size(fraction, len(order))], fraction, 1)
        assert {s: ids(version.items(s)) for s in ("val", "test")} == held_out
        assert version.categories == base.categories
        # No image was copied: the subset points at the store's own files.
        assert {version.image_path(i) for i in version.items()} <= {base.image_path(i) for i in base.items()}
    again = materialise(store, base, order[:subset_size(0.25, len(order))], 0.25, 1)
    assert again.version == 1  # same content: reused, not versioned again


def power_law_points(a: float, b: float, c: float, noise: float = 0.0, seeds: int = 3) -> list[dict]:
    rng = random.Random(0)
    return [{"train_images": n, "fraction": n / 400, "seed": s, "map50_95": a - b * n ** -c + rng.gauss(0, noise),
             "map50": 0.0} for n in (25, 50, 100, 200, 400) for s in range(seeds)]


def test_the_fit_recovers_a_known_power_law() -> None:
    result = analyse(power_law_points(0.7, 2.0, 0.6, noise=0.004), target=0.6)
    assert result.fit is not None
    assert abs(result.fit.a - 0.7) < 0.05 and abs(result.fit.c - 0.6) < 0.2
    for p in result.predictions:
        truth = 0.7 - 2.0 * p["images"] ** -0.6
        assert abs(p["map50_95"] - truth) < 0.02, p
        assert p["low"] <= p["map50_95"] <= p["high"]
    need = (2.0 / 0.1) ** (1 / 0.6)  # ~147 images for 0.6
    assert result.target is not None and abs(result.target["images"] - need) / need < 0.25
    assert result.warnings == []
    assert analyse(power_law_points(0.7, 2.0, 0.6), target=0.9).target["images"] is None  # above the plateau


def test_a_poor_fit_is_reported() -> None:
    two_sizes = [p for p in power_law_points(0.7, 2.0, 0.6) if p["train_images"] in (25, 50)]
    assert analyse(two_sizes).fit is None
    assert any("training size" in w for w in analyse(two_sizes).warnings)
    falling = power_law_points(0.7, 2.0, 0.6)
    for p in falling:
        if p["train_images"] == 400:
            p["map50_95"] = 0.2
    assert any(w.startswith("non-monotone") for w in analyse(falling).warnings)
    assert analyse(falling).to_dict()["poor"]


def fake_training(store, seen: list[str]):
    """A stand-in trainer for tests of the curve's bookkeeping: records the point, writes a run that scores."""
    from tlsync.trainer.curve import run as curve_module

    def train_point(cfg) -> Path:
        seen.append(cfg.name)
        return Path(cfg.project) / cfg.name

    def score(run, version, plan, fraction, seed):
        n = sum(1 for _ in version.items("train"))
        return {"fraction": fraction, "seed": seed, "train_images": n, "train_boxes": 0, "run": str(run),
                "map50_95": 0.8 - 1.0 * n ** -0.5, "map50": 0.9, "per_class_ap50": {}}

    return train_point, score, curve_module


def test_resume_skips_finished_points(store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synthetic(store, items=40)
    seen: list[str] = []
    train_point, score, curve_module = fake_training(store, seen)
    monkeypatch.setattr(curve_module, "score_point", score)
    plan = new_plan(store, "shapes", [0.25, 0.5, 1.0], 2, {"epochs": 1}, None, tmp_path / "curves")
    calls = 0

    def crash_on_third(cfg):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return train_point(cfg)

    with pytest.raises(KeyboardInterrupt):
        run_curve(plan, [], crash_on_third, store=store)
    saved = json.loads((plan.folder / CURVE).read_text())
    assert [p["fraction"] for p in saved["points"]] == [0.25, 0.5] and not saved["finished"]
    seen.clear()
    plan2, done = load_plan(plan.folder)
    data = run_curve(plan2, done, train_point, store=store)
    assert seen == ["f1-s1", "f0.25-s2", "f0.5-s2", "f1-s2"]  # the two finished points were not trained again
    assert data["finished"] and len(data["points"]) == 6
    assert (plan.folder / "curve.png").is_file()


class FixedSplits(SyntheticSource):
    """Synthetic shapes with splits by position: 8 train, 2 val, 2 test."""

    name = "fixed-splits"

    def items(self, ctx, **options):
        for n, item in enumerate(super().items(ctx, **options)):
            item.split = "train" if n < 8 else "val" if n < 10 else "test"
            yield item


def test_a_real_curve_through_the_cli(store, run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pull(store, FixedSplits(), {"items": 12, "size": 64, "seed": 0}, "shapes")
    result = run_cli("curve", "--dataset", "shapes", "--fractions", "0.5,1", "--seeds", "1", "--epochs", "1",
                     "--target-map", "0.5", *SMALL)
    assert result.exit_code == 0, result.stderr
    folder = tmp_path / "curves" / "shapes-1"
    data = json.loads((folder / CURVE).read_text())
    assert data["finished"] and [p["fraction"] for p in data["points"]] == [0.5, 1.0]
    assert data["split"] == "test"
    assert [p["train_images"] for p in data["points"]] == [4, 8]
    for p in data["points"]:
        run = Path(p["run"])
        metrics = json.loads((run / "eval" / "metrics.json").read_text())
        assert metrics["split"] == "test" and metrics["map50_95"] == p["map50_95"]
        assert (run / "report.html").is_file()
        assert set(p["per_class_ap50"]) == {"circle", "square", "triangle"}
    assert (folder / "curve.png").is_file()
    assert "only 2 training size(s)" in result.stdout  # two fractions cannot support a fit, and it says so
    assert "curve point 2 of 2" in result.stderr
    again = run_cli("curve", "--resume", folder)
    assert again.exit_code == 0, again.stderr
    assert "2 of 2 points already finished" in again.stderr
    refused = run_cli("curve", "--resume", folder, "--epochs", "3")
    assert refused.exit_code != 0 and "--epochs" in refused.stderr
    assert np.isfinite(data["points"][0]["map50_95"])


def test_a_curve_still_rising_steeply_is_flagged() -> None:
    """thermal's measured points up to 50% (benchmarks/learning_curve.py, 2 seeds): the fit puts the plateau
    at its bound of 1.0 and under-predicts the measured 100% point (0.309) by 0.076; it must say so."""
    measured = {18: (0.024, 0.038), 36: (0.067, 0.088), 53: (0.143, 0.102), 71: (0.177, 0.204)}
    points = [{"fraction": n / 142, "train_images": n, "seed": s, "map50_95": m, "map50": 0.0}
              for n, values in measured.items() for s, m in enumerate(values)]
    result = analyse(points)
    assert result.fit is not None and result.fit.a > 0.99
    assert any("plateau sits at its bound" in w for w in result.warnings)
    assert result.to_dict()["poor"]
    assert not any("plateau" in w for w in analyse(power_law_points(0.7, 2.0, 0.6, noise=0.004)).warnings)
