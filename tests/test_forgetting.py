"""The forgetting check: a child continued on data without one class is caught forgetting it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tlsync.connectors.synthetic import SyntheticSource
from tlsync.format import ImageRef, Item
from tlsync.pull import pull
from tlsync.sources import PullContext
from tlsync.trainer.forgetting import compare

LITE0 = ("--model", "fasterrcnn_efficientnet_lite0_fpn", "--weights", "imagenet")
SMALL = ("--img-size", "128", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--patience", "0")


class Seen(SyntheticSource):
    """Synthetic shapes whose test split holds copies (new ids, same pictures) of the train images.

    The parent is then scored on pictures it trained on, so a few CPU steps give it a clearly
    non-zero AP for every class, and a drop after continuing is forgetting, not noise.
    ``drop`` leaves out the train images that show that class (the class stays declared).
    """

    name = "seen-shapes"

    def __init__(self, drop: str | None = None):
        self.drop = drop

    def items(self, ctx: PullContext, **options: Any) -> Iterator:
        for item in super().items(ctx, **options):
            if self.drop is None or all(b.label != self.drop for b in item.annotations):
                item.split = "train"
                yield item
            copy = Item(f"{item.id}-copy", ImageRef(item.image.uri), list(item.annotations), "test")
            yield copy


def train(run_cli, *args: Any) -> Path:
    result = run_cli("train", *args)
    assert result.exit_code == 0, result.stderr
    return Path(re.search(r"^run: (.+)$", result.stdout, re.M).group(1)), result


def test_a_child_that_forgets_a_class_is_warned_about_by_name(store, run_cli, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    options = {"items": 8, "size": 128, "seed": 0}
    pull(store, Seen(), options, "v1")
    pull(store, Seen(drop="triangle"), options, "v2")
    # Caveat (measured 2026-12-01): at --lr 0.04 the child loses every class on the parent's data
    # (AP50 0.66/0.92/0.38 -> 0 for circle/square/triangle), so this checks the warning, files and
    # figures, not that only the dropped class falls; at the default lr, on data this small, the
    # dropped class did not fall (triangle +0.12, the others -0.55/-0.71): noise dominates.
    parent, _ = train(run_cli, "--dataset", "v1", *LITE0, *SMALL, "--epochs", "8", "--lr", "0.02")
    child, result = train(run_cli, "--dataset", "v2", "--weights", parent, *SMALL, "--epochs", "6", "--lr", "0.04")
    forgetting = json.loads((child / "forgetting.json").read_text())
    assert forgetting["parent"]["dataset"] == "v1@1" and forgetting["parent"]["split"] == "test"
    tri = forgetting["classes"]["triangle"]
    assert tri["delta_ap50"] == pytest.approx(tri["child_ap50"] - tri["parent_ap50"])
    assert tri["delta_ap50"] < -0.05, forgetting
    assert "triangle" in forgetting["forgotten"]
    assert re.search(r"warning: forgetting: .* for .*triangle", result.stderr)
    child_eval = json.loads((child / "eval" / "parent" / "metrics.json").read_text())
    assert child_eval["dataset"] == "v1@1" and child_eval["map50_95"] == forgetting["overall"]["child_map50_95"]
    assert "Forgetting" in (child / "report.html").read_text()
    table = run_cli("compare", parent, child, "--out", tmp_path)
    assert table.exit_code == 0 and "on parent data" in table.stdout
    off, _ = train(run_cli, "--dataset", "v2", "--weights", parent, *SMALL, "--epochs", "1", "--forget-check", "off")
    assert not (off / "forgetting.json").exists()


def test_new_and_dropped_classes_are_named_not_scored() -> None:
    def metrics(aps: dict[str, float]) -> dict[str, Any]:
        return {"map50_95": 0.5, "map50": 0.6,
                "per_class": {n: {"boxes": 3, "ap50": ap, "ap50_95": ap / 2} for n, ap in aps.items()}}

    result = compare(metrics({"cat": 0.8, "dog": 0.7, "cow": 0.6}), metrics({"cat": 0.79, "dog": 0.3, "cow": 0.0}),
                     ["cat", "dog", "cow"], ["cat", "dog", "bird"], 0.05)
    assert result["forgotten"] == ["dog"]  # cat's -0.01 is within tolerance; cow is dropped, not forgotten
    assert result["dropped_classes"] == ["cow"] and result["new_classes"] == ["bird"]
    assert "bird" not in result["classes"]
    assert result["classes"]["dog"]["delta_ap50_95"] == pytest.approx(-0.2)
