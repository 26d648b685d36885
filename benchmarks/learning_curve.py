"""How far can a learning curve's extrapolation be trusted? Fit on the small half, check on 100%.

    nice -n 5 python benchmarks/learning_curve.py [--dataset thermal] [--fractions 0.125,0.25,0.375,0.5,1]
        [--seeds 2] [--epochs 3] [--img-size 160] [--keep DIR]

Runs ``tlsync curve``'s own machinery (nested class-stratified subsets, one run per point,
each scored on the test split) with EfficientNet-Lite0 from its bundled ImageNet weights,
then fits the power law on the points at or below 50% of the train split only and compares
its prediction for 100% with the measured 100% point: the honest error of a 2x forecast.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import update_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
PATHS = {"thermal": SHARED / "thermal-dogs-people-yolo", "chess": SHARED / "chess-pieces-coco"}
MODEL = "fasterrcnn_efficientnet_lite0_fpn"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(PATHS), default="thermal")
    parser.add_argument("--fractions", default="0.125,0.25,0.375,0.5,1")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--keep", type=Path, default=None, help="Keep the curve folder here.")
    args = parser.parse_args()
    if not PATHS[args.dataset].exists():
        sys.exit(f"shared dataset not found at {PATHS[args.dataset]}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["TLSYNC_HOME"] = str(Path(tmp) / "home")
        os.environ.setdefault("TLSYNC_LOAD_PLUGINS", "")
        from tlsync import plugins
        from tlsync.pull import pull
        from tlsync.store import Store
        from tlsync.trainer.curve.fit import analyse
        from tlsync.trainer.curve.report import summary
        from tlsync.trainer.curve.run import new_plan, run_curve, train_point
        from tlsync.trainer.curve.subsets import parse_fractions

        store = Store()
        pull(store, plugins.get_source("roboflow"), {"path": PATHS[args.dataset]}, args.dataset)
        options: dict[str, Any] = {"model": MODEL, "weights": "imagenet", "img_size": args.img_size,
                                   "epochs": args.epochs, "batch_size": 4, "device": "cpu", "workers": 0,
                                   "patience": 0}
        plan = new_plan(store, args.dataset, parse_fractions(args.fractions), args.seeds, options, None,
                        args.keep or Path(tmp) / "curves")
        data = run_curve(plan, [], train_point, store=store)
        lines = summary(data)
        small = [p for p in data["points"] if p["fraction"] <= 0.5]
        full = [p["map50_95"] for p in data["points"] if p["fraction"] == 1.0]
        n_full = max(p["train_images"] for p in data["points"])
        fit = analyse(small)
        measured = sum(full) / len(full)
        body = _body(args, data, lines, fit, n_full, measured, (time.perf_counter() - started) / 60)
    print(body)
    update_section("learning_curve", f"Learning curve extrapolation ({args.dataset})", body,
                   f"nice -n 5 python benchmarks/learning_curve.py --dataset {args.dataset} --fractions "
                   f"{args.fractions} --seeds {args.seeds} --epochs {args.epochs} --img-size {args.img_size}")


def _body(args: argparse.Namespace, data: dict[str, Any], lines: list[str], fit: Any, n_full: int,
          measured: float, minutes: float) -> str:
    if fit.fit is None:
        verdict = f"the points up to 50% gave no fit ({'; '.join(fit.warnings)})"
    else:
        predicted = fit.fit.predict(n_full)
        verdict = (f"fitted on the points up to 50% of train, the prediction for 100% ({n_full} images) is "
                   f"{predicted:.3f} mAP50-95 against {measured:.3f} measured: off by {predicted - measured:+.3f}"
                   + (f" (fit warnings: {'; '.join(fit.warnings)})" if fit.warnings else ""))
    return (f"{MODEL} from ImageNet, {args.img_size} px, batch 4, {args.epochs} epochs per point, {args.seeds} "
            f"seed(s), fractions {args.fractions} of {args.dataset}'s train split, scored on {data['split']}; "
            f"{minutes:.0f} min on a shared CPU.\n\n```\n" + "\n".join(lines) + f"\n```\n\n{verdict}.\n")


if __name__ == "__main__":
    main()
