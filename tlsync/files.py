"""Opening a file an export names: regular files only, decided without blocking.

``open()`` on a FIFO (named pipe) waits for a writer that never comes, so a ``mkfifo x.jpg``
in an export would hang a pull forever; a character device (``/dev/zero`` behind a symlink)
never ends; a directory or socket fails with a confusing error. Every file a source reads
(images, labels, annotation JSON/XML/YAML, zips, the plugins' inputs) is opened here:
``os.open`` with ``O_NONBLOCK`` returns at once whatever the file is, ``fstat`` on that
descriptor says what it really is (no race with a rename between a check and the open),
and anything but a regular file is refused with a one-line ``NotRegularFile`` naming it,
which the sources report as that item's bad input (or a counted skip under ``--on-error skip``).
"""

from __future__ import annotations

import hashlib
import os
import stat
from typing import IO, Any

from .errors import SourceError

_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link"}
_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


class NotRegularFile(SourceError):
    """A path that names a FIFO, socket, device or folder where a file was expected."""

    def __init__(self, path: str, kind: str):
        super().__init__(f"{path}: is {kind}, not a regular file; refused")
        self.path, self.kind = path, kind


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO (named pipe)")."""
    return _KINDS.get(stat.S_IFMT(mode), f"a special file (mode {stat.S_IFMT(mode):o})")


def open_fd(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of ``path``, only if it is a regular file (never blocks).

    Raises ``NotRegularFile`` for anything else, and ``OSError`` (``FileNotFoundError``...)
    as ``open`` would, so callers keep their own wording for a missing file.
    """
    fd = os.open(path, _FLAGS)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(os.fspath(path), kind_of(st.st_mode))
        if _FLAGS & getattr(os, "O_NONBLOCK", 0) and hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)  # a no-op for regular files, but leaves no surprise for later reads
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path: str | os.PathLike[str], buffering: int = -1) -> IO[bytes]:
    """``open(path, "rb")`` for a regular file; ``NotRegularFile`` for anything else."""
    return os.fdopen(open_fd(path), "rb", buffering=buffering)


def read_bytes(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The whole of a regular file (``Path.read_bytes``), refusing one larger than ``limit``."""
    with open_regular(path) as f:
        if limit is None:
            return f.read()
        data = f.read(limit + 1)
    if len(data) > limit:
        raise SourceError(f"{os.fspath(path)}: larger than {limit:,} bytes; refused")
    return data


def read_text(path: str | os.PathLike[str], encoding: str = "utf-8", limit: int | None = None) -> str:
    """``Path.read_text`` for a regular file (``UnicodeDecodeError`` as it would raise)."""
    return read_bytes(path, limit).decode(encoding)


def why(e: Any) -> str:
    """An open/read error in a few words: ours as is, the OS's by its ``strerror``."""
    if isinstance(e, NotRegularFile):
        return f"it is {e.kind}, not a regular file"
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def check_regular(path: str | os.PathLike[str]) -> None:
    """Refuse ``path`` unless it is a regular file (for readers that take a name, like ``zipfile``)."""
    os.close(open_fd(path))


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 of a regular file ('unreadable: ...' in place of one it cannot read)."""
    try:
        digest = hashlib.sha256()
        with open_regular(path) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()
    except (OSError, SourceError) as e:
        return f"unreadable: {getattr(e, 'strerror', None) or e}"
