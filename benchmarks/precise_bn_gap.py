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
tests/test_precise_bn.py), so all three are measured on the same weights. A trained run is
kept in ``--work`` and reused by later invocations.

    python benchmarks/precise_bn_gap.py --datasets bccd,thermal --epochs 3 --img-size 256
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

    def now() -> Any:
        fresh = copy.deepcopy(model)
        precise_bn.recompute(fresh, train_set, config["precise_bn_batches"], batch, seed, torch.device("cpu"))
        return fresh

    return {"reference": reference, "before": before, "now": now}


def measure(work: Path, name: str, epochs: int, img_size: int) -> dict[str, Any]:
    """Test mAP50 (and mAP50-95) of the run's weights under each set of statistics."""
    from tlsync.trainer.evaluation.evaluate import evaluate_split
    from tlsync.trainer.training.checkpoint import load_checkpoint, rebuild_model

    run, store = trained_run(work, name, epochs, img_size)
    checkpoint = load_checkpoint(run / "weights" / "last.pt")
    config = checkpoint["config"]
    model = rebuild_model(checkpoint)
    model.load_state_dict(checkpoint["model"])
    version = store.open(config["dataset"])
    row: dict[str, Any] = {"dataset": version.ref, "train": len(list(version.items("train"))),
                           "test": len(list(version.items("test")))}
    for label, make in variants(model, version, config).items():
        started = time.perf_counter()
        scores = evaluate_split(make().eval(), version, "test", checkpoint["categories"], "cpu", None)
        row[label] = {"map50": scores["map50"], "map50_95": scores["map50_95"]}
        print(f"{name} {label:>9}: test mAP50 {scores['map50']:.3f}, mAP50-95 {scores['map50_95']:.3f} "
              f"({time.perf_counter() - started:.0f} s)", flush=True)
    return row


def table(rows: list[dict[str, Any]], epochs: int, img_size: int) -> str:
    lines = ["| dataset (train / test images) | reference mAP50 | precise BN before | gap | precise BN now | gap |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        ref = r["reference"]["map50"]
        lines.append(f"| {r['dataset']} ({r['train']} / {r['test']}) | {ref:.3f} | {r['before']['map50']:.3f} | "
                     f"{r['before']['map50'] - ref:+.3f} | {r['now']['map50']:.3f} | {r['now']['map50'] - ref:+.3f} |")
    return (f"{MODEL} from scratch (`--weights none`), {epochs} epochs at {img_size} px, batch 4, last checkpoint's "
            f"weights, test mAP50 as `tlsync eval` scores it. The three columns differ only in the batch-norm "
            f"statistics (see the script's docstring).\n\n" + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="bccd,thermal")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--work", type=Path, default=Path("/tmp/tlsync-precise-bn-gap"))
    parser.add_argument("--no-write", action="store_true", help="Print only; leave BENCHMARKS.md alone.")
    args = parser.parse_args()
    os.environ.setdefault("TLSYNC_HOME", str(args.work / "home"))
    rows = [measure(args.work, name, args.epochs, args.img_size) for name in args.datasets.split(",")]
    (args.work / "results.json").write_text(json.dumps(rows, indent=1))
    body = table(rows, args.epochs, args.img_size)
    print(body)
    if not args.no_write:
        update_section("precise-bn-gap", "Precise batch norm against a full recompute (issue 26)", body,
                       f"python benchmarks/precise_bn_gap.py --datasets {args.datasets} --epochs {args.epochs} "
                       f"--img-size {args.img_size}")


if __name__ == "__main__":
    main()
