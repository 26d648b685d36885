"""Starting the workers of a multi-process run, or being one of them.

Two ways in, one code path:

* ``torchrun`` (one machine or many) starts every worker itself and tells each its place
  through the environment; ``distributed.launched_by_torchrun`` recognises such a worker.
* ``tlsync train --devices N`` on one machine: ``launch`` starts N workers with
  ``torch.multiprocessing`` (spawn) and gives each the same variables torchrun would, so
  from there on a worker cannot tell the two apart.

Under ``launch`` the parent watches the workers and stops them all as soon as one fails,
naming its rank; under torchrun the process-group timeout does that across machines.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from tlsync.console import console, info
from tlsync.errors import TlsyncError

from ..training.device import resolve_device
from .ddp import (
    SYNC_BN_NEEDS_CUDA,
    AllRanksError,
    DistributedRuntime,
    cleanup,
    init_process_group,
    is_main,
    launched_by_torchrun,
    rank,
    world_size,
)

T = TypeVar("T")

Job = Callable[..., T]  # called as job(runtime=...), e.g. functools.partial(train, cfg)


def run(job: Job[T], devices: int, device: str, sync_bn: bool = False) -> T:
    """Run ``job`` the way this process was started: as one rank under torchrun, as the parent
    of ``devices`` local workers, or alone. Returns rank 0's result (this rank's under torchrun)."""
    if sync_bn and resolve_device(device).type != "cuda":
        raise TlsyncError(SYNC_BN_NEEDS_CUDA)  # before starting workers that would each say so
    if sync_bn and devices == 1 and not launched_by_torchrun():
        info("note: --sync-bn has no effect in a single process")
    if launched_by_torchrun():
        if devices > 1 and devices != world_size():
            info(f"note: --devices {devices} ignored: torchrun started {world_size()} workers")
        try:
            return run_rank(job, device)
        except AllRanksError:
            raise
        except TlsyncError as e:
            raise TlsyncError(f"rank {rank()}: {e}") from None
    if devices > 1:
        return launch(job, devices, device)[0]
    return job()


def run_rank(job: Job[T], device_name: str) -> T:
    """Join the process group, run ``job`` as this rank, leave the group."""
    device = init_process_group(device_name)
    runtime = DistributedRuntime(device, is_main=is_main(), world_size=world_size(), rank=rank())
    if not runtime.is_main:
        console().quiet = True  # rank 0 alone prints status lines and progress
    result = job(runtime=runtime)
    cleanup()
    return result


def launch(job: Job, devices: int, device: str) -> list[Any]:
    """Start ``devices`` workers on this machine and wait for them; their results, by rank.

    The first worker to fail stops the others, and its error (the earliest, when a failure
    makes the others fail too) is raised here, naming its rank.
    """
    import torch.multiprocessing as mp
    from torch.multiprocessing.spawn import ProcessException

    if resolve_device(device).type == "cuda" and devices > torch.cuda.device_count():
        raise TlsyncError(f"--devices {devices}: this machine has {torch.cuda.device_count()} GPU(s); "
                          f"use at most that many (or --device cpu)")
    reports = mp.get_context("spawn").SimpleQueue()
    context = mp.start_processes(_spawned_worker, args=(job, devices, _free_port(), device, reports),
                                 nprocs=devices, join=False, start_method="spawn")
    received: dict[int, tuple[str, float, Any]] = {}
    spawn_log = logging.getLogger("torch.multiprocessing.spawn")
    level = spawn_log.level
    spawn_log.setLevel(logging.ERROR)  # its "Terminating process" warnings would bury our one-line error
    try:
        while not context.join(timeout=0.5):
            _drain(reports, received)
    except ProcessException as e:
        _drain(reports, received)
        raise TlsyncError(_failure(e, received, devices)) from None
    except BaseException:  # Ctrl-C in the parent: leave no orphans
        for process in context.processes:
            if process.is_alive():
                process.terminate()
        raise
    finally:
        spawn_log.setLevel(level)
    _drain(reports, received)
    return [received[r][2] for r in range(devices)]


def _spawned_worker(local_rank: int, job: Job, devices: int, port: int, device: str, reports: Any) -> None:
    """A worker of ``launch``: torchrun's variables, then the same path as under torchrun."""
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(devices),
                      LOCAL_WORLD_SIZE=str(devices), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        result: Any = run_rank(job, device)
    except BaseException as e:  # reported to the parent, which stops the other ranks
        if os.environ.get("TLSYNC_DEBUG"):
            traceback.print_exc()
        status = "shared" if isinstance(e, AllRanksError) else "error"
        reports.put((local_rank, status, time.time(), _one_line(e)))
        sys.exit(1)
    reports.put((local_rank, "ok", time.time(), result))


def _one_line(e: BaseException) -> str:
    if isinstance(e, TlsyncError):
        return " ".join(str(e).split())
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {first} (run with --debug for the traceback)"


def _drain(reports: Any, received: dict[int, tuple[str, float, Any]]) -> None:
    while not reports.empty():
        r, status, when, payload = reports.get()
        received[r] = (status, when, payload)


def _failure(e: Any, received: dict[int, tuple[str, float, Any]], devices: int) -> str:
    """The error to show: one every rank raised, as is; else the earliest, naming its rank."""
    shared = [message for status, _, message in received.values() if status == "shared"]
    if shared:
        return shared[0]
    errors = sorted((when, r, message) for r, (status, when, message) in received.items() if status == "error")
    stopped = f"; the other {devices - 1} worker(s) were stopped" if devices > 1 else ""
    if errors:
        _, r, message = errors[0]
        return f"rank {r} failed: {message}{stopped}"
    return f"rank {e.error_index} {death(getattr(e, 'signal_name', None), getattr(e, 'exit_code', None))}{stopped}"


def death(signal_name: str | None, exit_code: int | None) -> str:
    """How a worker that reported nothing ended, with its likely cause rather than one guess for all."""
    if signal_name == "SIGKILL":
        return "was killed (SIGKILL) without reporting an error: out of memory? (the kernel's OOM killer sends it)"
    if signal_name == "SIGABRT":
        return ("aborted (SIGABRT) without reporting an error: a CUDA error, or NCCL's watchdog tearing the process "
                "down after a collective timed out (TORCH_NCCL_ASYNC_ERROR_HANDLING; run with --debug)")
    how = f"signal {signal_name}" if signal_name else f"exit code {exit_code if exit_code is not None else '?'}"
    return f"died ({how}) without reporting an error"


def _free_port() -> int:
    """A port free right now for rank 0's rendezvous store (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
