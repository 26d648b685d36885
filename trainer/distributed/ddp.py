"""The torch.distributed side of multi-process training: the process group, the
collectives tlsync uses, and the ``DistributedRuntime`` that the training loop
(``train.py``) runs with as one rank of a DistributedDataParallel job.

A worker learns its place from torchrun's environment variables (``RANK``,
``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), whether torchrun or
``launcher.launch`` (``tlsync train --devices N``) started it. It joins the process group
(NCCL on CUDA, gloo on CPU) with a timeout (``TLSYNC_DIST_TIMEOUT`` seconds, default
600), so a rank waiting for a peer that died gives up instead of hanging.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Sampler

from tlsync.console import info
from tlsync.errors import TlsyncError
from tlsync.store import DatasetVersion, Store

from ..evaluation.evaluate import score_split, split_items
from ..evaluation.loader import predict_loaded
from ..training.checkpoint import unwrap
from ..training.device import resolve_device
from ..training.settings import TrainConfig
from .runtime import Runtime

T = TypeVar("T")
RANK_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_ENV = "TLSYNC_DIST_TIMEOUT"
# Longest a rank waits for the others at a collective. Rank 0 alone writes checkpoints and
# the metrics log between epochs while the others wait, so this must cover that comfortably.
DEFAULT_TIMEOUT = 600.0
NCCL_ERROR_HANDLING_ENV = "TORCH_NCCL_ASYNC_ERROR_HANDLING"
SYNC_BN_NEEDS_CUDA = "--sync-bn needs CUDA devices (torch's SyncBatchNorm does not run on CPU); drop it"


class AllRanksError(TlsyncError):
    """Raised alike on every rank (a shared decision, not one rank's fault), so reported once, as is."""


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
        raise lost_contact(e) from None


def lost_contact(e: BaseException) -> TlsyncError:
    """The one-line error for a collective that failed: a timeout, or a peer that died."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return TlsyncError(f"lost contact with the other ranks within {timeout().total_seconds():g}s "
                       f"({TIMEOUT_ENV} sets the limit); one of them died or hangs ({first})")


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


def failing_ranks(bad: bool, device: torch.device) -> list[int]:
    """The ranks for which ``bad`` holds, known to every rank (in one process: ``[0]`` or ``[]``).

    For decisions that depend on a rank's own data (skip this step, stop training): taken
    alone, they leave the other ranks blocked in the next gradient all-reduce or
    SyncBatchNorm gather until the timeout. One all-reduce of one flag per rank, so every
    rank decides the same, and can say which rank was the cause.
    """
    if not is_initialized() or world_size() == 1:
        return [0] if bad else []
    flags = torch.zeros(world_size(), dtype=torch.int32, device=device)  # NCCL reduces CUDA tensors only
    flags[rank()] = int(bad)
    _collective(lambda: dist.all_reduce(flags))
    return [r for r, flag in enumerate(flags.tolist()) if flag]


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics).

    DDP keeps parameters identical, but each rank updates running statistics from its own
    last batch; evaluation and the checkpoint must see the same ones everywhere.
    """
    if is_initialized():
        for buffer in unwrap(model).buffers():
            _collective(partial(dist.broadcast, buffer, src=0))


def all_reduce_mean_stats(layers: list[nn.modules.batchnorm._BatchNorm], batches: int) -> None:
    """Precise BN under DDP: each layer's running mean/var averaged over every rank's ``batches``.

    Each rank holds the mean over its own batches; weighting by the counts gives the mean
    over all of them, what one process forwarding every batch computes. One all-reduce.
    """
    if not is_initialized() or world_size() == 1 or not layers:
        return
    stats = [t for m in layers for t in (m.running_mean, m.running_var)]
    flat = torch.cat([t.detach().float().reshape(-1) * batches for t in stats]  # type: ignore[union-attr]
                     + [torch.tensor([float(batches)], device=stats[0].device)])  # type: ignore[union-attr]
    _collective(lambda: dist.all_reduce(flat))
    total = flat[-1].item()
    if total > 0:
        offset = 0
        for t in stats:
            n = t.numel()  # type: ignore[union-attr]
            t.copy_((flat[offset:offset + n] / total).reshape(t.shape))  # type: ignore[union-attr]
            offset += n


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
    if device.type == "cuda":
        # NCCL's default (3) tears the process down from its watchdog thread on a timeout or a lost peer, before
        # Python sees an error; 2 aborts the communicators only, so the waiting collective raises and the rank
        # reports why (see _collective). The user's own setting wins.
        os.environ.setdefault(NCCL_ERROR_HANDLING_ENV, "2")
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
            assert version is not None
            mine: tuple[str | None, str | None, str | None] = (version.ref, version.content_hash, None)
        except TlsyncError as e:
            version, mine = None, (None, None, str(e))
        everyone = all_gather_object(mine)
        for r, (_, _, error) in enumerate(everyone):
            if error is not None:
                raise AllRanksError(f"rank {r} cannot open dataset {ref}: {error} (every machine needs its own "
                                    "pull of the dataset)")
        main_ref, main_hash, _ = everyone[0]
        for r, (other_ref, other_hash, _) in enumerate(everyone):
            if other_hash != main_hash:
                raise AllRanksError(f"refusing to train: rank {r} has dataset {other_ref} with content hash "
                                    f"{other_hash}, rank 0 has {main_ref} with content hash {main_hash}; pull the same "
                                    "data on every machine (pulls are deterministic: the same source, the same hash)")
        assert version is not None
        return version

    def from_main(self, fn: Callable[[], T]) -> T:
        """Rank 0 runs ``fn``; every rank gets its result, or raises its ``TlsyncError`` (as ``AllRanksError``)."""
        value, error = None, None
        if self.is_main:
            try:
                value = fn()
            except TlsyncError as e:
                error = str(e)
        value, error = broadcast_object((value, error))
        if error is not None:
            raise AllRanksError(error)
        return value

    def average(self, values: dict[str, float]) -> dict[str, float]:
        """The mean over ranks of each value (each rank trained on as many images)."""
        everyone = [v for v in all_gather_object(values) if v]
        return {k: sum(v[k] for v in everyone) / len(everyone) for k in values} if everyone else values

    def evaluate(self, model: nn.Module, version: DatasetVersion, split: str, categories: list[str],
                 device: torch.device, out_dir: Path | None, conf: float | None = None,
                 batch_size: int = 4, workers: int = 0,
                 progress: Callable[..., None] | None = None) -> dict[str, Any]:
        """Every rank predicts a share of the batches, rank 0 scores them all once; all get the metrics.

        ``progress`` counts this rank's images times the ranks (they share the batches evenly).

        The batches are cut exactly as a single process cuts them (images of a batch are
        padded together, which nudges the outputs), so the metrics equal a single-process
        evaluation of the same weights.
        """
        sync_buffers(model)
        digests = all_gather_object(weights_digest(model))
        for r, digest in enumerate(digests):
            if digest != digests[0]:
                raise AllRanksError(f"rank {r}'s weights differ from rank 0's; evaluating (or saving) now would be "
                                    "wrong. DistributedDataParallel should keep them equal: report this as a bug")
        items = split_items(version, split)
        batches = [list(range(i, min(i + batch_size, len(items)))) for i in range(0, len(items), batch_size)]
        predicted = []
        for item in predict_loaded(model, items, version.image_path, categories, device, workers=workers,
                                   batches=batches[self.rank::self.world_size], draft=True):
            predicted.append(item)
            if progress:
                progress(min(len(items), len(predicted) * self.world_size), total=len(items))
        parts = gather_object(predicted)

        def score() -> dict[str, Any]:
            by_id = {p.id: p for part in parts or [] for p in part}
            return score_split(version, split, items, [by_id[i.id] for i in items], categories, out_dir, conf)

        return self.from_main(score)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """``--sync-bn``: batch-norm statistics over the global batch instead of each GPU's slice."""
    if device.type != "cuda":
        raise TlsyncError(SYNC_BN_NEEDS_CUDA)
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        info("note: --sync-bn has nothing to do: this model has no trainable batch norm "
             "(pretrained torchvision backbones use frozen batch norm)")
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)
