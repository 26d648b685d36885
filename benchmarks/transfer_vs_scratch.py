"""The seed experiment: transfer learning vs training from scratch, at equal epochs and equal wall time.

    python benchmarks/transfer_vs_scratch.py [--datasets chess,thermal] [--seeds 0,1] [--epochs 4]
        [--img-size 320 | --img-size chess=320,thermal=192] [--train-images 60] [--keep DIR]
    python benchmarks/transfer_vs_scratch.py --table-only DIR     # the table again, from runs kept in DIR

For each dataset (../shared/datasets, pulled through the roboflow source) and each seed,
fasterrcnn_efficientnet_lite0_fpn trains twice for the same epochs: from its ImageNet
weights (shipped in a pip package, so offline) and from scratch (``--weights none``, with
precise batch norm, tlsync's default). The train split can be cut to its first
``--train-images`` images (by id) to fit a CPU budget.

The runs' val split *is* the dataset's test split, so the per-epoch "val" figures that
training logs are test mAP after each epoch, with no model selection on them (no early
stopping, the last epoch is reported). That gives the learning curves for free and the
comparison at equal wall time: each start's test mAP after the last epoch it finished
within the other's whole wall time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import update_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"chess": ROOT.parent / "shared" / "datasets" / "chess-pieces-coco",
            "thermal": ROOT.parent / "shared" / "datasets" / "thermal-dogs-people-yolo"}
MODEL = "fasterrcnn_efficientnet_lite0_fpn"
STARTS = ("imagenet", "none")


def version(store: Any, name: str, train_images: int) -> Any:
    """``name``: the first ``train_images`` train images (0: all), and the test split as val and test."""
    from tlsync import plugins
    from tlsync.pull import pull
    from tlsync.sources import PullContext, Source

    pull(store, plugins.get_source("roboflow"), {"path": DATASETS[name]}, f"{name}-all")
    full = store.open(f"{name}-all")
    train_ids = sorted(item.id for item in full.items("train"))
    kept = set(train_ids[:train_images] if train_images else train_ids)

    class FromStore(Source):
        """Items of the full pull, re-pulled from the store's own image files."""

        name = "bench-subset"

        def items(self, ctx: PullContext, **_: Any) -> Iterator:
            ctx.set_categories(full.categories)
            for item in full.items():
                item.image.uri = str(full.image_path(item))
                if item.split == "train" and item.id in kept:
                    yield item
                elif item.split == "test":
                    yield item
                    val = type(item)(f"{item.id}#val", item.image, item.annotations, "val", dict(item.metadata))
                    yield val

    pull(store, FromStore(), {}, name)
    return store.open(name)


def per_dataset(text: str, names: list[str], what: str) -> dict[str, int]:
    """``320`` for every dataset, or ``chess=320,thermal=192``: chess's pieces vanish at sizes where
    thermal's dogs and people survive, and a CPU budget buys more epochs at the smaller size."""
    if "=" not in text:
        return dict.fromkeys(names, int(text))
    given = {k: int(v) for k, v in (part.split("=") for part in text.split(",") if part)}
    missing = [n for n in names if n not in given]
    if missing:
        sys.exit(f"{what} gives nothing for {', '.join(missing)}")
    return given


def run_one(dataset: str, weights: str, seed: int, img_size: int, args: argparse.Namespace, project: Path) -> Path:
    from tlsync.trainer import TrainConfig, train

    print(f"--- {dataset} from {weights}, seed {seed}, {args.epochs} epochs at {img_size} px", flush=True)
    lr = args.scratch_lr if weights == "none" else None  # None: tlsync's default for the batch
    return train(TrainConfig(dataset=dataset, model=MODEL, weights=weights, img_size=img_size, lr=lr,
                             epochs=args.epochs, batch_size=4, device="cpu", patience=0, seed=seed,
                             project=str(project), name=f"{dataset.split('@')[0]}-{weights}-s{seed}"))


def curve(run: Path) -> dict[str, Any]:
    """Per-epoch test mAP, loss and cumulative wall seconds, from the run's own files."""
    config = json.loads((run / "config.json").read_text())
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    clock, total = [], 0.0
    for r in rows:
        total += float(r["seconds"])
        clock.append(total)
    return {"dataset": config["dataset"].split("@")[0], "weights": config["weights"], "seed": config["seed"],
            "lr": config["lr"],
            "img_size": config["img_size"], "threads": config.get("versions", {}).get("torch_threads"),
            "clock": clock, "outside_training": [float(r["seconds"]) - float(r["train_seconds"]) for r in rows],
            "train_seconds": [float(r["train_seconds"]) for r in rows], "loss": [float(r["loss"]) for r in rows],
            "map50": [float(r["map50"]) for r in rows], "map50_95": [float(r["map50_95"]) for r in rows]}


def within(c: dict[str, Any], seconds: float, key: str) -> float:
    """Test ``key`` after the last epoch that finished within ``seconds`` (0 if none did)."""
    done = [v for t, v in zip(c["clock"], c[key], strict=True) if t <= seconds + 1e-6]
    return done[-1] if done else 0.0


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def dataset_section(curves: list[dict[str, Any]], name: str, train_images: dict[str, int]) -> str:
    t = [c for c in curves if c["dataset"] == name and c["weights"] == "imagenet"]
    s = [c for c in curves if c["dataset"] == name and c["weights"] == "none"]
    pairs = list(zip(sorted(t, key=lambda c: c["seed"]), sorted(s, key=lambda c: c["seed"]), strict=True))
    rows = []
    for label, pick in (("equal epochs (both their last epoch)", lambda a, b: (a["map50"][-1], a["map50_95"][-1],
                                                                              b["map50"][-1], b["map50_95"][-1])),
                        ("equal wall: scratch within transfer's wall", lambda a, b: (
                            a["map50"][-1], a["map50_95"][-1], within(b, a["clock"][-1], "map50"),
                            within(b, a["clock"][-1], "map50_95"))),
                        ("equal wall: transfer within scratch's wall", lambda a, b: (
                            within(a, b["clock"][-1], "map50"), within(a, b["clock"][-1], "map50_95"),
                            b["map50"][-1], b["map50_95"][-1]))):
        cols = list(zip(*(pick(a, b) for a, b in pairs), strict=True))
        rows.append(f"| {label} | " + " | ".join(spread(list(col)) for col in cols) + " |")
    epochs = len(s[0]["map50"])
    walls = (spread([c["clock"][-1] / 60 for c in t]), spread([c["clock"][-1] / 60 for c in s]))
    # Seconds per epoch outside the training steps (val eval, checkpoints, and for scratch precise BN): the
    # difference between the starts is precise BN's cost, as the pretrained start has no trainable batch norm.
    extra = [statistics.fmean(b["outside_training"]) - statistics.fmean(a["outside_training"]) for a, b in pairs]
    steps = statistics.fmean(x for c in s for x in c["train_seconds"])
    cost = (f"Precise BN's cost: {spread(extra)} s per epoch (scratch's seconds outside the training steps minus "
            f"transfer's, whose frozen batch norm needs none), against {steps:.1f} s of training steps per epoch.")
    seeds = ", ".join(str(c["seed"]) for c in s)
    head = (f"{name} at {s[0]['img_size']} px, first {train_images[name] or 'all'} train images: {len(pairs)} "
            f"seeds ({seeds}), {epochs} epochs each, lr transfer {t[0]['lr']:g} / scratch {s[0]['lr']:g}")
    curve_rows = "\n".join(
        f"| {e + 1} | {spread([c['loss'][e] for c in s])} | {spread([c['map50'][e] for c in s])} | "
        f"{spread([c['map50_95'][e] for c in s])} | {spread([c['map50'][e] for c in t])} |" for e in range(epochs))
    return f"""
### {head}; wall per run: transfer {walls[0]} min, scratch {walls[1]} min

| comparison | transfer mAP50 | transfer mAP50-95 | scratch mAP50 | scratch mAP50-95 |
|---|---|---|---|---|
{chr(10).join(rows)}

Scratch learning curve (test split after each epoch; transfer's mAP50 beside it):

| epoch | scratch loss | scratch mAP50 | scratch mAP50-95 | transfer mAP50 |
|---|---|---|---|---|
{curve_rows}

{cost}
"""


def write_table(runs: list[Path], args: argparse.Namespace) -> None:
    curves = [curve(run) for run in runs]
    names = list(dict.fromkeys(c["dataset"] for c in curves))
    train_images = per_dataset(args.train_images, names, "--train-images")
    first = curves[0]
    per = {c["dataset"]: c["img_size"] for c in curves}
    sizes_text = ",".join(f"{k}={v}" for k, v in per.items()) if len(set(per.values())) > 1 else str(first["img_size"])
    threads = f", {first['threads']} torch thread(s)" if first["threads"] else ""
    body = f"""
{MODEL}, batch 4, tlsync's default SGD schedule (warm-up 1 epoch, cosine), precise
batch norm on (the default); transfer = `--weights imagenet`, scratch = `--weights none`. Train split: the
first N train images by id (N below); every figure is the test split's mAP after that epoch
(the runs' val split is the test split; no model selection). Mean ± standard deviation over the seeds{threads}.
{''.join(dataset_section(curves, name, train_images) for name in names)}"""
    print(body)
    command = (f"python benchmarks/transfer_vs_scratch.py --datasets {','.join(names)} --seeds {args.seeds} "
               f"--epochs {len(first['map50'])} --img-size {sizes_text} --train-images {args.train_images}")
    if args.scratch_lr:
        command += f" --scratch-lr {args.scratch_lr:g}"
    lr = f", scratch at lr {args.scratch_lr:g}" if args.scratch_lr else ""
    update_section(args.section, f"Transfer learning vs scratch ({', '.join(names)}){lr}", body, command)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="chess,thermal", help="Comma-separated: chess, thermal.")
    parser.add_argument("--seeds", default="0,1", help="Comma-separated seeds (2 or more give a spread).")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--img-size", default="320", help="One size, or per dataset: chess=320,thermal=192.")
    parser.add_argument("--train-images", default="60", help="First N train images by id (0: all), or per dataset.")
    parser.add_argument("--scratch-lr", type=float, default=None, help="Scratch's lr (default: tlsync's default).")
    parser.add_argument("--starts", default=",".join(STARTS), help="Which starts to train (the other's runs may be "
                        "linked into --keep DIR from an earlier run, for --table-only).")
    parser.add_argument("--section", default="transfer_vs_scratch", help="BENCHMARKS.md section to write.")
    parser.add_argument("--keep", type=Path, default=None, help="Keep the runs here (for `tlsync compare`).")
    parser.add_argument("--table-only", type=Path, default=None, metavar="DIR",
                        help="Rebuild the table from runs kept earlier with --keep DIR; train nothing.")
    args = parser.parse_args()
    names = [n for n in args.datasets.split(",") if n]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    img_sizes = per_dataset(args.img_size, names, "--img-size")
    counts = per_dataset(args.train_images, names, "--train-images")
    starts = [w for w in args.starts.split(",") if w in STARTS]
    if args.table_only:
        write_table(sorted(p for p in args.table_only.iterdir() if (p / "metrics.csv").exists()), args)
        return
    for name in names:
        if name not in DATASETS or not DATASETS[name].exists():
            sys.exit(f"unknown dataset {name!r} or shared dataset missing ({', '.join(DATASETS)})")

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TLSYNC_HOME"] = str(Path(tmp) / "home")
        os.environ.setdefault("TLSYNC_LOAD_PLUGINS", "")
        from tlsync.store import Store

        project = args.keep or Path(tmp) / "runs"
        store = Store()
        runs = []
        for name in names:
            dataset = version(store, name, counts[name]).ref
            # Alternate the starts seed by seed, so a machine that slows down mid-way hurts both alike.
            for seed in seeds:
                runs += [run_one(dataset, weights, seed, img_sizes[name], args, project) for weights in starts]
        if args.keep:  # every run kept there, earlier ones (and another start's, linked in) included
            runs = sorted(p for p in args.keep.iterdir() if (p / "metrics.csv").exists())
        write_table(runs, args)


if __name__ == "__main__":
    main()
