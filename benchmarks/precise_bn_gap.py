"""Precise BN against a full recompute: how far the stored batch-norm statistics trail (issue 26).

A Lite0 Faster R-CNN is trained from scratch (``--weights none``, batch 4, tlsync's default
schedule) on a real shared dataset; then its last checkpoint's weights are scored on the test
split (``tlsync eval``'s path: images decoded whole, the model's transform resizes them) with
batch-norm statistics from:

- **reference**: a cumulative mean over every train image, model in eval mode and batch norm
  in train mode, images decoded as evaluation decodes them, batches of 4 in item order;
- **precise BN, before**: the statistics precise BN computed before issue 26 (a seeded,
  orientation-grouped sample of 25 x 4 train images through the training loader's decode:
  JPEG draft mode plus an antialiased resize to the training size);
- **precise BN, now**: ``precise_bn.recompute`` as training calls it before every checkpoint.

Training is the same whichever statistics are computed (precise BN changes no weight:
tests/test_precise_bn.py), so all three are measured on the same weights; "stored = now" checks
that the checkpoint training wrote holds the "now" statistics. A second table scores the same
checkpoint on the val split decoded as the per-epoch evaluation decodes it (JPEG draft mode at
the model's size) and as ``tlsync eval`` does (whole), the figure that picks ``best.pt``
against the one a user sees afterwards.

On a 2-core CPU a dataset costs 30-60 minutes, so each trained run is kept in ``--work`` and
each dataset's figures in ``--work/results.json``; a later invocation measures only the
datasets (or parts) not yet there for its settings (``--remeasure`` to redo them).

    python benchmarks/precise_bn_gap.py --datasets bccd,chess,thermal --epochs 3 --img-size 256
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import update_section  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
FOLDERS = {"bccd": "bccd-voc", "thermal": "thermal-dogs-people-yolo", "chess": "chess-pieces-coco"}
MODEL = "fasterrcnn_efficientnet_lite0_fpn"

# What the tables say, written beside them (the section is rewritten whole by every invocation).
FINDINGS = """\
Why the statistics could trail a recompute, cause by cause (the four the issue names):
- **the mode**: precise BN already ran as the reference does (model in eval mode, batch norm in
  train mode, a cumulative mean), before issue 26 and now;
- **the pictures and their sizes**: before issue 26 precise BN read its sample through the
  training loader (JPEG draft decode, an antialiased resize to the training size), while
  `tlsync eval`, `predict` and exports decode whole and let the model's transform resize without
  antialiasing; it now decodes as evaluation does (`evaluation.loader.EvalImages`);
- **padding**: every image of each shared dataset has one size (bccd 640x480, chess 2048x1371,
  thermal 416x416), so every batch is padded alike in the reference, in precise BN and in
  evaluation: padding cannot open a gap on them;
- **the sample**: with the three causes above equal, what is left. On thermal, "now" with the
  sample of then (25 x 4 = 100 of the 142 train images, seed 0) scored 0.036 under the
  reference, outside the 0.03 asked; other 100-image samples of the same weights scored 0.238
  (seed 2) and 0.258 (seed 1) against the reference's 0.255, and all 142 images in the sample's
  grouped order 0.275 (20 test images make test mAP50 move by a few hundredths for small changes
  in the statistics). So the
  default sample is now 50 x 4 images (`TrainConfig.precise_bn_batches`): the whole train split
  of each shared dataset, at twice the cost per epoch on larger ones.

With the 50 x 4 sample every dataset measured is within 0.03 of the full recompute. Limits: chess
at 3 epochs and 256 px is barely trained (its pieces are about 20 px there; test mAP50 about
0.02), so its row shows agreement near zero rather than on a working model; the issue's 0.10 was
measured on a VOC photo set of mixed sizes and orientations that is not available offline, and
no human-labelled detection set of 60 or more images ships inside a PyPI, npm or Debian package
that was checked (deepforest 2.1.0's wheel has 4 annotated aerial images with 951 tree boxes;
labelme, icedata, detection-datasets, ng-fruitdetect, sahi, pylabel, globox and megadetector
wheels none), so the padding cause is not measured on mixed sizes. bccd's run was trained
before the decode change; its columns are all recomputed on its weights, like the others'.

Val decode: draft mode reduces only JPEGs at least twice the model's input size (chess 8x at
256 px, bccd 2x, thermal not at all). The differences are far below the epoch-to-epoch changes
`best.pt` and `--patience` compare, and the final `eval/` decodes whole, so draft mode stays for
the per-epoch evaluation (docs/training.md)."""


def trained_run(work: Path, name: str, epochs: int, img_size: int) -> tuple[Path, Any]:
    """The scratch run on ``name`` (trained now unless ``work`` already holds it) and its store."""
    from tlsync import plugins
    from tlsync.pull import pull
    from tlsync.store import Store
    from tlsync.trainer import TrainConfig, train

    store = Store(work / "home")
    if not store.versions(name):
        pull(store, plugins.get_sources()["roboflow"], {"path": (SHARED / FOLDERS[name]).resolve()}, name)
    run = work / "runs" / f"{name}-{epochs}ep-{img_size}"
    if not (run / "weights" / "last.pt").exists():
        cfg = TrainConfig(dataset=name, model=MODEL, weights="none", epochs=epochs, img_size=img_size, batch_size=4,
                          workers=1, device="cpu", patience=0, forget_check="off", project=str(run.parent),
                          name=run.name, exist_ok=True)
        train(cfg, store)
    return run, store


def with_statistics(model: Any, batches: list[list[Any]]) -> Any:
    """A copy of ``model`` whose live batch norm holds the cumulative mean over ``batches`` of image tensors."""
    import torch

    from tlsync.trainer.training import precise_bn

    model = copy.deepcopy(model)
    layers = precise_bn.live_batchnorms(model)
    forward = precise_bn.stats_forward(model, layers)
    with precise_bn._accumulating(model, layers), torch.no_grad():
        for images in batches:
            forward(images)
    return model


def variants(model: Any, version: Any, config: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    """Each way of computing the statistics, as a function that returns the model with them."""
    import torch

    from tlsync.trainer.evaluation.predict import image_tensor, load_image
    from tlsync.trainer.training import precise_bn
    from tlsync.trainer.training.data import DetectionDataset, eval_transforms, train_transforms

    items = list(version.items("train"))
    paths = [version.image_path(i) for i in items]
    size, seed, batch = config["img_size"], config["seed"], config["batch_size"]
    train_set = DetectionDataset(items, paths, config["categories"], train_transforms(size), size)
    old_decode = DetectionDataset(items, paths, config["categories"], eval_transforms(size), size)

    def reference() -> Any:
        order = list(range(len(items)))
        return with_statistics(model, [[image_tensor(load_image(paths[i])) for i in order[s:s + 4]]
                                       for s in range(0, len(order), 4)])

    def before() -> Any:
        sample = precise_bn.sample_batches(old_decode, config["precise_bn_batches"], batch, seed)
        return with_statistics(model, [[old_decode[i][0] for i in b] for b in sample])

    def now() -> Any:  # the sample a run started today takes (the default), not the one this run was trained with
        fresh = copy.deepcopy(model)
        precise_bn.recompute(fresh, train_set, precise_bn.DEFAULT_BATCHES, batch, seed, torch.device("cpu"))
        return fresh

    return {"reference": reference, "before": before, "now": now}


def measure(work: Path, name: str, epochs: int, img_size: int, labels: set[str]) -> dict[str, Any]:
    """Test mAP50 (and mAP50-95) of the run's weights under each set of statistics named in ``labels``."""
    from tlsync.trainer.evaluation.evaluate import evaluate_split
    from tlsync.trainer.training.checkpoint import load_checkpoint, rebuild_model

    run, store = trained_run(work, name, epochs, img_size)
    checkpoint = load_checkpoint(run / "weights" / "last.pt")
    config = checkpoint["config"]
    model = rebuild_model(checkpoint)
    model.load_state_dict(checkpoint["model"])
    version = store.open(config["dataset"])
    row: dict[str, Any] = {"name": name, "dataset": version.ref, "train": len(list(version.items("train"))),
                           "test": len(list(version.items("test")))}
    for label, make in variants(model, version, config).items():
        if label not in labels:
            continue
        started = time.perf_counter()
        scores = evaluate_split(make().eval(), version, "test", checkpoint["categories"], "cpu", None)
        row[label] = {"map50": scores["map50"], "map50_95": scores["map50_95"]}
        print(f"{name} {label:>9}: test mAP50 {scores['map50']:.3f}, mAP50-95 {scores['map50_95']:.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return row


def val_decode(work: Path, name: str, epochs: int, img_size: int) -> dict[str, Any]:
    """Val mAP of the last checkpoint as the per-epoch evaluation decodes (JPEG draft mode at the
    model's size) and as ``tlsync eval`` decodes (whole): does the figure that picks ``best.pt``
    and stops early agree with the one a user gets afterwards?"""
    from tlsync.trainer.evaluation.evaluate import evaluate_split
    from tlsync.trainer.training.checkpoint import load_checkpoint, rebuild_model

    run, store = trained_run(work, name, epochs, img_size)
    checkpoint = load_checkpoint(run / "weights" / "last.pt")
    model = rebuild_model(checkpoint)
    model.load_state_dict(checkpoint["model"])
    version = store.open(checkpoint["config"]["dataset"])
    scores = {}
    for label, draft in (("draft", True), ("full", False)):
        metrics = evaluate_split(model.eval(), version, "val", checkpoint["categories"], "cpu", None, draft=draft)
        scores[label] = {"map50": metrics["map50"], "map50_95": metrics["map50_95"]}
        print(f"{name} val, {label} decode: mAP50 {metrics['map50']:.3f}, mAP50-95 {metrics['map50_95']:.3f}",
              flush=True)
    return scores


def table(rows: list[dict[str, Any]], epochs: int, img_size: int, batches: int) -> str:
    lines = ["| dataset (train / test images) | reference mAP50 | precise BN before | gap | previous sample | gap "
             "| precise BN now | gap |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ref, old = r["reference"]["map50"], r.get("previous")
        previous = f"{old['map50']:.3f} ({old['batches']} x 4) | {old['map50'] - ref:+.3f}" if old else "- | -"
        lines.append(f"| {r['dataset']} ({r['train']} / {r['test']}) | {ref:.3f} | {r['before']['map50']:.3f} | "
                     f"{r['before']['map50'] - ref:+.3f} | {previous} | {r['now']['map50']:.3f} | "
                     f"{r['now']['map50'] - ref:+.3f} |")
    val = ["| dataset | val mAP50 draft / whole | difference | val mAP50-95 draft / whole | difference |",
           "|---|---|---|---|---|"]
    for r in rows:
        d, f = r["val"]["draft"], r["val"]["full"]
        val.append(f"| {r['dataset']} | {d['map50']:.3f} / {f['map50']:.3f} | {d['map50'] - f['map50']:+.3f} | "
                   f"{d['map50_95']:.3f} / {f['map50_95']:.3f} | {d['map50_95'] - f['map50_95']:+.3f} |")
    return (f"{MODEL} from scratch (`--weights none`), {epochs} epochs at {img_size} px, batch 4, last checkpoint's "
            f"weights, test mAP50 as `tlsync eval` scores it. The mAP columns differ only in the batch-norm "
            f"statistics (see the script's docstring); \"now\" is the sample a run takes today, "
            f"{batches} x 4 train images at most.\n\n" + "\n".join(lines)
            + "\n\nThe per-epoch val evaluation decodes large JPEGs in draft mode at the model's size; `tlsync eval` "
            "decodes them whole. The same last checkpoint on the val split, both ways:\n\n" + "\n".join(val)
            + "\n\n" + FINDINGS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="bccd,chess,thermal")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tlsync-precise-bn-gap"))
    parser.add_argument("--remeasure", action="store_true",
                        help="Measure again datasets that --work/results.json already holds for these settings.")
    parser.add_argument("--no-write", action="store_true", help="Print only; leave BENCHMARKS.md alone.")
    args = parser.parse_args()
    os.environ.setdefault("TLSYNC_HOME", str(args.work / "home"))
    from tlsync.trainer.training.precise_bn import DEFAULT_BATCHES
    results = args.work / "results.json"
    rows = {r["name"]: r for r in json.loads(results.read_text())} if results.exists() else {}
    names = args.datasets.split(",")
    for name in names:
        row = rows.get(name)
        if args.remeasure or row is None or (row.get("epochs"), row.get("img_size")) != (args.epochs, args.img_size):
            row = rows[name] = {**measure(args.work, name, args.epochs, args.img_size, {"reference", "before", "now"}),
                                "epochs": args.epochs, "img_size": args.img_size, "now_batches": DEFAULT_BATCHES}
        if row.get("now_batches") != DEFAULT_BATCHES:  # the product's sample changed since: "now" again, alone
            # rows written before the sample size was recorded were measured at the default of then, 25 batches
            row["previous"] = {**row["now"], "batches": row.get("now_batches", 25)}
            row.update(measure(args.work, name, args.epochs, args.img_size, {"now"}), now_batches=DEFAULT_BATCHES)
        if "val" not in row:
            row["val"] = val_decode(args.work, name, args.epochs, args.img_size)
        results.write_text(json.dumps(list(rows.values()), indent=1))  # kept if a later dataset is interrupted
    body = table([rows[name] for name in names], args.epochs, args.img_size, DEFAULT_BATCHES)
    print(body)
    if not args.no_write:
        update_section("precise-bn-gap", "Precise batch norm against a full recompute (issue 26)", body,
                       f"python benchmarks/precise_bn_gap.py --datasets {args.datasets} --epochs {args.epochs} "
                       f"--img-size {args.img_size}")


if __name__ == "__main__":
    main()
