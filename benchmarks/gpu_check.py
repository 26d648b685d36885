"""The CUDA paths of ``tlsync train``, checked in one go on one GPU (under 8 minutes).

    python benchmarks/gpu_check.py                 # on a CUDA machine: every check, BENCHMARKS.md section
    python benchmarks/gpu_check.py --device cpu    # the same code paths, tiny, on the CPU (no figures written)
    python benchmarks/gpu_check.py --only amp,checkpoint

Checks, one line each, then a summary:

* ``amp``: a few training steps of each model family (Faster R-CNN, RetinaNet, FCOS, SSDLite,
  SSD, Faster R-CNN Lite0) through tlsync's own ``train_one_epoch``, under autocast bf16 and
  then fp16 with a GradScaler: the losses stay finite and the scaler's scale stays usable.
* ``ddp``: ``torchrun --nproc-per-node 1 -m tlsync train --sync-bn`` through the real CLI, so
  NCCL, DistributedDataParallel and SyncBatchNorm run end to end (gloo, without --sync-bn,
  on the CPU, which SyncBatchNorm does not support).
* ``compile``: ``tlsync train --compile`` for one epoch through the CLI.
* ``checkpoint``: a model trained a step on the GPU is saved there and loaded by a process
  that sees no GPU (``CUDA_VISIBLE_DEVICES=``): same weights, and it predicts.
* ``throughput``: train images/s of ``tlsync train`` (pinned memory, non-blocking copies,
  cudnn.benchmark, AMP) against a bare torchvision loop on the same GPU, for
  fasterrcnn_resnet50_fpn and Lite0 at 640 px, alternating rounds; the overhead ratio.
* ``loader``: the data pipeline's images/s (decode + augment, default loader workers) on the
  chess export's 2048x1371 JPEGs, against what the GPU consumed in ``throughput``: whether
  the loader is the limit, and by how much.

Without CUDA (and without ``--device cpu``) it says so and exits 0. Models start from random
weights (``--weights none``): the GPU machines have no internet, and speed does not depend on
the weights' values.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
CHESS = next((p for p in (ROOT / "shared" / "datasets" / "chess-pieces-coco",
                          ROOT.parent / "shared" / "datasets" / "chess-pieces-coco") if p.is_dir()), None)
CHECKS = ("amp", "ddp", "compile", "checkpoint", "throughput", "loader")
FAMILIES = ("fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn",
            "ssdlite320_mobilenet_v3_large", "ssd300_vgg16", "fasterrcnn_efficientnet_lite0_fpn")
SPEED_MODELS = ("fasterrcnn_resnet50_fpn", "fasterrcnn_efficientnet_lite0_fpn")
BUDGET_S = 8 * 60


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the GPU's, or the CPU smoke run's (same code, tiny)."""

    device: str
    img_size: int  # px, longest side
    batch: int
    amp_steps: int  # training steps per family and dtype
    speed_images: int  # synthetic training images for the throughput loops
    speed_epochs: int  # per round; the first epoch of each round is warm-up (cudnn autotuning)
    rounds: int  # alternating tlsync / bare rounds
    loader_images: int | None  # None: every chess train image
    cli_timeout_s: int

    @property
    def smoke(self) -> bool:
        return self.device == "cpu"


GPU = Plan("cuda", 640, 4, 3, 64, 3, 2, None, 300)
CPU = Plan("cpu", 64, 2, 1, 4, 2, 1, 8, 600)


@dataclass
class Result:
    name: str
    ok: bool | None  # None: skipped
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        status = {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]
        return f"{status} {self.name}: {self.detail}"


@dataclass
class Context:
    plan: Plan
    work: Path
    deadline: float
    results: list[Result] = field(default_factory=list)
    _datasets: dict[str, Any] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**os.environ, "TLSYNC_HOME": str(self.work / "home"), "TLSYNC_LOAD_PLUGINS": ""}

    def dataset(self, name: str, items: int, size: int) -> Any:
        """A synthetic dataset pulled once into this run's store (every item in train)."""
        if name not in self._datasets:
            from tlsync.connectors.synthetic import SyntheticSource
            from tlsync.pull import pull
            from tlsync.store import Store

            store = Store(self.work / "home")
            pull(store, SyntheticSource(), {"items": items, "size": size, "seed": 0}, name, split_ratios=(1.0, 0, 0))
            self._datasets[name] = store.open(name)
        return self._datasets[name]


def synthetic_batch(plan: Plan, size: int, classes: int = 3) -> tuple[list[Any], list[dict[str, Any]]]:
    import torch

    images = [torch.rand(3, size, size) for _ in range(plan.batch)]
    targets = []
    for i in range(plan.batch):
        x, y = 0.1 * size + i, 0.2 * size
        targets.append({"boxes": torch.tensor([[x, y, x + 0.4 * size, y + 0.5 * size]]),
                        "labels": torch.tensor([1 + i % classes])})
    return images, targets


def amp_steps(name: str, plan: Plan, dtype: Any) -> str:
    """``steps`` training steps of ``name`` under autocast ``dtype`` (fp16 with a live GradScaler)."""
    import torch

    from tlsync.plugins import get_model
    from tlsync.trainer import build_model
    from tlsync.trainer.training.engine import build_optimizer, build_scheduler, train_one_epoch

    device = torch.device(plan.device)
    size = max(plan.img_size, get_model(name).min_size)
    torch.manual_seed(0)
    model = build_model(name, 3, "none", size).to(device).train()
    optimizer = build_optimizer(model, "sgd", 0.005, 0.9, 1e-4)
    scheduler = build_scheduler(optimizer, plan.amp_steps, 1)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    batches: list[tuple[Any, ...]] = [(*synthetic_batch(plan, size), []) for _ in range(plan.amp_steps)]
    result = train_one_epoch(model, optimizer, batches, device, scheduler, scaler, dtype, 10.0)
    scale = scaler.get_scale() if scaler.is_enabled() else None
    if scale is not None and not (0 < scale < float("inf")):
        raise RuntimeError(f"GradScaler scale became {scale}")
    loss = sum(result.losses.values())
    return f"{str(dtype).removeprefix('torch.')} loss {loss:.3f}" + (f" scale {scale:g}" if scale else "") + \
        f" {result.seconds / plan.amp_steps:.2f}s/step"


def check_amp(ctx: Context) -> list[Result]:
    import torch

    out = []
    for name in FAMILIES:
        parts, ok = [], True
        dtypes = [torch.bfloat16, torch.float16]
        if ctx.plan.device == "cuda" and not torch.cuda.is_bf16_supported():
            parts.append("bf16 not supported by this GPU")
            dtypes = [torch.float16]
        for dtype in dtypes:
            try:
                parts.append(amp_steps(name, ctx.plan, dtype))
            except Exception as e:  # one family failing must not hide the others
                ok = False
                parts.append(f"{str(dtype).removeprefix('torch.')} failed: {type(e).__name__}: {str(e)[:200]}")
        out.append(Result(f"amp {name}", ok, "; ".join(parts)))
    return out


def cli_train(ctx: Context, name: str, extra: list[str], launcher: list[str] | None = None) -> tuple[bool, str, Path]:
    """``tlsync train`` in a subprocess on a small synthetic dataset: (ok, last stderr line, run dir)."""
    ctx.dataset("cli", 8, ctx.plan.img_size)
    model = "fasterrcnn_mobilenet_v3_large_fpn"
    args = [*(launcher or [sys.executable, "-m"]), "tlsync", "train", "--dataset", "cli", "--model", model,
            "--weights", "none", "--img-size", str(ctx.plan.img_size), "--batch-size", str(ctx.plan.batch),
            "--epochs", "1", "--workers", "0", "--device", ctx.plan.device, "--project", str(ctx.work / "runs"),
            "--name", name, *extra]
    started = time.perf_counter()
    try:
        done = subprocess.run(args, env=ctx.env(), capture_output=True, text=True, timeout=ctx.plan.cli_timeout_s)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {ctx.plan.cli_timeout_s}s", ctx.work / "runs" / name
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    tail = lines[-1] if lines else ""
    took = f"{time.perf_counter() - started:.0f}s"
    return done.returncode == 0, (f"{took}" if done.returncode == 0 else f"exit {done.returncode}: {tail}"), \
        ctx.work / "runs" / name


def check_ddp(ctx: Context) -> list[Result]:
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m"]
    extra = ["--sync-bn"] if ctx.plan.device == "cuda" else []
    ok, detail, run = cli_train(ctx, "ddp", extra, torchrun)
    if ok:
        config = json.loads((run / "config.json").read_text())
        backend = "nccl" if ctx.plan.device == "cuda" else "gloo"
        ok = config["world_size"] == 1 and config["sync_bn"] == bool(extra) and (run / "weights" / "last.pt").exists()
        detail = (f"torchrun 1 process, {backend}, {'--sync-bn' if extra else 'no --sync-bn (CUDA only)'}: "
                  f"1 epoch in {detail}, checkpoint written")
    return [Result("ddp", ok, detail)]


def check_compile(ctx: Context) -> list[Result]:
    ok, detail, run = cli_train(ctx, "compile", ["--compile"])
    if ok:
        rows = (run / "metrics.csv").read_text().splitlines()
        detail = f"1 epoch with torch.compile in {detail} (train {float(rows[1].split(',')[2]):.1f}s)"
    return [Result("compile", ok, detail)]


LOAD_ON_CPU = """
import sys, torch
from tlsync.trainer import load_model
from tlsync.trainer.distributed.ddp import weights_digest
assert not torch.cuda.is_available()
model, categories, _ = load_model(sys.argv[1], "cpu")
with torch.no_grad():
    (out,) = model([torch.rand(3, 96, 128)])
print(weights_digest(model), sorted(out))
"""


def check_checkpoint(ctx: Context) -> list[Result]:
    import torch

    from tlsync.trainer import build_model, save_checkpoint
    from tlsync.trainer.distributed.ddp import weights_digest

    device = torch.device(ctx.plan.device)
    model = build_model("fasterrcnn_mobilenet_v3_large_fpn", 3, "none", ctx.plan.img_size).to(device).train()
    images, targets = synthetic_batch(ctx.plan, ctx.plan.img_size)
    on_device = [{k: v.to(device) for k, v in t.items()} for t in targets]
    loss = sum(model([i.to(device) for i in images], on_device).values())
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    path = save_checkpoint(ctx.work / "gpu.pt", model, ["a", "b", "c"], {"model": "fasterrcnn_mobilenet_v3_large_fpn"},
                           epoch=1)
    env = {**ctx.env(), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", LOAD_ON_CPU, str(path)], env=env, capture_output=True, text=True,
                          timeout=ctx.plan.cli_timeout_s)
    if done.returncode != 0:
        return [Result("checkpoint", False, f"loading on the CPU failed: {done.stderr.strip().splitlines()[-1:]}")]
    digest, keys = done.stdout.split(" ", 1)
    same = digest == weights_digest(model)
    return [Result("checkpoint", same and "boxes" in keys,
                   f"saved from {device}, loaded by a CPU-only process: weights {'identical' if same else 'DIFFER'}, "
                   f"predicts {keys.strip()}")]


CHECK_FUNCTIONS: dict[str, Callable[[Context], list[Result]]] = {
    "amp": check_amp, "ddp": check_ddp, "compile": check_compile, "checkpoint": check_checkpoint,
}


def run_checks(plan: Plan, only: tuple[str, ...], work: Path) -> list[Result]:
    from gpu_check_speed import check_loader, check_throughput

    functions = {**CHECK_FUNCTIONS, "throughput": check_throughput, "loader": check_loader}
    ctx = Context(plan, work, time.monotonic() + BUDGET_S)
    for name in only:
        if time.monotonic() > ctx.deadline:
            results = [Result(name, None, f"skipped: the {BUDGET_S // 60}-minute budget is spent")]
        else:
            try:
                results = functions[name](ctx)
            except Exception as e:  # report and go on: the next check may still tell us something
                results = [Result(name, False, f"{type(e).__name__}: {str(e)[:300]}")]
        for result in results:
            print(result.line(), flush=True)
        ctx.results += results
    return ctx.results


def no_cuda_message() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    built = torch.version.cuda or "no CUDA"
    return (f"gpu_check: no CUDA device on this machine (torch {torch.__version__}, built for {built}); "
            f"nothing to check. Run it on a GPU machine, or with --device cpu for a tiny CPU run of the same code.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: every check tiny on the CPU (exercises the code; figures are not written)")
    parser.add_argument("--only", default=",".join(CHECKS), help=f"comma list of checks ({', '.join(CHECKS)})")
    args = parser.parse_args(argv)
    only = tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = [n for n in only if n not in CHECKS]
    if unknown:
        parser.error(f"unknown check {unknown[0]!r}; choose from {', '.join(CHECKS)}")
    if args.device == "cuda" and (message := no_cuda_message()):
        print(message)
        return 0
    plan = GPU if args.device == "cuda" else CPU
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tlsync-gpu-check-") as work:
        results = run_checks(plan, only, Path(work))
    failed = [r.name for r in results if r.ok is False]
    passed = sum(r.ok is True for r in results)
    skipped = sum(r.ok is None for r in results)
    print(f"gpu_check ({plan.device}{', smoke sizes' if plan.smoke else ''}): {passed} passed, {len(failed)} failed"
          f"{f', {skipped} skipped' if skipped else ''} in {time.perf_counter() - started:.0f}s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    if not plan.smoke:
        from gpu_check_speed import write_section

        write_section(results, " ".join(["python benchmarks/gpu_check.py", *(argv or sys.argv[1:])]))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
