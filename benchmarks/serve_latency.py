"""Seconds per task through ``tlsync serve`` (Label Studio's ``POST /predict``) against ``tlsync predict``'s model path.

    python benchmarks/serve_latency.py --run runs/NAME [--images 8] [--size 320] [--rounds 5] [--threads 2]

Same model (loaded once for both), same images, CPU. Each task is one request as Label Studio
sends it when a person opens a task: ``{"tasks": [task], "label_config": ...}`` over HTTP to a
``tlsync serve`` backend (started in this process on 127.0.0.1) whose image is a local path under
``--images-root``; the answer is parsed. The baseline is what ``tlsync predict`` does per image
before drawing: the completeness check, decoding, and the forward pass (``predict_items``), batch 1.
Rounds alternate (serve first in odd rounds, predict first in even ones), so a noisy neighbour hits
both. p50/p95 over every task of every round; the target is serve within 1.2x of predict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import update_section  # noqa: E402

TARGET = 1.2


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def config(classes: list[str]) -> str:
    labels = "".join(f'<Label value="{c}"/>' for c in classes)
    return f'<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">{labels}' \
           f'</RectangleLabels></View>'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from tlsync_labelstudio_target import prediction

    from tlsync.format import ImageRef, Item
    from tlsync.images import check_complete_image
    from tlsync.testing import write_image
    from tlsync.trainer.evaluation.predict import predict_items
    from tlsync.trainer.serve.batcher import Batcher
    from tlsync.trainer.serve.images import ImageFetcher
    from tlsync.trainer.serve.server import Backend, make_server
    from tlsync.trainer.training.checkpoint import load_model

    model, classes, _ = load_model(args.run, device="cpu")
    folder = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    pictures = [write_image(folder / f"b{i}.png", args.size, args.size, seed=900 + i) for i in range(args.images)]
    backend = Backend(Batcher(model, classes, "cpu", 0.25, 4), ImageFetcher(None, folder, 64 << 20, 60.0),
                      args.run.name, classes, prediction)
    server = make_server(backend, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, label_config, session = f"http://127.0.0.1:{server.server_address[1]}/predict", config(classes), \
        requests.Session()

    def serve_one(n: int, path: Path) -> float:
        started = time.perf_counter()
        answer = session.post(url, json={"tasks": [{"id": n, "data": {"image": path.name}}],
                                         "label_config": label_config}, timeout=120)
        answer.raise_for_status()
        assert "result" in answer.json()["results"][0]
        return time.perf_counter() - started

    def predict_one(n: int, path: Path) -> float:
        started = time.perf_counter()
        width, height, _ = check_complete_image(path)
        list(predict_items(model, [Item(str(n), ImageRef(str(path), width=width, height=height))],
                           lambda _item: path, classes, "cpu", 1, 0.25))
        return time.perf_counter() - started

    for n, path in enumerate(pictures[:2]):  # warm both paths (first forward passes allocate)
        serve_one(n, path), predict_one(n, path)
    times: dict[str, list[float]] = {"serve": [], "predict": []}
    for r in range(args.rounds):
        order: list[tuple[str, Any]] = [("serve", serve_one), ("predict", predict_one)]
        for name, run in order if r % 2 == 0 else order[::-1]:
            times[name] += [run(n, path) for n, path in enumerate(pictures)]
    server.shutdown()
    report(args, times)


def report(args: argparse.Namespace, times: dict[str, list[float]]) -> None:
    p = {name: (percentile(v, 50), percentile(v, 95)) for name, v in times.items()}
    ratio50, ratio95 = p["serve"][0] / p["predict"][0], p["serve"][1] / p["predict"][1]
    verdict = "met" if ratio50 <= TARGET else "NOT met"
    rows = "\n".join(f"| {name} | {p[name][0]:.4f} | {p[name][1]:.4f} | {statistics.mean(v):.4f} | {len(v)} |"
                     for name, v in times.items())
    config = json.loads((args.run / "config.json").read_text()) if (args.run / "config.json").is_file() else {}
    model = f"{config.get('model', '?')} at {config.get('img_size', '?')} px"
    body = (f"Run `{args.run.name}` ({model}), {args.images} images of {args.size}x{args.size} px, "
            f"{args.rounds} alternating rounds, {args.threads} threads, CPU. Seconds per task.\n\n"
            f"| path | p50 s | p95 s | mean s | tasks |\n|---|---|---|---|---|\n{rows}\n\n"
            f"serve / predict: p50 {ratio50:.2f}x, p95 {ratio95:.2f}x.\n\n"
            f"Target serve within {TARGET}x of predict at p50: {verdict}.")
    print(body)
    update_section("serve_latency", "tlsync serve: seconds per Label Studio task vs tlsync predict (CPU)", body,
                   f"python benchmarks/serve_latency.py --run runs/{args.run.name} --images {args.images} "
                   f"--size {args.size} --rounds {args.rounds} --threads {args.threads}")


if __name__ == "__main__":
    main()
