"""The CUDA paths of ``tlsync train``, checked on one GPU in two calls that each fit a 10-minute command.

    python benchmarks/gpu_check.py --only amp,ddp,checkpoint,loader,resume --out "$OUT"   # call 1
    python benchmarks/gpu_check.py --only compile,throughput --out "$OUT"                 # call 2
    python benchmarks/gpu_check.py --merge DIR1 DIR2   # back home: BENCHMARKS.md's section from both calls
    python benchmarks/gpu_check.py --device cpu --only checkpoint   # the same code, tiny, on the CPU

Every call starts with a preflight (tlsync importable, the GPU and its compute capability, whether
the Lite0 extra is installed, where the chess export is) and then runs its checks, one line each:

* ``amp``: training steps of each model family through tlsync's ``train_one_epoch``, bf16 (native
  from compute capability 8.0) and fp16 with a live GradScaler: finite losses, a usable scale.
* ``ddp``: ``torchrun --nproc-per-node 1 -m tlsync train --sync-bn --amp bf16`` through the CLI on
  a dataset with a val split, so NCCL, DDP, SyncBatchNorm and the distributed evaluation all run.
* ``checkpoint``: a model trained a step on the GPU, saved, loaded by a process that sees no GPU.
* ``loader``: the data pipeline's images/s on the chess export's 2048x1371 JPEGs.
* ``resume``: a run killed after its first epoch (started with ``--amp bf16``) resumed with
  ``--amp fp16``, the case where a disabled scaler's empty state meets an enabled one.
* ``compile``: ``tlsync train --compile`` (backbone and FPN compiled) against the same run without.
* ``throughput``: train images/s of ``tlsync train`` against a bare loop over the same dataset
  class and augmentation, alternating rounds; and ``cudnn.benchmark`` on against off.

Each check has its own time allowance inside the call's ``--budget``; a check that overruns is
stopped where it is (SIGALRM; subprocesses are killed with their process group), keeps what it
measured and is reported as over its deadline, and the next check still runs. With ``--out`` the
results (JSON) and this call's BENCHMARKS section go to that folder (``$OUT`` on a lent device, the
folder that comes back); ``--merge`` turns the JSON of both calls into the section of BENCHMARKS.md.

Without CUDA (and without ``--device cpu``) it says so and exits 0. Models start from random
weights (``--weights none``): the GPU machines have no internet, and speed does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
# The chess export: in the checkout's shared/ (which travels to a lent device), beside it, or carried there in
# .gpucheck/ (docs/gpu.md: ../shared does not travel, and only its valid/ fits the device's 64 MiB).
CHESS = next((p for p in (ROOT / "shared" / "datasets" / "chess-pieces-coco",
                          ROOT.parent / "shared" / "datasets" / "chess-pieces-coco",
                          ROOT / ".gpucheck" / "chess-pieces-coco") if p.is_dir()), None)
CHECKS = ("amp", "ddp", "checkpoint", "loader", "resume", "compile", "throughput")
HALVES = ("amp,ddp,checkpoint,loader,resume", "compile,throughput")
LITE0 = "fasterrcnn_efficientnet_lite0_fpn"
FAMILIES = ("fasterrcnn_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn",
            "ssdlite320_mobilenet_v3_large", "ssd300_vgg16", LITE0)
CLI_MODEL = "fasterrcnn_mobilenet_v3_large_fpn"
BUDGET_S = 540  # one call: the device allows 600 s a command, less the interpreter's start and the files
# Seconds each check may take on the GPU (both halves' sums stay under BUDGET_S); the CPU smoke run gets 10x.
CHECK_BUDGET_S = {"amp": 120, "ddp": 100, "checkpoint": 45, "loader": 75, "resume": 150,
                  "compile": 210, "throughput": 300}


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the GPU's, or the CPU smoke run's (same code, tiny)."""

    device: str
    img_size: int  # px, longest side
    batch: int
    amp_steps: int  # training steps per family and dtype
    cli_images: int  # synthetic images of the CLI runs (ddp, resume, compile); ~half go to val (hashed ids)
    speed_images: int  # synthetic training images for the throughput loops
    speed_epochs: int  # per round; the first epoch of each round is warm-up
    rounds: int  # alternating tlsync / bare rounds
    loader_images: int | None  # None: every chess train image
    time_scale: float  # times CHECK_BUDGET_S

    @property
    def smoke(self) -> bool:
        return self.device == "cpu"


GPU = Plan("cuda", 640, 4, 3, 16, 128, 3, 2, None, 1.0)
CPU = Plan("cpu", 64, 2, 1, 8, 4, 2, 1, 8, 10.0)


@dataclass
class Result:
    name: str
    ok: bool | None  # None: skipped
    detail: str
    figures: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        status = {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]
        return f"{status} {self.name}: {self.detail}"


class DeadlineExceeded(BaseException):
    """A check ran past its allowance and was stopped where it was.

    A ``BaseException``, like ``KeyboardInterrupt``, so that no ``except Exception`` on the way
    (a check reporting one family's failure and going on) swallows it."""


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise ``DeadlineExceeded`` in this (main) thread after ``seconds``, wherever it is.

    A signal rather than checks between steps, because the slow parts (a compilation, a
    training epoch, a subprocess) are single calls that would otherwise run to their end.
    """

    def ring(signum: int, frame: Any) -> None:
        raise DeadlineExceeded(f"stopped at its {seconds:.0f}s deadline")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Context:
    plan: Plan
    work: Path
    deadline: float  # time.monotonic() at which the running check must end
    results: list[Result] = field(default_factory=list)
    lite0: bool = True  # the Lite0 extra is installed
    _datasets: dict[str, Any] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def env(self) -> dict[str, str]:
        return {**os.environ, "TLSYNC_HOME": str(self.work / "home"), "TLSYNC_LOAD_PLUGINS": ""}

    def dataset(self, name: str, items: int, size: int, val: float = 0.0) -> Any:
        """A synthetic dataset pulled once into this run's store (``val`` of it in val, the rest in train)."""
        if name not in self._datasets:
            from tlsync.connectors.synthetic import SyntheticSource
            from tlsync.pull import pull
            from tlsync.store import Store

            store = Store(self.work / "home")
            pull(store, SyntheticSource(), {"items": items, "size": size, "seed": 0}, name,
                 split_ratios=(1.0 - val, val, 0))
            self._datasets[name] = store.open(name)
        return self._datasets[name]


def run_command(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` in its own process group, killed whole on a timeout or a deadline (torchrun's
    workers too, which would otherwise hold the GPU for the next check)."""
    process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        out, err = process.communicate(timeout=max(timeout, 1))
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(args, process.returncode, out, err)


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


def check_amp(ctx: Context) -> Iterator[Result]:
    import torch

    from tlsync.trainer.training.engine import amp_dtype

    auto = amp_dtype(torch.device(ctx.plan.device), "auto") if ctx.plan.device == "cuda" else None
    for name in FAMILIES:
        if name == LITE0 and not ctx.lite0:
            yield Result(f"amp {name}", None, "skipped: the lite0 extra is not installed")
            continue
        parts, ok = [], True
        for dtype in (torch.bfloat16, torch.float16):
            try:
                parts.append(amp_steps(name, ctx.plan, dtype) + (" (--amp auto's choice)" if dtype == auto else ""))
            except Exception as e:  # one family failing must not hide the others
                ok = False
                parts.append(f"{str(dtype).removeprefix('torch.')} failed: {type(e).__name__}: {str(e)[:200]}")
        yield Result(f"amp {name}", ok, "; ".join(parts))


LOAD_ON_CPU = """
import sys, torch
from tlsync.trainer import load_model
from tlsync.trainer.distributed.ddp import weights_digest
assert not torch.cuda.is_available()
saved = torch.load(sys.argv[1], weights_only=True)  # a plain load, as any CPU-only tool would do it
model, categories, _ = load_model(sys.argv[1], "cpu")
with torch.no_grad():
    (out,) = model([torch.rand(3, 96, 128)])
print(weights_digest(model), sorted(out))
"""


def check_checkpoint(ctx: Context) -> Iterator[Result]:
    import torch

    from tlsync.trainer import build_model, save_checkpoint
    from tlsync.trainer.distributed.ddp import weights_digest

    device = torch.device(ctx.plan.device)
    model = build_model(CLI_MODEL, 3, "none", ctx.plan.img_size).to(device).train()
    images, targets = synthetic_batch(ctx.plan, ctx.plan.img_size)
    on_device = [{k: v.to(device) for k, v in t.items()} for t in targets]
    loss = sum(model([i.to(device) for i in images], on_device).values())
    loss.backward()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    optimizer.step()
    path = save_checkpoint(ctx.work / "gpu.pt", model, ["a", "b", "c"], {"model": CLI_MODEL}, epoch=1,
                           optimizer=optimizer.state_dict())
    env = {**ctx.env(), "CUDA_VISIBLE_DEVICES": ""}
    done = run_command([sys.executable, "-c", LOAD_ON_CPU, str(path)], env, ctx.left())
    if done.returncode != 0:
        yield Result("checkpoint", False, f"loading on the CPU failed: {done.stderr.strip().splitlines()[-1:]}")
        return
    digest, keys = done.stdout.split(" ", 1)
    same = digest == weights_digest(model)
    yield Result("checkpoint", same and "boxes" in keys,
                 f"saved from {device}, loaded by a CPU-only process: weights {'identical' if same else 'DIFFER'}, "
                 f"predicts {keys.strip()}")


# The checks defined here; run_checks adds gpu_check_cli's and gpu_check_speed's, and an entry here wins
# (which is how the tests stand in for a check).
CHECK_FUNCTIONS: dict[str, Callable[[Context], Iterator[Result]]] = {"amp": check_amp, "checkpoint": check_checkpoint}


def run_checks(plan: Plan, only: tuple[str, ...], work: Path, budget: float = BUDGET_S,
               lite0: bool = True) -> list[Result]:
    """Each check within its allowance (and the call's ``budget``); what a stopped check found is kept."""
    from gpu_check_cli import check_compile, check_ddp, check_resume
    from gpu_check_speed import check_loader, check_throughput

    functions = {"ddp": check_ddp, "resume": check_resume, "compile": check_compile, "throughput": check_throughput,
                 "loader": check_loader, **CHECK_FUNCTIONS}
    ends = time.monotonic() + budget
    ctx = Context(plan, work, ends, lite0=lite0)
    for name in only:
        allowed = min(CHECK_BUDGET_S[name] * plan.time_scale, ends - time.monotonic())
        ctx.deadline = time.monotonic() + allowed
        found: list[Result] = []
        ending: list[Result] = []
        if allowed <= 1:
            ending.append(Result(name, None, f"skipped: the call's {budget:.0f}s budget is spent"))
        else:
            try:
                with deadline(allowed):
                    for result in functions[name](ctx):
                        print(result.line(), flush=True)
                        found.append(result)
            except DeadlineExceeded as e:
                ending.append(Result(name, False, f"{e} (its allowance; the {len(found)} result(s) before it kept)"))
            except Exception as e:  # report and go on: the next check may still tell us something
                ending.append(Result(name, False, f"{type(e).__name__}: {str(e)[:300]}"))
        for result in ending:
            print(result.line(), flush=True)
        ctx.results += found + ending
    return ctx.results


def no_cuda_message() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    built = torch.version.cuda or "no CUDA"
    return (f"gpu_check: no CUDA device on this machine (torch {torch.__version__}, built for {built}); "
            f"nothing to check. Run it on a GPU machine, or with --device cpu for a tiny CPU run of the same code.")


def parse_only(parser: argparse.ArgumentParser, value: str) -> tuple[str, ...]:
    only = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in only if n not in CHECKS]
    if unknown:
        parser.error(f"unknown check {unknown[0]!r}; choose from {', '.join(CHECKS)}")
    return only


def main(argv: list[str] | None = None) -> int:
    from gpu_check_report import merge, preflight, write_out

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                        help="cpu: every check tiny on the CPU (exercises the code; figures are not written)")
    parser.add_argument("--only", default=HALVES[0],
                        help=f"comma list of checks ({', '.join(CHECKS)}); the two calls: {' / '.join(HALVES)}")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds this call may take in all")
    parser.add_argument("--out", type=Path, default=os.environ.get("OUT") or None,
                        help="folder for the results JSON and this call's BENCHMARKS section (default: $OUT)")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="DIR",
                        help="write BENCHMARKS.md's section from the results JSON in these folders; run nothing")
    args = parser.parse_args(argv)
    if args.merge:
        print(merge(args.merge))
        return 0
    only = parse_only(parser, args.only)
    if args.device == "cuda" and (message := no_cuda_message()):
        print(message)
        return 0
    plan = GPU if args.device == "cuda" else CPU
    started = time.perf_counter()
    facts = preflight(plan, CHESS)
    print("preflight: " + ", ".join(f"{k} {v}" for k, v in facts.items()), flush=True)
    with tempfile.TemporaryDirectory(prefix="tlsync-gpu-check-") as work:
        results = run_checks(plan, only, Path(work), args.budget, lite0=bool(facts["lite0"]))
    failed = [r.name for r in results if r.ok is False]
    passed = sum(r.ok is True for r in results)
    skipped = sum(r.ok is None for r in results)
    summary = (f"gpu_check ({plan.device}{', smoke sizes' if plan.smoke else ''}): {passed} passed, {len(failed)} "
               f"failed{f', {skipped} skipped' if skipped else ''} in {time.perf_counter() - started:.0f}s"
               + (f"; failed: {', '.join(failed)}" if failed else ""))
    print(summary)
    if args.out is not None:
        command = " ".join(["python benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])
        write_out(args.out, only, facts, results, summary, command, plan.smoke)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
