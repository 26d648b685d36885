"""The seed experiment: does transfer learning train faster and end more accurate than scratch?

    python benchmarks/transfer_vs_scratch.py [--epochs 5] [--more-epochs 3] [--keep DIR]
    python benchmarks/transfer_vs_scratch.py --table-only DIR     # the table again, from runs kept in DIR

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
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

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


def run_and_test(label: str, dataset: str, weights: str, epochs: int, project: Path, test_version: Any) -> Path:
    """Train one run, then score its best checkpoint on the test split into ``run/test/``."""
    from tlsync.trainer.checkpoint import load_model
    from tlsync.trainer.evaluate import evaluate_split
    from tlsync.trainer.train import TrainConfig, train

    print(f"--- ({label}) {dataset} from {weights}, {epochs} epochs", flush=True)
    run = train(TrainConfig(dataset=dataset, model=MODEL, weights=weights, img_size=SIZE, epochs=epochs,
                            device="cpu", patience=0, project=str(project), name=label))
    model, categories, _ = load_model(run)
    evaluate_split(model, test_version, "test", categories, "cpu", run / "test")
    return run


def summarise(run: Path) -> dict[str, Any]:
    """One table row, from the run's files alone: config.json, metrics.csv, test/metrics.json."""
    config = json.loads((run / "config.json").read_text())
    test = json.loads((run / "test" / "metrics.json").read_text())
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    clock = [sum(float(r["seconds"]) for r in rows[: i + 1]) for i in range(len(rows))]
    best = max(range(len(rows)), key=lambda i: (float(rows[i]["map50_95"]), -i))
    start = "run (a)" if config["weights"] not in ("imagenet", "none") else config["weights"]
    return {"label": run.name, "dataset": config["dataset"], "start": start, "epochs": len(rows),
            "threads": config.get("versions", {}).get("torch_threads"),
            "map50": test["map50"], "map50_95": test["map50_95"], "test_images": test["images"],
            "val_map50_95": float(rows[best]["map50_95"]), "best_epoch": best + 1, "to_best": clock[best],
            "wall": clock[-1]}


def write_table(runs: list[Path]) -> None:
    a, b, c, d = (summarise(run) for run in runs)
    # From the first run's start to the last test evaluation: the whole experiment's wall time.
    first = datetime.fromisoformat(json.loads((runs[0] / "config.json").read_text())["created"])
    minutes = ((runs[-1] / "test" / "metrics.json").stat().st_mtime - first.timestamp()) / 60
    rows = "\n".join(
        f"| ({r['label']}) | {r['dataset']} | {r['start']} | {r['epochs']} | {r['map50']:.3f} | {r['map50_95']:.3f} | "
        f"{r['val_map50_95']:.3f} (epoch {r['best_epoch']}) | {r['to_best'] / 60:.1f} min | {r['wall'] / 60:.1f} min |"
        for r in (a, b, c, d))
    threads = f", {a['threads']} torch thread(s)" if a["threads"] else ""
    body = f"""
{MODEL} at {SIZE} px on chess-pieces-coco, batch 4, tlsync's default SGD schedule; {a['epochs']} epochs on
chess@1 (101 train images), then {c['epochs']} more on chess@2 (202). Test split: {a['test_images']} images, in
both versions. All four runs with their evaluations: {minutes:.0f} min{threads}.

| run | data | start | epochs | test mAP50 | test mAP50-95 | best val mAP50-95 | wall to best | wall |
|---|---|---|---|---|---|---|---|---|
{rows}

Transfer vs scratch on chess@1, same epochs: test mAP50 {a['map50']:.3f} vs {b['map50']:.3f}. With more data,
continuing (c) vs restarting from ImageNet (d), same epochs: {c['map50']:.3f} vs {d['map50']:.3f} (mAP50-95
{c['map50_95']:.3f} vs {d['map50_95']:.3f}); (c)'s wall time excludes the {a['wall'] / 60:.1f} min (a) took before it.
"""
    print(body)
    update_section("transfer_vs_scratch", "Transfer learning vs scratch (chess)", body,
                   f"python benchmarks/transfer_vs_scratch.py --epochs {a['epochs']} --more-epochs {c['epochs']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="Epochs of (a) and (b) on chess@1.")
    parser.add_argument("--more-epochs", type=int, default=3, help="Epochs of (c) and (d) on chess@2.")
    parser.add_argument("--keep", type=Path, default=None, help="Keep the runs here (for `tlsync compare`).")
    parser.add_argument("--table-only", type=Path, default=None, metavar="DIR",
                        help="Rebuild the table from runs kept earlier with --keep DIR; train nothing.")
    args = parser.parse_args()
    if args.table_only:
        write_table([args.table_only / label for label in "abcd"])
        return
    if not CHESS.exists():
        sys.exit(f"shared dataset not found at {CHESS}")

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TLSYNC_HOME"] = str(Path(tmp) / "home")
        os.environ.setdefault("TLSYNC_LOAD_PLUGINS", "")
        from tlsync.store import Store

        project = args.keep or Path(tmp) / "runs"
        v1, v2 = versions(Store())
        a = run_and_test("a", v1.ref, "imagenet", args.epochs, project, v2)
        b = run_and_test("b", v1.ref, "none", args.epochs, project, v2)
        c = run_and_test("c", v2.ref, str(a), args.more_epochs, project, v2)
        d = run_and_test("d", v2.ref, "imagenet", args.more_epochs, project, v2)
        write_table([a, b, c, d])


if __name__ == "__main__":
    main()
