"""Training on several processes with torch.distributed: starting them, the process group,
and the ``DistributedRuntime`` that the training loop (``train.py``) runs with.

Two ways in, one code path:

* ``torchrun`` (one machine or many) starts every worker itself and tells each its place
  through the environment (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
  ``MASTER_PORT``); ``launched_by_torchrun`` recognises such a worker.
* ``tlsync train --devices N`` on one machine: ``launch`` starts N workers with
  ``torch.multiprocessing`` (spawn) and gives each the same variables, so from there on a
  worker cannot tell the two apart.

Every worker joins the process group (NCCL on CUDA, gloo on CPU) with a timeout
(``TLSYNC_DIST_TIMEOUT`` seconds, default 600), so a rank waiting for a peer that died
gives up instead of hanging; under ``launch`` the parent also watches the workers and
stops them all as soon as one fails, naming its rank.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Sampler

from tlsync.console import console, info
from tlsync.errors import TlsyncError
from tlsync.store import DatasetVersion, Store

from .checkpoint import unwrap
from .evaluate import score_split, split_items
from .predict import predict_items
from .train import Runtime, TrainConfig, resolve_device

T = TypeVar("T")
RANK_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_ENV = "TLSYNC_DIST_TIMEOUT"
# Longest a rank waits for the others at a collective. Rank 0 alone writes checkpoints and
# the metrics log between epochs while the others wait, so this must cover that comfortably.
DEFAULT_TIMEOUT = 600.0


# -- where this process stands ----------------------------------------------------------------

def launched_by_torchrun() -> bool:
    """True in a worker started by torchrun (or by ``launch``): its rank is in the environment."""
    return all(name in os.environ for name in RANK_ENV)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    """Rank 0: the one process that writes files and prints."""
    return rank() == 0


def timeout() -> timedelta:
    raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise TlsyncError(f"{TIMEOUT_ENV}={raw!r}: give the timeout in seconds, e.g. {DEFAULT_TIMEOUT:g}")
    return timedelta(seconds=seconds)


# -- collectives (no-ops in a single process) ----------------------------------------------------

def _collective(call: Callable[[], T]) -> T:
    """Run a collective; a peer that never answers becomes a one-line error, not a stack of C++."""
    try:
        return call()
    except RuntimeError as e:  # gloo and NCCL raise DistBackendError (a RuntimeError) on timeouts and lost peers
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TlsyncError(f"lost contact with the other ranks within {timeout().total_seconds():g}s "
                          f"({TIMEOUT_ENV} sets the limit); one of them died or hangs ({first})") from None


def barrier() -> None:
    if is_initialized():
        _collective(dist.barrier)


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_initialized():
        return [obj]
    out: list[Any] = [None] * world_size()
    _collective(lambda: dist.all_gather_object(out, obj))
    return out


def gather_object(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 only (``None`` elsewhere)."""
    if not is_initialized():
        return [obj]
    out: list[Any] | None = [None] * world_size() if is_main() else None
    _collective(lambda: dist.gather_object(obj, out, dst=0))
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    _collective(lambda: dist.broadcast_object_list(box, src=0))
    return box[0]


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics).

    DDP keeps parameters identical, but each rank updates running statistics from its own
    last batch; evaluation and the checkpoint must see the same ones everywhere.
    """
    if is_initialized():
        for buffer in unwrap(model).buffers():
            _collective(lambda b=buffer: dist.broadcast(b, src=0))


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer: equal on two ranks iff their weights are."""
    digest = hashlib.sha256()
    for name, tensor in unwrap(model).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# -- joining and leaving the process group ------------------------------------------------------

def init_process_group(device_name: str) -> torch.device:
    """Join the group as the rank the environment names; return this rank's device.

    On CUDA each worker takes the GPU of its ``LOCAL_RANK`` (an index in ``--device
    cuda:N`` is ignored: with several workers per machine each needs its own GPU).
    """
    device = resolve_device(device_name)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise TlsyncError(f"LOCAL_RANK {local_rank} needs GPU {local_rank}, but this machine has "
                              f"{torch.cuda.device_count()}; start at most that many workers per machine")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif "OMP_NUM_THREADS" not in os.environ:  # CPU workers share the cores instead of each claiming all
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    address = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    try:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout())
    except (RuntimeError, ValueError) as e:
        raise TlsyncError(f"could not join the process group at {address} "
                          f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    return device


def cleanup() -> None:
    if is_initialized():
        dist.destroy_process_group()


# -- the runtime the training loop sees -----------------------------------------------------------

@dataclass
class DistributedRuntime(Runtime):
    """One rank of a DistributedDataParallel run; see ``train.Runtime`` for what each hook is for."""

    rank: int = 0

    def wrap(self, model: nn.Module, cfg: TrainConfig) -> nn.Module:
        """SyncBatchNorm if asked, then DDP, then ``torch.compile`` if asked (DDP first, as torch advises).

        Parameters that ``--freeze``/``--freeze-epochs`` switch off get no gradient in some
        steps, which DDP must be told about (``find_unused_parameters``).
        """
        if cfg.sync_bn:
            model = convert_sync_batchnorm(model, self.device)
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                      find_unused_parameters=bool(cfg.freeze or cfg.freeze_epochs))
        return super().wrap(net, cfg)

    def sampler(self, dataset: Dataset, cfg: TrainConfig) -> Sampler[int]:
        """This rank's share of one seeded shuffle: the same seed gives every rank the same order."""
        return DistributedSampler(dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=cfg.seed)

    def open_dataset(self, store: Store, ref: str) -> DatasetVersion:
        """Open ``ref`` on every rank and refuse to train unless every rank holds the same content.

        Each machine reads its own store; a version is deterministic (same source data,
        same content hash), so comparing hashes proves the ranks train on the same data.
        """
        try:
            version: DatasetVersion | None = store.open(ref)
            mine = (version.ref, version.content_hash, None)
        except TlsyncError as e:
            version, mine = None, (None, None, str(e))
        everyone = all_gather_object(mine)
        for r, (_, _, error) in enumerate(everyone):
            if error is not None:
                raise TlsyncError(f"rank {r} cannot open dataset {ref}: {error} (every machine needs its own pull "
                                  "of the dataset)")
        main_ref, main_hash, _ = everyone[0]
        for r, (other_ref, other_hash, _) in enumerate(everyone):
            if other_hash != main_hash:
                raise TlsyncError(f"refusing to train: rank {r} has dataset {other_ref} with content hash {other_hash}, "
                                  f"rank 0 has {main_ref} with content hash {main_hash}; pull the same data on every "
                                  "machine (pulls are deterministic, so the same source gives the same hash)")
        assert version is not None
        return version

    def from_main(self, fn: Callable[[], T]) -> T:
        """Rank 0 runs ``fn``; every rank gets its result, or raises its ``TlsyncError``."""
        value, error = None, None
        if self.is_main:
            try:
                value = fn()
            except TlsyncError as e:
                error = str(e)
        value, error = broadcast_object((value, error))
        if error is not None:
            raise TlsyncError(error)
        return value

    def average(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (each rank trained on as many images)."""
        everyone = [v for v in all_gather_object(values) if v]
        return {k: sum(v[k] for v in everyone) / len(everyone) for k in values} if everyone else values

    def evaluate(self, model: nn.Module, version: DatasetVersion, split: str, categories: list[str],
                 device: torch.device, out_dir: Any, conf: float | None = None, batch_size: int = 4) -> dict[str, Any]:
        """Every rank predicts a share of the batches, rank 0 scores them all once; all get the metrics.

        The batches are cut exactly as a single process cuts them (images of a batch are
        padded together, which nudges the outputs), so the metrics equal a single-process
        evaluation of the same weights.
        """
        sync_buffers(model)
        digests = all_gather_object(weights_digest(model))
        for r, digest in enumerate(digests):
            if digest != digests[0]:
                raise TlsyncError(f"rank {r}'s weights differ from rank 0's; evaluating (or saving) now would be "
                                  "wrong. DistributedDataParallel should keep them equal: report this as a bug")
        items = split_items(version, split)
        batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        mine = [item for batch in batches[self.rank::self.world_size] for item in batch]
        predicted = list(predict_items(model, mine, version.image_path, categories, device, batch_size=batch_size))
        parts = gather_object(predicted)

        def score() -> dict[str, Any]:
            by_id = {p.id: p for part in parts or [] for p in part}
            return score_split(version, split, items, [by_id[i.id] for i in items], categories, out_dir, conf)

        return self.from_main(score)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``--sync-bn``: batch-norm statistics over the global batch instead of each GPU's slice."""
    if device.type != "cuda":
        raise TlsyncError("--sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on CPU); drop it")
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        info("note: --sync-bn has nothing to do: this model has no trainable batch norm "
             "(pretrained torchvision backbones use frozen batch norm)")
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


# -- running a job as one rank, or starting the ranks ----------------------------------------------

Job = Callable[..., T]  # called as job(runtime=...), e.g. functools.partial(train, cfg)


def run(job: Job, devices: int, device: str) -> T:
    """Run ``job`` the way this process was started: as one rank under torchrun, as the parent
    of ``devices`` local workers, or alone. Returns rank 0's result (this rank's under torchrun)."""
    if launched_by_torchrun():
        if devices > 1 and devices != world_size():
            info(f"note: --devices {devices} ignored: torchrun started {world_size()} workers")
        try:
            return run_rank(job, device)
        except TlsyncError as e:
            raise TlsyncError(f"rank {rank()}: {e}") from None
    if devices > 1:
        return launch(job, devices, device)[0]
    return job()


def run_rank(job: Job, device_name: str) -> T:
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
        result = run_rank(job, device)
    except BaseException as e:  # reported to the parent, which stops the other ranks
        if os.environ.get("TLSYNC_DEBUG"):
            traceback.print_exc()
        reports.put((local_rank, "error", time.time(), _one_line(e)))
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
    errors = sorted((when, r, message) for r, (status, when, message) in received.items() if status == "error")
    stopped = f"; the other {devices - 1} worker(s) were stopped" if devices > 1 else ""
    if errors:
        _, r, message = errors[0]
        return f"rank {r} failed: {message}{stopped}"
    how = f"signal {e.signal_name}" if getattr(e, "signal_name", None) else f"exit code {getattr(e, 'exit_code', '?')}"
    return f"rank {e.error_index} died ({how}) without reporting an error (out of memory?){stopped}"


def _free_port() -> int:
    """A port free right now for rank 0's rendezvous store (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
