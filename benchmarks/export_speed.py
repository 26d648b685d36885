"""Batch-1 CPU inference speed of an exported detector: torch eager vs ONNX fp32 vs ONNX int8 vs TorchScript.

    python benchmarks/export_speed.py [--dataset synthetic|thermal] [--img-size 192] [--epochs 3]
                                      [--images 8] [--rounds 3] [--threads 2]

For each model (fasterrcnn_mobilenet_v3_large_320_fpn, fasterrcnn_efficientnet_lite0_fpn) it
trains a short run with ``tlsync train`` in a temporary store, exports it with ``tlsync
export-model`` (ONNX + ``--quantize int8``, then TorchScript; every file parity-checked), and
times the four runtimes on the same decoded val images, with the same thread count, in
alternating rounds (the order rotates each round, so a noisy neighbour hits every runtime
alike). Speed is images/s (median over rounds, min-max beside it); the ratio is against torch
eager in the same round. Val mAP50-95 of each file is the one its parity check measured.

It also profiles one onnxruntime pass of each ONNX file and lists where the time goes by op
type, which is what says why int8 is (or is not) faster: QLinearConv/QGemm run in int8,
anything else (RoIAlign, NMS, resize, float Conv left for precision) does not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import update_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
THERMAL = ROOT.parent / "shared" / "datasets" / "thermal-dogs-people-yolo"
MIN_MAP = 0.05
MODELS = {"fasterrcnn_mobilenet_v3_large_320_fpn": "none", "fasterrcnn_efficientnet_lite0_fpn": "imagenet"}


def cli(*args: object) -> None:
    from tlsync.cli import main

    try:
        main([str(a) for a in args])
    except SystemExit as e:
        if e.code:
            raise RuntimeError(f"tlsync {' '.join(map(str, args[:3]))} exited {e.code}") from None


def pull(dataset: str, size: int) -> str:
    if dataset == "thermal":
        if not THERMAL.exists():
            raise SystemExit(f"thermal dataset not found at {THERMAL}")
        cli("pull", "--source", "roboflow", "--path", THERMAL, "--dataset", "bench")
    else:
        cli("pull", "--source", "synthetic", "--dataset", "bench", "--items", 24, "--size", size,
            "--split-ratios", "0.75,0.25,0")
    return "bench@1"


def train_and_export(model: str, weights: str, args: argparse.Namespace) -> Path:
    run = Path("runs") / model
    cli("train", "--dataset", "bench", "--model", model, "--weights", weights, "--img-size", args.img_size,
        "--epochs", args.epochs, "--batch-size", 4, "--workers", 0, "--device", "cpu", "--name", model, "--seed", 0)
    # An int8 that misses the 0.01 bar is still timed: the figure is the point here.
    for extra in (("--format", "onnx", "--quantize", "int8", "--max-map-drop", "1"), ("--format", "torchscript")):
        cli("export-model", "--run", run, *extra, "--calibration-images", args.calibration)
    return run


def runtimes(run: Path, threads: int) -> dict[str, Callable[[torch.Tensor], Any]]:
    from tlsync.trainer import load_exported, load_model

    eager, _, _ = load_model(run)

    def torch_eager(image: torch.Tensor) -> Any:
        with torch.inference_mode():
            return eager([image])

    found: dict[str, Callable[[torch.Tensor], Any]] = {"torch eager": torch_eager}
    for label, name in (("ORT fp32", "model.onnx"), ("ORT int8", "model.int8.onnx"),
                        ("TorchScript", "model.torchscript.pt")):
        found[label] = load_exported(run / "export" / name, threads=threads).run_one
    return found


def time_rounds(fns: dict[str, Callable[[torch.Tensor], Any]], images: list[torch.Tensor],
                rounds: int) -> dict[str, list[float]]:
    """images/s per round; each round runs every runtime over all images, the order rotating by round."""
    names = list(fns)
    for name in names:  # warm-up: first calls allocate and (onnxruntime) plan
        fns[name](images[0])
    rates: dict[str, list[float]] = defaultdict(list)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for image in images:
                fns[name](image)
            rates[name].append(len(images) / (time.perf_counter() - start))
    return rates


def op_profile(path: Path, images: list[torch.Tensor], threads: int) -> list[tuple[str, float]]:
    """Share of onnxruntime node time per op type over one pass, largest first."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(path.parent / f"profile-{path.stem}")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for image in images:
        session.run(None, {"image": image.numpy()})
    trace = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    total = sum(per_op.values()) or 1.0
    return sorted(((op, t / total) for op, t in per_op.items()), key=lambda kv: -kv[1])


def measure(model: str, run: Path, args: argparse.Namespace, dataset: str = "bench@1") -> dict[str, Any]:
    from tlsync.store import Store
    from tlsync.trainer.evaluation.predict import image_tensor, load_image

    version = Store().open(dataset)
    items = list(version.items("val"))[:args.images]
    images = [image_tensor(load_image(version.image_path(item))) for item in items]
    rates = time_rounds(runtimes(run, args.threads), images, args.rounds)
    meta = json.loads((run / "export" / "model.json").read_text())
    files = meta["files"]
    maps = {"torch eager": files["model.onnx"]["parity"]["map50_95_original"],
            "ORT fp32": files["model.onnx"]["parity"]["map50_95_exported"],
            "ORT int8": files["model.int8.onnx"]["parity"]["map50_95_exported"],
            "TorchScript": files["model.torchscript.pt"]["parity"]["map50_95_exported"]}
    sizes = {"ORT fp32": files["model.onnx"]["bytes"], "ORT int8": files["model.int8.onnx"]["bytes"],
             "TorchScript": files["model.torchscript.pt"]["bytes"]}
    eager = rates["torch eager"]
    rows = []
    for name, values in rates.items():
        ratios = [v / e for v, e in zip(values, eager, strict=True)]
        rows.append({"runtime": name, "median": statistics.median(values), "min": min(values), "max": max(values),
                     "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
                     "map": maps[name], "mb": sizes.get(name, 0) / 1e6})
    profiles = {name: op_profile(run / "export" / name, images[:2], args.threads)[:6]
                for name in ("model.onnx", "model.int8.onnx")}
    verified = {k: v["verified"] for k, v in files.items()}
    return {"model": model, "rows": rows, "profiles": profiles, "verified": verified,
            "int8": files["model.int8.onnx"]["quantization"]["method"], "images": len(images)}


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [f"Dataset {args.dataset} ({'24 generated shapes images' if args.dataset == 'synthetic' else 'thermal'}), "
             f"`tlsync train --epochs {args.epochs} --img-size {args.img_size} --batch-size 4` "
             f"(mobilenet from scratch: no COCO weights offline; Lite0 from its ImageNet weights), batch 1, "
             f"{args.threads} threads for torch and onnxruntime, {args.images} val images x {args.rounds} "
             "alternating rounds. Ratio: median over rounds of runtime / torch eager in the same round (min-max).", "",
             "| model | runtime | images/s (min-max) | vs eager (min-max) | val mAP50-95 | file MB |",
             "|---|---|---|---|---|---|"]
    for result in results:
        for row in result["rows"]:
            speed = f"{row['median']:.2f} ({row['min']:.2f}-{row['max']:.2f})"
            ratio = f"{row['ratio']:.2f}x ({row['ratio_min']:.2f}-{row['ratio_max']:.2f})"
            size = f"{row['mb']:.1f}" if row["mb"] else "-"
            lines.append(f"| {result['model']} | {row['runtime']} | {speed} | {ratio} | {row['map']:.4f} | {size} |")
    lines += ["", target_line(results)]
    lines += ["", "Where onnxruntime spends its time (share of node time by op type, one profiled pass):", ""]
    for result in results:
        for name, ops in result["profiles"].items():
            lines.append(f"- {result['model']} `{name}`: " + ", ".join(f"{op} {share:.0%}" for op, share in ops))
    lines.append("")
    lines.append("Parity verdicts (model.json `verified`): " + "; ".join(
        f"{r['model']}: " + ", ".join(f"{k} {v}" for k, v in r["verified"].items()) for r in results))
    return "\n".join(lines)


def target_line(results: list[dict[str, Any]]) -> str:
    """The issue's bar: int8 at least 1.5x torch eager, losing at most 0.01 val mAP50-95, for one model."""
    best = []
    for result in results:
        rows = {row["runtime"]: row for row in result["rows"]}
        drop = rows["torch eager"]["map"] - rows["ORT int8"]["map"]
        best.append((rows["ORT int8"]["ratio"], drop, result["model"]))
    # An mAP cost is only evidence on a model that detects something.
    trained = {r["model"] for r in results if r["rows"][0]["map"] >= MIN_MAP}
    met = any(ratio >= 1.5 and drop <= 0.01 and model in trained for ratio, drop, model in best)
    ratio, drop, model = max(best)
    untested = "" if trained else f"; accuracy untested: eager val mAP50-95 below {MIN_MAP}"
    return (f"Target int8 >= 1.5x torch eager within 0.01 mAP50-95 (one model): {'met' if met else 'NOT met'} "
            f"(fastest int8: {model}, {ratio:.2f}x eager, mAP50-95 cost {drop:.4f}{untested}).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["synthetic", "thermal"], default="synthetic")
    parser.add_argument("--img-size", type=int, default=192)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calibration", type=int, default=16)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--run", type=Path, help="Time this already exported run (onnx, int8, torchscript in "
                        "RUN/export) instead of training new ones; TLSYNC_HOME must hold its data.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    if args.run:
        meta = json.loads((args.run / "export" / "model.json").read_text())
        results = [measure(meta["model"], args.run.resolve(), args, meta["dataset"])]
        body = (f"Existing run `{args.run.name}` ({meta['model']}, dataset {meta['dataset']}, img size "
                f"{meta['input']['img_size']}), batch 1, {args.threads} threads, {results[0]['images']} val images x "
                f"{args.rounds} alternating rounds.\n\n" + report(results, args).split("\n", 2)[2])
        print(body)
        update_section("export_speed", "Exported model speed: eager vs ONNX fp32 / int8 vs TorchScript (CPU, batch 1)",
                       body + f"\n\nWall time {time.time() - started:.0f} s.",
                       "python benchmarks/export_speed.py " + " ".join(sys.argv[1:]))
        return
    with tempfile.TemporaryDirectory(prefix="tlsync-export-bench-") as tmp:
        os.environ["TLSYNC_HOME"] = str(Path(tmp) / "home")
        os.chdir(tmp)
        pull(args.dataset, args.img_size)
        results = []
        for model in args.models.split(","):
            run = train_and_export(model, MODELS[model], args)
            results.append(measure(model, run, args))
            print(json.dumps({k: v for k, v in results[-1].items() if k != "profiles"}, indent=1), flush=True)
    body = report(results, args) + f"\n\nWall time {time.time() - started:.0f} s."
    print(body)
    command = "python benchmarks/export_speed.py " + " ".join(sys.argv[1:])
    update_section("export_speed", "Exported model speed: eager vs ONNX fp32 / int8 vs TorchScript (CPU, batch 1)",
                   body, command.strip())


if __name__ == "__main__":
    main()
