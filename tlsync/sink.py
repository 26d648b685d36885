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
from typing import Any, BinaryIO

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


class ImageSink:
    """A write-only file for one image: capped, hashed, and sure about disk errors."""

    def __init__(self, f: BinaryIO, where: object, max_bytes: int | None = None, deadline: float | None = None):
        self._f = f
        self._where = where
        self._hash = hashlib.sha256()
        self.max_bytes = max_bytes
        self.deadline = deadline
        self.size = 0
        self.failed: StoreWriteError | None = None
        # The bytes too, while they are few: the store checks a small image in memory rather
        # than opening the file it just wrote (0.1 ms of CPU per image in a big pull). At most
        # KEEP_BYTES per fetch thread: 64 MB at the default 64 threads.
        self._kept: list[bytes] | None = []

    def write(self, data: Any) -> int:
        n = memoryview(data).nbytes
        if self.max_bytes is not None and self.size + n > self.max_bytes:
            raise ImageTooLarge(f"image is larger than the limit of {self.max_bytes:,} bytes (--max-image-bytes)")
        try:
            self._f.write(data)
        except OSError as e:
            self.failed = store_write_error(e, self._where)
            raise self.failed from None
        self._hash.update(data)
        self.size += n
        if self._kept is not None and self.size <= KEEP_BYTES:
            self._kept.append(bytes(data))
        else:
            self._kept = None
        return n

    def writable(self) -> bool:
        return True

    def reset(self) -> None:
        """Start the image over (a download retried from the start writes straight in here)."""
        try:
            self._f.seek(0)
            self._f.truncate()
        except OSError as e:
            self.failed = store_write_error(e, self._where)
            raise self.failed from None
        self._hash = hashlib.sha256()
        self.size = 0
        self._kept = []

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            self.failed = store_write_error(e, self._where)
            raise self.failed from None

    def sha256(self) -> str:
        return self._hash.hexdigest()

    def kept(self) -> bytes | None:
        """Every byte written, if no more than ``KEEP_BYTES``; else None (read the file)."""
        return None if self._kept is None else b"".join(self._kept)
