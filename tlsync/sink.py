"""Where a fetched image's bytes go, and the two ways that can fail that are not the input's fault.

The store hands every source's ``fetch`` an ``ImageSink`` rather than a bare file. It
carries the pull's limits (``max_bytes``, ``deadline``: ``HttpClient.download`` reads
them, so a plugin's download is bounded without passing anything), hashes the bytes as
they arrive, and tells a full disk apart from a bad image. A write error is the store's
problem, not the item's: ``StoreWriteError`` ends the pull under every ``--on-error``,
and the sink remembers it even if a plugin catches and rewraps the exception.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
from typing import Any

from .errors import TlsyncError

DEFAULT_MAX_IMAGE_BYTES = 256 << 20
DEFAULT_DEADLINE = 300.0  # seconds of wall time per image download, retries included
KEEP_BYTES = 1 << 20  # an image up to this size is also kept in memory, for the store's check


class StoreWriteError(TlsyncError):
    """Writing into the store failed (full disk, no permission, read-only, quota): fatal."""


class ImageTooLarge(TlsyncError):
    """An image over ``--max-image-bytes``: bad input, skippable."""


def store_write_error(e: OSError, where: object) -> StoreWriteError:
    """One line a user can act on; what was fetched so far stays in the fetch cache."""
    code = errno.errorcode.get(e.errno or 0, "")
    why = f"{e.strerror or e}{f' ({code})' if code else ''}"
    return StoreWriteError(f"cannot write to the store at {where}: {why}; nothing was published. "
                           f"Free space or fix permissions and pull again (images fetched so far are cached)")


write_fd = os.write  # every image byte goes through this one call (the tests fail it as a full disk would)


class ImageSink:
    """A write-only file for one image: capped, hashed, and sure about disk errors.

    An image of up to ``KEEP_BYTES`` is held in memory and written with one system call when
    the fetch is done (``flush``); a larger one goes to disk as it arrives. Each system call
    hands the GIL to another of the pull's threads, and a buffered file object alone costs
    four (fstat, isatty, lseek, write) before the first byte.
    """

    def __init__(self, fd: int, where: object, max_bytes: int | None = None, deadline: float | None = None):
        self._fd = fd
        self._where = where
        self._hash = hashlib.sha256()
        self.max_bytes = max_bytes
        self.deadline = deadline
        self.size = 0
        self.failed: StoreWriteError | None = None
        # The bytes, while they are few: written at once, and checked in memory by the store
        # rather than by opening the file again. At most KEEP_BYTES per fetch thread.
        self._kept: list[bytes] | None = []
        self._flushed = False

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        if self.max_bytes is not None and self.size + n > self.max_bytes:
            raise ImageTooLarge(f"image is larger than the limit of {self.max_bytes:,} bytes (--max-image-bytes)")
        self._hash.update(data)
        self.size += n
        if self._kept is not None and self.size <= KEEP_BYTES:
            self._kept.append(bytes(data))
            if self._flushed:
                self._write(data)
            return n
        if self._kept is not None:  # past KEEP_BYTES: what was held goes to disk first
            if not self._flushed:
                self._write(b"".join(self._kept))
            self._kept = None
        self._write(data)
        return n

    def _write(self, data: Any) -> None:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[write_fd(self._fd, view):]
        except OSError as e:
            self.failed = store_write_error(e, self._where)
            raise self.failed from None

    def writable(self) -> bool:
        return True

    def reset(self) -> None:
        """Start the image over (a download retried from the start writes straight in here)."""
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
        except OSError as e:
            self.failed = store_write_error(e, self._where)
            raise self.failed from None
        self._hash = hashlib.sha256()
        self.size = 0
        self._kept = []
        self._flushed = False

    def flush(self) -> None:
        if self._kept is not None and not self._flushed:
            self._write(b"".join(self._kept))
        self._flushed = True

    def close(self) -> None:
        """Close the file; a failure (a full disk met on close, on some filesystems) is the store's."""
        try:
            os.close(self._fd)
        except OSError as e:
            self.failed = self.failed or store_write_error(e, self._where)

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def kept(self) -> bytes | None:
        """Every byte written, if no more than ``KEEP_BYTES``; else None (read the file)."""
        return None if self._kept is None else b"".join(self._kept)


_PID = os.getpid()
_TEMP_NUMBERS = itertools.count()


def _forked() -> None:
    global _PID
    _PID = os.getpid()


if hasattr(os, "register_at_fork"):  # POSIX: a forked child counts under its own pid
    os.register_at_fork(after_in_child=_forked)


_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)


def create_temp(folder: str | os.PathLike[str]) -> tuple[int, str]:
    """A new empty file in ``folder``, named ``<pid>-<n>`` (``Store.clean_tmp`` reads the pid).

    Not ``tempfile.mkstemp``: that asks the kernel for the pid and draws a random name for
    every file. Here the pid is known and the number counts up; ``O_EXCL`` still refuses an
    existing name (one left by an earlier process of the same pid), and the next number is tried.
    """
    while True:
        path = os.path.join(folder, f"{_PID}-{next(_TEMP_NUMBERS)}")
        try:
            return os.open(path, _TEMP_FLAGS, 0o600), path
        except FileExistsError:
            continue


def process_alive(pid: int) -> bool:
    """Whether the process that named a temp file still runs: not if gone, nor if a zombie.

    A killed pull's fetch workers are zombies until someone reaps them, and in a container
    whose first process reaps nothing they stay so: their temp files must still be removable.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):  # no /proc (not Linux): the signal test's answer stands
        return True
