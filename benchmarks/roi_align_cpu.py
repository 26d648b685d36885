"""Faster R-CNN training steps on the CPU: torchvision's RoIAlign backward against tlsync's.

    nice -n 5 python benchmarks/roi_align_cpu.py [--rounds 4] [--steps 3] [--sizes 320,640]

Each model (Faster R-CNN Lite0 and MobileNet-320, weights none, 3 classes) trains on the
same 4 random images with two boxes each, 128 sampled RoIs per image (``TrainConfig``'s
default), at each ``--sizes`` px: a round times ``--steps`` forward+backward steps with
torchvision's kernel, then as many with ``trainer/training/roi_align_cpu.py``'s, alternating which
goes first, so that load from other processes falls on both. Reported: median seconds per
step of each and their ratio (min and max over rounds). The gradients themselves are
checked against torchvision's in ``tests/test_roi_align_cpu.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import update_section  # noqa: E402

MODELS = ("fasterrcnn_efficientnet_lite0_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn")


def step_seconds(model: torch.nn.Module, size: int, steps: int, fast: bool) -> float:
    from tlsync.trainer.training.roi_align_cpu import faster_backward

    images = [torch.rand(3, size, size, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    box = torch.tensor([[0.1, 0.1, 0.45, 0.5], [0.3, 0.35, 0.9, 0.8]]) * size
    targets = [{"boxes": box, "labels": torch.tensor([1, 2])} for _ in images]
    kernel = faster_backward() if fast else contextlib.nullcontext()
    with kernel:
        started = time.perf_counter()
        for _ in range(steps):
            model.zero_grad()
            sum(model(images, targets).values()).backward()
        return (time.perf_counter() - started) / steps


def main() -> None:
    from tlsync.trainer import build_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--sizes", default="320,640")
    args = parser.parse_args()
    rows = []
    for name in MODELS:
        for size in (int(s) for s in args.sizes.split(",")):
            torch.manual_seed(0)
            model = build_model(name, 3, "none", size).train()
            model.roi_heads.fg_bg_sampler.batch_size_per_image = 128
            step_seconds(model, size, 1, True)  # warm-up: first-call allocations
            theirs, ours = [], []
            for n in range(args.rounds):
                for fast in ((False, True) if n % 2 == 0 else (True, False)):
                    (ours if fast else theirs).append(step_seconds(model, size, args.steps, fast))
            ratios = [t / o for t, o in zip(theirs, ours, strict=True)]
            row = (f"| {name} | {size} | {statistics.median(theirs):.2f} s | {statistics.median(ours):.2f} s | "
                   f"**{statistics.median(theirs) / statistics.median(ours):.2f}x** "
                   f"({min(ratios):.2f}-{max(ratios):.2f}) |")
            print(row, flush=True)
            rows.append(row)
    body = "\n".join([
        f"4 images x 128 sampled RoIs per step, {args.rounds} alternating rounds of {args.steps} steps, "
        f"{torch.get_num_threads()} torch threads; median seconds per training step (forward + backward).",
        "",
        "| model | px | torchvision's backward | tlsync's | speed-up (min-max per round) |",
        "|---|---|---|---|---|",
        *rows,
    ])
    update_section("roi_align_cpu", "RoIAlign backward on the CPU", body,
                   f"python benchmarks/roi_align_cpu.py --rounds {args.rounds} --steps {args.steps} "
                   f"--sizes {args.sizes}")


if __name__ == "__main__":
    main()
