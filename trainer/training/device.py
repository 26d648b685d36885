"""Turning ``--device`` into a ``torch.device``, with a one-line error for one this machine lacks.

Its own module so that eval, predict, push and the launchers need not import the training
loop just to read a flag.
"""

from __future__ import annotations

import torch

from tlsync.errors import TlsyncError


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; refuse anything else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TlsyncError(f"--device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise TlsyncError(f"--device {name}: no such CUDA device on this machine "
                          f"({torch.cuda.device_count()} available); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise TlsyncError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return device


def use_device(device: torch.device) -> None:
    """Make ``cuda:N`` this process's current CUDA device.

    ``.to(device)`` alone does not: pinned-memory threads, ``torch.cuda`` queries and
    libraries that use "the current device" would otherwise open a context on GPU 0 too,
    taking its memory from whoever runs there. A no-op on the CPU and for plain ``cuda``.
    """
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
