"""The checks of ``gpu_check.py`` that run ``tlsync train`` itself: DDP under torchrun, resume, compile.

Apart from ``gpu_check.py`` only to keep each file small; run ``gpu_check.py``, not this.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from gpu_check import CLI_MODEL, Context, Result, run_command


def cli_train(ctx: Context, name: str, extra: list[str], launcher: list[str] | None = None,
              epochs: int = 1) -> tuple[bool, str, Path]:
    """``tlsync train`` in a subprocess on a small synthetic dataset with a val split: (ok, detail, run dir)."""
    ctx.dataset("cli", ctx.plan.cli_images, ctx.plan.img_size, val=0.5)
    started = time.perf_counter()
    done = run_command([*(launcher or [sys.executable, "-m"]), *train_args(ctx, name, epochs), *extra], ctx.env(),
                       ctx.left())
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    took = f"{time.perf_counter() - started:.0f}s"
    return done.returncode == 0, (took if done.returncode == 0 else f"exit {done.returncode}: {lines[-1:]}"), \
        ctx.work / "runs" / name


def train_args(ctx: Context, name: str, epochs: int) -> list[str]:
    return ["tlsync", "train", "--dataset", "cli", "--model", CLI_MODEL, "--weights", "none",
            "--img-size", str(ctx.plan.img_size), "--batch-size", str(ctx.plan.batch), "--epochs", str(epochs),
            "--workers", "0", "--device", ctx.plan.device, "--project", str(ctx.work / "runs"), "--name", name]


def amp_flag(ctx: Context, dtype: str) -> list[str]:
    """``--amp bf16``/``fp16`` on the GPU; the CPU has no mixed precision (``--amp off``)."""
    return ["--amp", dtype if ctx.plan.device == "cuda" else "off"]


def check_ddp(ctx: Context) -> Iterator[Result]:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m"]
    extra = ["--sync-bn", *amp_flag(ctx, "bf16")] if ctx.plan.device == "cuda" else []
    ok, detail, run = cli_train(ctx, "ddp", extra, torchrun)
    if ok:
        config = json.loads((run / "config.json").read_text())
        rows = (run / "metrics.csv").read_text().splitlines()
        header = rows[0].split(",")
        val = "map50" in header and rows[1].split(",")[header.index("map50")] != ""
        backend = "nccl" if ctx.plan.device == "cuda" else "gloo"
        ok = config["world_size"] == 1 and config["sync_bn"] == bool(extra) and val and \
            (run / "weights" / "last.pt").exists()
        detail = (f"torchrun 1 process, {backend}, {' '.join(extra) or 'no --sync-bn (CUDA only)'}: 1 epoch "
                  f"with val evaluation ({'scored' if val else 'NO val metrics'}) in {detail}, checkpoint written")
    yield Result("ddp", ok, detail)


def check_resume(ctx: Context) -> Iterator[Result]:
    """A run killed once its first epoch is saved, then ``--resume``d under the other precision."""
    ctx.dataset("cli", ctx.plan.cli_images, ctx.plan.img_size, val=0.5)
    run = ctx.work / "runs" / "resume"
    args = [sys.executable, "-m", *train_args(ctx, "resume", 4), *amp_flag(ctx, "bf16")]
    first = subprocess.Popen(args, env=ctx.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        while first.poll() is None and not (run / "weights" / "last.pt").exists() and ctx.left() > 0:
            time.sleep(0.1)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        _, err = first.communicate()
    if not (run / "weights" / "last.pt").exists():
        yield Result("resume", False, f"the first run saved no epoch (exit {first.returncode}: "
                                      f"{err.strip().splitlines()[-1:]})")
        return
    started = time.perf_counter()
    done = run_command([sys.executable, "-m", "tlsync", "train", "--resume", str(run), *amp_flag(ctx, "fp16")],
                       ctx.env(), ctx.left())
    rows = (run / "metrics.csv").read_text().splitlines()[1:] if (run / "metrics.csv").exists() else []
    ok = done.returncode == 0 and len(rows) == 4
    tail = [line for line in done.stderr.splitlines() if line.strip()][-1:]
    yield Result("resume", ok, f"killed after epoch 1 ({' '.join(amp_flag(ctx, 'bf16'))}), resumed with "
                               f"{' '.join(amp_flag(ctx, 'fp16'))}: " +
                 (f"{len(rows)} of 4 epochs in the metrics, {time.perf_counter() - started:.0f}s" if ok
                  else f"exit {done.returncode}, {len(rows)} metrics rows: {tail}"))


def check_compile(ctx: Context) -> Iterator[Result]:
    """Two epochs with ``--compile`` and two without; the second epoch's train time of each (the first compiles)."""
    seconds = {}
    for name, extra in (("plain", []), ("compile", ["--compile"])):
        ok, detail, run = cli_train(ctx, name, extra, epochs=2)
        if not ok:
            yield Result("compile", False, f"{' '.join(extra) or 'without --compile'}: {detail}")
            return
        rows = [row.split(",") for row in (run / "metrics.csv").read_text().splitlines()]
        column = rows[0].index("train_seconds")
        seconds[name] = [float(row[column]) for row in rows[1:]]
    speedup = seconds["plain"][-1] / seconds["compile"][-1]
    yield Result("compile", True, f"--compile (backbone + FPN): epoch train seconds "
                                  f"{', '.join(f'{s:.1f}' for s in seconds['compile'])} against "
                                  f"{', '.join(f'{s:.1f}' for s in seconds['plain'])} without; second epoch "
                                  f"{speedup:.2f}x", {"compile_speedup": speedup})
