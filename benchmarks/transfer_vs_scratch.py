"""The seed experiment: does transfer learning train faster and end more accurate than scratch?

    python benchmarks/transfer_vs_scratch.py [--epochs 5] [--more-epochs 3] [--keep DIR]

chess-pieces-coco (../shared/datasets, pulled through the roboflow source) at 416 px with
fasterrcnn_efficientnet_lite0_fpn, whose ImageNet weights ship in a pip package:

- chess@1 holds half of the train split (the first 101 of 202 images by id) plus val and test;
  (a) trains from ImageNet weights, (b) from scratch, for the same ``--epochs``.
- chess@2 adds the other 101 train images; (c) continues from (a), (d) starts from ImageNet
  weights again, both for the same ``--more-epochs``.

Every run's best checkpoint (by val mAP50-95) is scored on the test split, which both
versions share. The defaults (5 + 3 epochs) keep the script to about 45 minutes on 2 CPU
cores; more epochs give every run more accuracy but leave the comparison's shape alone.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import update_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHESS = ROOT.parent / "shared" / "datasets" / "chess-pieces-coco"
MODEL = "fasterrcnn_efficientnet_lite0_fpn"
SIZE = 416


def versions(store: Any) -> Any:
    """chess@1 (half the train split, all of val and test), then chess@2 (everything)."""
    from tlsync import plugins
    from tlsync.pull import pull
    from tlsync.sources import PullContext, Source

    pull(store, plugins.get_source("roboflow"), {"path": CHESS}, "chess-all")
    full = store.open("chess-all")
    train_ids = sorted(item.id for item in full.items("train"))
    first_half = set(train_ids[: len(train_ids) // 2])

    class FromStore(Source):
        """Items of the full pull, re-pulled from the store's own image files."""

        name = "chess-subset"

        def items(self, ctx: PullContext, keep_all: bool = False, **_: Any) -> Iterator:
            ctx.set_categories(full.categories)
            for item in full.items():
                if keep_all or item.split != "train" or item.id in first_half:
                    item.image.uri = str(full.image_path(item))
                    yield item

    for keep_all in (False, True):
        pull(store, FromStore(), {"keep_all": keep_all}, "chess")
    return store.open("chess@1"), store.open("chess@2")


def run_and_test(label: str, dataset: str, weights: str, epochs: int, project: Path, test_version: Any) -> dict:
    """Train one run, then score its best checkpoint on the test split."""
    from tlsync.trainer.checkpoint import load_model
    from tlsync.trainer.evaluate import evaluate_split
    from tlsync.trainer.train import TrainConfig, train

    print(f"--- ({label}) {dataset} from {weights}, {epochs} epochs", flush=True)
    run = train(TrainConfig(dataset=dataset, model=MODEL, weights=weights, img_size=SIZE, epochs=epochs,
                            device="cpu", patience=0, project=str(project), name=label))
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    clock = [sum(float(r["seconds"]) for r in rows[: i + 1]) for i in range(len(rows))]
    best = max(range(len(rows)), key=lambda i: (float(rows[i]["map50_95"]), -i))
    model, categories, _ = load_model(run)
    test = evaluate_split(model, test_version, "test", categories, "cpu", run / "test")
    return {"label": label, "run": run, "dataset": dataset, "weights": weights, "epochs": epochs,
            "map50": test["map50"], "map50_95": test["map50_95"], "val_map50_95": float(rows[best]["map50_95"]),
            "best_epoch": best + 1, "to_best": clock[best], "wall": clock[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="Epochs of (a) and (b) on chess@1.")
    parser.add_argument("--more-epochs", type=int, default=3, help="Epochs of (c) and (d) on chess@2.")
    parser.add_argument("--keep", type=Path, default=None, help="Keep the runs here (for `tlsync compare`).")
    args = parser.parse_args()
    if not CHESS.exists():
        sys.exit(f"shared dataset not found at {CHESS}")

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TLSYNC_HOME"] = str(Path(tmp) / "home")
        os.environ.setdefault("TLSYNC_LOAD_PLUGINS", "")
        from tlsync.store import Store

        project = args.keep or Path(tmp) / "runs"
        v1, v2 = versions(Store())
        a = run_and_test("a", v1.ref, "imagenet", args.epochs, project, v2)
        b = run_and_test("b", v1.ref, "none", args.epochs, project, v2)
        c = run_and_test("c", v2.ref, str(a["run"]), args.more_epochs, project, v2)
        d = run_and_test("d", v2.ref, "imagenet", args.more_epochs, project, v2)
    total = time.perf_counter() - started

    counts = {v.ref: sum(1 for _ in v.items("train")) for v in (v1, v2)}
    rows = "\n".join(
        f"| ({r['label']}) | {r['dataset']} ({counts[r['dataset']]} train) | "
        f"{'run (a)' if r['label'] == 'c' else r['weights']} | {r['epochs']} | {r['map50']:.3f} | {r['map50_95']:.3f} | "
        f"{r['val_map50_95']:.3f} (epoch {r['best_epoch']}) | {r['to_best']:.0f} s | {r['wall']:.0f} s |"
        for r in (a, b, c, d))
    body = f"""
{MODEL} at {SIZE} px on chess-pieces-coco, batch 4, SGD with tlsync's defaults; {args.epochs} epochs on
chess@1, then {args.more_epochs} more on chess@2. Test split: {sum(1 for _ in v2.items("test"))} images, the same in
both versions. Whole script: {total / 60:.1f} min (load average {os.getloadavg()[0]:.1f} at the end).

| run | data | start | epochs | test mAP50 | test mAP50-95 | best val mAP50-95 | wall to best | wall |
|---|---|---|---|---|---|---|---|---|
{rows}

Transfer vs scratch on chess@1: mAP50 {a['map50']:.3f} vs {b['map50']:.3f}. With more data, continuing (c) vs
restarting from ImageNet (d): mAP50 {c['map50']:.3f} vs {d['map50']:.3f}; (c)'s wall time excludes the
{a['wall']:.0f} s (a) took before it.
"""
    print(body)
    update_section("transfer_vs_scratch", "Transfer learning vs scratch (chess)", body,
                   f"python benchmarks/transfer_vs_scratch.py --epochs {args.epochs} --more-epochs {args.more_epochs}")


if __name__ == "__main__":
    main()
