"""Does ``tlsync select`` pick better images to label than chance?

    python benchmarks/select_vs_random.py [--seeds 3] [--epochs 2] [--more-epochs 1] [--size 128]

thermal-dogs-people-yolo (../shared/datasets, pulled through the roboflow source), with
fasterrcnn_efficientnet_lite0_fpn from its bundled ImageNet weights:

1. ``start``: a quarter of the train split (35 of 142 images, drawn with seed 0) plus the
   test split is the labelled set; the other 107 train images are the unlabelled pool
   (their boxes are hidden from the selection, which only sees pixels and the model).
2. A start run trains on ``start`` for ``--epochs``.
3. The pool is scored once with the start run (the same pass ``tlsync select`` makes);
   each strategy then picks another quarter of train (``--seeds`` seeds each: for random
   the seed draws the images, for every strategy it also seeds the continued training).
4. Each selection is added to ``start`` with its real labels, and a run continues from the
   start checkpoint for ``--more-epochs`` with the backbone frozen (heads only: the cheap
   way to fit 12 runs on a CPU); its last checkpoint is scored on the test split (no val
   split: fixed epochs, no early stopping, so every run trains exactly as long).

The table gives test mAP50-95/mAP50 per strategy (mean and spread over seeds) and the
selection time per 1,000 pool images (scoring + choosing). The table is rewritten after
every round of seeds, so an interrupted run keeps what finished. The defaults (128 px, 2 +
1 epochs, 3 seeds: 13 trainings) take ~20 minutes on 2 idle CPU cores; on the shared
machine under a load average of ~20 they took about 50.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import update_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
THERMAL = ROOT.parent / "shared" / "datasets" / "thermal-dogs-people-yolo"
MODEL = "fasterrcnn_efficientnet_lite0_fpn"
STRATEGIES = ("uncertainty", "diversity", "hybrid", "random")


def subset(store: Any, full: Any, name: str, train_ids: set[str], keep_eval: bool) -> Any:
    """A new dataset of ``full``'s items: the given train ids (and the test split when ``keep_eval``).

    No val split: every run trains a fixed number of epochs and its last checkpoint is
    tested, which spares a per-epoch evaluation that cannot change the comparison.
    """
    from tlsync.pull import pull
    from tlsync.sources import PullContext, Source

    class FromStore(Source):
        name = "bench-subset"

        def items(self, ctx: PullContext, **_: Any) -> Iterator:
            ctx.set_categories(full.categories)
            for item in full.items():
                if item.id in train_ids or (keep_eval and item.split == "test"):
                    item.image.uri = str(full.image_path(item))
                    yield item

    pull(store, FromStore(), {}, name)
    return store.open(name)


def train_and_test(dataset: str, weights: str, epochs: int, size: int, seed: int, project: Path, name: str,
                   test: Any, freeze: str | None = None) -> dict[str, Any]:
    from tlsync.trainer import TrainConfig, evaluate_split, load_model, train

    run = train(TrainConfig(dataset=dataset, model=None if weights != "imagenet" else MODEL, weights=weights,
                            img_size=size, epochs=epochs, device="cpu", patience=0, workers=0, seed=seed,
                            freeze=freeze, project=str(project), name=name))
    model, categories, _ = load_model(run)
    metrics = evaluate_split(model, test, "test", categories, "cpu", None)
    return {"map50_95": metrics["map50_95"], "map50": metrics["map50"], "run": str(run)}


def experiment(args: argparse.Namespace, project: Path, began_all: float) -> tuple[dict, dict, dict]:
    from tlsync import plugins
    from tlsync.pull import pull
    from tlsync.store import Store
    from tlsync.trainer import load_model
    from tlsync.trainer.select.pool import build_pool
    from tlsync.trainer.select.run import choose, score_pool

    store = Store()
    pull(store, plugins.get_source("roboflow"), {"path": THERMAL}, "thermal-all")
    full = store.open("thermal-all")
    train_ids = sorted(item.id for item in full.items("train"))
    random.Random(0).shuffle(train_ids)
    quarter = len(train_ids) // 4
    labelled_ids = set(train_ids[:quarter])
    start = subset(store, full, "start", labelled_ids, keep_eval=True)
    pool_version = subset(store, full, "pool", set(train_ids[quarter:]), keep_eval=False)
    print(f"start: {quarter} labelled train images; pool: {len(train_ids) - quarter}; budget {quarter}", flush=True)
    base = train_and_test(start.ref, "imagenet", args.epochs, args.size, 0, project, "start", full)
    print(f"start run: test mAP50-95 {base['map50_95']:.3f} mAP50 {base['map50']:.3f}", flush=True)

    model, categories, _ = load_model(base["run"])
    pool = build_pool(pool_version, start, [])
    # One pass gives boxes and features (and the labelled set's features): every strategy's input.
    began = time.perf_counter()
    scores = score_pool(model, pool, start, categories, "cpu", args.size, "hybrid", batch_size=4)
    scoring = time.perf_counter() - began
    results: dict[str, list[dict[str, float]]] = {s: [] for s in STRATEGIES}
    seconds: dict[str, float] = {}
    info = {"base": base, "quarter": quarter, "pool": len(pool.items), "began": began_all}
    by_id = {item.id: item for item in full.items("train")}
    for seed in range(args.seeds):
        for strategy in STRATEGIES:
            choice = choose(scores, strategy, quarter, seed, 0.25)
            paid = 0.0 if strategy == "random" else scoring
            seconds[strategy] = 1000 * (paid + choice.seconds) / len(pool.items)
            picked = {item.id for item in choice.items}
            assert picked <= set(by_id) and not picked & labelled_ids
            version = subset(store, full, f"{strategy}-{seed}", labelled_ids | picked, keep_eval=True)
            result = train_and_test(version.ref, base["run"], args.more_epochs, args.size, seed, project,
                                    f"{strategy}-{seed}", full, freeze="backbone")
            results[strategy].append(result)
            print(f"{strategy} seed {seed}: test mAP50-95 {result['map50_95']:.3f} mAP50 {result['map50']:.3f}",
                  flush=True)
        # After every round of seeds, so an interrupted run still leaves its finished rounds in BENCHMARKS.md.
        write_table(args, results, seconds, info, seed + 1)
    return results, seconds, info


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.3f} ± {sd:.3f}"


def write_table(args: argparse.Namespace, results: dict, seconds: dict, info: dict, seeds: int) -> str:
    minutes = (time.time() - info["began"]) / 60
    rows = []
    for strategy in STRATEGIES:
        r = results[strategy]
        per_seed = ", ".join(f"{x['map50_95']:.3f}" for x in r)
        rows.append(f"| {strategy} | {spread([x['map50_95'] for x in r])} | {spread([x['map50'] for x in r])} | "
                    f"{per_seed} | {seconds[strategy]:.1f} s |")
    means = {s: statistics.fmean(x["map50_95"] for x in results[s]) for s in STRATEGIES}
    random_sd = statistics.stdev([x["map50_95"] for x in results["random"]]) if seeds > 1 else 0.0
    best = max(STRATEGIES, key=lambda s: means[s])
    print(f"best mean so far ({seeds} seed(s)): {best}", flush=True)
    margin = means[best] - means["random"]
    verdict = (f"Best mean: **{best}** ({means[best]:.3f} mAP50-95), "
               + ("random itself: **no strategy beats random** here." if best == "random" else
                  f"{margin:+.3f} over random; random's spread (sd over seeds) is {random_sd:.3f}, so this "
                  + ("**beats random by more than its spread**." if margin > random_sd else
                     "**does not beat random by more than random's spread**: at this size the data cannot tell "
                     "the strategies apart.")))
    body = f"""
thermal-dogs-people-yolo, {MODEL} from ImageNet weights at {args.size} px, batch 4, CPU. Start run: {info['quarter']}
labelled train images (a quarter, seed 0), {args.epochs} epochs: test mAP50-95
{info['base']['map50_95']:.3f}, mAP50 {info['base']['map50']:.3f}. Each strategy then selects {info['quarter']} of the
{info['pool']} pool images, and a run continues from the start checkpoint for {args.more_epochs} epoch(s), backbone
frozen, on the labelled quarter + the selection (seeds 0-{seeds - 1} of the {args.seeds} asked for; the seed draws
random's images and seeds every continued run). Test split: 20 images. Wall time so far: {minutes:.0f} min.

| strategy | test mAP50-95 (mean ± sd) | test mAP50 (mean ± sd) | mAP50-95 per seed | selection s / 1,000 pool images |
|---|---|---|---|---|
{chr(10).join(rows)}

Selection time is one scoring pass of the start model over the pool (boxes and backbone features) plus the
labelled set's features, plus choosing; random pays nothing. {verdict}
"""
    print(body)
    update_section("select_vs_random", "Active-learning selection vs random (thermal)", body,
                   f"python benchmarks/select_vs_random.py --seeds {args.seeds} --epochs {args.epochs} "
                   f"--more-epochs {args.more_epochs} --size {args.size}")
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="Epochs of the start run.")
    parser.add_argument("--more-epochs", type=int, default=1, help="Epochs of each continued run.")
    parser.add_argument("--size", type=int, default=128, help="--img-size of every run.")
    args = parser.parse_args()
    if not THERMAL.exists():
        sys.exit(f"shared dataset not found at {THERMAL}")
    began = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TLSYNC_HOME"] = str(Path(tmp) / "home")
        os.environ.setdefault("TLSYNC_LOAD_PLUGINS", "")
        experiment(args, Path(tmp) / "runs", began)


if __name__ == "__main__":
    main()
