"""Does continuing from the last model pay, against restarting from ImageNet on all the data?

    nice -n 5 python benchmarks/continue_vs_restart.py [--seeds 3] [--epochs 2] [--img-size 128]
        [--train 32] [--val 12] [--datasets thermal,bccd] [--keep DIR]

For each shared dataset and seed: a parent (EfficientNet-Lite0 from its bundled ImageNet
weights) trains on half of a train subset; then, on the whole subset, for the same epochs:

- ``cont-old``: continued from the parent with tlsync's default recipe (full peak lr, 1-epoch
  warm-up, cosine decay: the same as a fresh run);
- ``cont-new``: continued with the candidate fine-tuning recipe (peak lr x``CANDIDATE_LR_FACTOR``,
  ``CANDIDATE_WARMUP``-epoch warm-up); if it measurably pays, it becomes the default;
- ``restart``: from ImageNet again, same epochs (equal epochs on the new data);
- ``restart-wall``: from ImageNet, 1.5x the epochs: the parent's half-data epochs plus the
  child's, i.e. equal training images seen (equal wall time, up to evaluation).

Every run's best checkpoint is scored on the test split. The sizes are deliberately small
(the machine is a shared 2-core CPU): they answer "which recipe wins here, and by how much
next to the seed spread", not "what mAP does this dataset reach".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import SOURCES, publish  # noqa: E402

MODEL = "fasterrcnn_efficientnet_lite0_fpn"
VARIANTS = ("cont-old", "cont-new", "restart", "restart-wall")
CANDIDATE_LR_FACTOR = 0.25
CANDIDATE_WARMUP = 0.1


def small_versions(store: Any, name: str, n_train: int, n_val: int) -> tuple[Any, Any]:
    """``<name>-small`` (first n_train train / n_val val items by id, all of test) and its half-train version."""
    from tlsync import plugins
    from tlsync.pull import pull
    from tlsync.trainer.curve.subsets import write_version

    pull(store, plugins.get_source("roboflow"), dict(SOURCES[name]), name)
    full = store.open(name)
    train = sorted(i.id for i in full.items("train"))[:n_train]
    val = set(sorted(i.id for i in full.items("val"))[:n_val])
    keep = set(train)
    small = write_version(store, full, f"{name}-small", lambda i: i.split == "test" or i.id in keep or i.id in val,
                          {"of": full.ref, "train": n_train, "val": n_val})
    half = set(train[: n_train // 2])
    parent = write_version(store, small, f"{name}-half", lambda i: i.split != "train" or i.id in half,
                           {"of": small.ref, "train": len(half)})
    return parent, small


def run(label: str, version: Any, weights: str, epochs: int, seed: int, args: argparse.Namespace,
        project: Path, **extra: Any) -> dict[str, Any]:
    from tlsync.trainer import TrainConfig, evaluate_split, load_model, train

    started = time.perf_counter()
    cfg = TrainConfig(dataset=version.ref, model=MODEL, weights=weights, img_size=args.img_size, epochs=epochs,
                      batch_size=4, device="cpu", workers=0, patience=0, seed=seed, project=str(project),
                      name=label, forget_check="off", **extra)
    out = train(cfg)
    model, categories, _ = load_model(out)
    test = evaluate_split(model, version, "test", categories, "cpu", out / "test")
    row = {"label": label, "seconds": time.perf_counter() - started, "map50_95": test["map50_95"],
           "map50": test["map50"], "lr": json.loads((out / "config.json").read_text())["lr"], "run": str(out)}
    print(f"  {label}: test mAP50-95 {row['map50_95']:.3f} mAP50 {row['map50']:.3f} in {row['seconds']:.0f}s",
          flush=True)
    return row


def one_seed(name: str, parent_v: Any, full_v: Any, seed: int, args: argparse.Namespace,
             project: Path) -> dict[str, dict[str, Any]]:
    from tlsync.trainer.training.fit import BASE_LR

    e = args.epochs
    tag = f"{name}-s{seed}"
    parent = run(f"{tag}-parent", parent_v, "imagenet", e, seed, args, project)
    rows = {"parent": parent}
    old_lr = BASE_LR["sgd"] * 4 / 16
    rows["cont-old"] = run(f"{tag}-cont-old", full_v, parent["run"], e, seed, args, project,
                           lr=old_lr, warmup_epochs=1.0)
    rows["cont-new"] = run(f"{tag}-cont-new", full_v, parent["run"], e, seed, args, project,
                           lr=old_lr * CANDIDATE_LR_FACTOR, warmup_epochs=CANDIDATE_WARMUP)
    rows["restart"] = run(f"{tag}-restart", full_v, "imagenet", e, seed, args, project)
    rows["restart-wall"] = run(f"{tag}-restart-wall", full_v, "imagenet", round(1.5 * e), seed, args, project)
    for key in ("cont-old", "cont-new"):
        rows[key]["total_seconds"] = rows[key]["seconds"] + parent["seconds"]
    for key in ("restart", "restart-wall"):
        rows[key]["total_seconds"] = rows[key]["seconds"]
    return rows


def table(results: dict[str, list[dict[str, dict[str, Any]]]], args: argparse.Namespace) -> str:
    lines = ["| dataset | recipe | epochs | test mAP50-95 (mean ± sd over seeds) | test mAP50 | per seed mAP50-95 "
             "| wall incl. parent |", "|---|---|---|---|---|---|---|"]
    e = args.epochs
    epochs = {"cont-old": f"{e}+{e}", "cont-new": f"{e}+{e}", "restart": str(e), "restart-wall": str(round(1.5 * e))}
    for name, seeds in results.items():
        for variant in VARIANTS:
            maps = [s[variant]["map50_95"] for s in seeds]
            map50 = [s[variant]["map50"] for s in seeds]
            wall = statistics.mean(s[variant]["total_seconds"] for s in seeds)
            lines.append(f"| {name} | {variant} | {epochs[variant]} | {_ms(maps)} | {_ms(map50)} | "
                         f"{', '.join(f'{m:.3f}' for m in maps)} | {wall:.0f} s |")
    return "\n".join(lines)


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--train", type=int, default=32, help="Train images used (the parent gets half).")
    parser.add_argument("--val", type=int, default=12)
    parser.add_argument("--datasets", default="thermal,bccd")
    parser.add_argument("--keep", type=Path, default=None, help="Keep the runs here.")
    parser.add_argument("--no-write", action="store_true", help="Print the table; leave BENCHMARKS.md alone.")
    args = parser.parse_args()
    names = args.datasets.split(",")
    for name in names:
        if not Path(SOURCES[name]["path"]).exists():
            sys.exit(f"shared dataset not found at {SOURCES[name]['path']}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TLSYNC_HOME"] = str(Path(tmp) / "home")
        os.environ.setdefault("TLSYNC_LOAD_PLUGINS", "")
        from tlsync.store import Store

        store, project = Store(), args.keep or Path(tmp) / "runs"
        results: dict[str, list[dict[str, dict[str, Any]]]] = {}
        for name in names:
            parent_v, full_v = small_versions(store, name, args.train, args.val)
            print(f"--- {name}: parent on {parent_v.ref}, children on {full_v.ref}", flush=True)
            results[name] = [one_seed(name, parent_v, full_v, seed, args, project) for seed in range(args.seeds)]
    body = table(results, args)
    minutes = (time.perf_counter() - started) / 60
    text = (f"{MODEL} from its bundled ImageNet weights, {args.img_size} px, batch 4, {args.epochs} epochs per run, "
            f"first {args.train} train (parent: half) and {args.val} val images by id, all of test; "
            f"{args.seeds} seeds; {minutes:.0f} min in all on a shared CPU. cont-old: full peak lr, 1-epoch "
            f"warm-up (the default); cont-new: peak lr x{CANDIDATE_LR_FACTOR:g}, "
            f"{CANDIDATE_WARMUP:g}-epoch warm-up.\n\n{body}\n")
    publish("continue_vs_restart", "Continuing from the last model vs restarting from ImageNet", text,
            f"nice -n 5 python benchmarks/continue_vs_restart.py --seeds {args.seeds} --epochs "
            f"{args.epochs} --img-size {args.img_size} --train {args.train} --val {args.val} "
            f"--datasets {args.datasets}", write=not args.no_write)


if __name__ == "__main__":
    main()
