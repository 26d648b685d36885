"""An exclusive lock file shared across processes, with a timeout.

On POSIX this is ``flock`` on the file, which is what ``filelock`` does there too, in a
dozen lines: importing ``filelock`` costs about 30 ms (its asyncio-aware core), paid at the
start of every pull, whose whole start-up is 0.3 s. Elsewhere (Windows) ``filelock`` does it.
The kernel drops an ``flock`` when its holder dies, so a killed pull never leaves a dataset
locked.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockTimeout(Exception):
    """Another process held the lock for the whole timeout."""


@contextmanager
def exclusive(path: Path, timeout: float) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # Windows
        yield from _filelock(path, timeout)
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline, delay = time.monotonic() + timeout, 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeout(str(path)) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.25)
        yield
    finally:
        os.close(fd)  # releases the lock


def _filelock(path: Path, timeout: float) -> Iterator[None]:
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise LockTimeout(str(path)) from None
    try:
        yield
    finally:
        lock.release()
