"""Making a pull's images durable in batches, and only then recording them in the fetch cache.

The promise stays: no version is published before the bytes of every image it names are on
disk, and no fetch-cache entry points at an image that a power cut could still take away.
What changes is when the waiting happens. An ``fsync`` per image made each fetch thread
wait for the disk's journal, which also carries every other writer's data, so a pull's
speed followed the machine's writeback (1.5 s median for 200 images, against 0.8 s on
tmpfs). Here a placed image only joins a batch, which a background thread commits as a
group (``DurableBatch``), and which is always flushed before a version is published: one
``syncfs`` makes the group's files, folders and renames durable where Linux offers it (else
the files are fsynced together from a few threads, so the filesystem commits them in one or
two journal transactions rather than one each, then their folders), then the cache rows go
into SQLite in one transaction. (Starting each image's writeback early with
``sync_file_range`` was tried and measured slower under a concurrent writer: it can block
the fetch thread while the disk's queue is full.)
A killed pull loses at most the last batch's cache rows (those images are fetched again);
their bytes, never named by a published version or a cache row, are harmless.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

from .atomic import fsync_dir
from .sink import store_write_error

IDLE_SECONDS = 1.0  # the committing thread ends after this long with nothing to do
FSYNC_THREADS = 16  # concurrent fsyncs share the filesystem's journal commits
# Images placed but not yet made durable, at most: past it a fetch thread waits for the round in
# progress. Where files are created faster than a slow disk syncs them, the backlog (and each
# round's futures) would otherwise grow with the pull.
MAX_PENDING = 4096

Row = tuple[str, str, str, int, int]  # fetch-cache key, path, sha256, width, height


class DurableBatch:
    """Images placed but not yet fsynced, and the cache rows that must wait for them.

    A background thread commits them as a group: it takes everything waiting, fsyncs it,
    records its rows, and takes whatever arrived meanwhile, so the disk writes start as soon
    as images land (as the old per-image fsync did) while the fetch threads never wait and
    the filesystem sees one group of fsyncs per round instead of one per image. ``flush``
    (before a publish) waits for the round in progress and commits the rest itself.
    """

    def __init__(self, record: Callable[[list[Row]], None]):
        self._record = record  # writes rows to the fetch cache, in one transaction
        # A plain lock around list appends only: every fetch thread takes it once per image,
        # and a Condition's Python-level notify under it made them queue behind each other.
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._room = threading.Condition(self._lock)  # notified when a round takes the backlog
        self._flushing = threading.Lock()  # one round at a time, the thread's or flush()'s
        self._files: list[Path] = []
        self._rows: list[Row] = []
        self._thread: threading.Thread | None = None
        self._sleeping = False
        self._error: BaseException | None = None  # a failed round's, raised by the next flush()
        self.flushes = 0

    def add_file(self, path: Path) -> None:
        with self._lock:
            while len(self._files) >= MAX_PENDING and self._thread is not None:
                self._room.wait(0.5)  # rare: only while the disk is behind
            self._files.append(path)
            wake, self._sleeping = self._sleeping, False
        self._nudge(wake)

    def add_row(self, row: Row) -> None:
        """Queue a cache row; it is written once its image (added before it) is durable."""
        with self._lock:
            self._rows.append(row)
            wake, self._sleeping = self._sleeping, False
        self._nudge(wake)

    def _nudge(self, wake: bool) -> None:
        """Wake the committing thread if it sleeps; start one if none runs."""
        if wake:
            self._wakeup.set()
        if self._thread is None:
            with self._lock:
                thread = None
                if self._thread is None:
                    thread = self._thread = threading.Thread(target=self._run, name="tlsync-durable", daemon=True)
            if thread is not None:
                thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                idle = not (self._files or self._rows)
                self._sleeping = idle
                if idle:
                    self._wakeup.clear()
            if idle and not self._wakeup.wait(IDLE_SECONDS):
                with self._lock:
                    if not (self._files or self._rows):
                        self._thread, self._sleeping = None, False  # idle: end; the next image starts another
                        return
            with self._flushing:
                try:
                    self._round()
                    failed = False
                except BaseException as e:  # kept for flush(), which the pull calls before publishing
                    self._error, failed = e, True
            if failed:  # rows kept for another try: not in a tight loop while the disk stays full
                time.sleep(IDLE_SECONDS)

    def flush(self) -> None:
        """Make every placed image durable, then record the waiting rows (before a publish, at a pull's end)."""
        with self._flushing:
            error, self._error = self._error, None
            if error is not None:
                raise error
            self._round()

    def close(self) -> None:
        """At a pull's end, failed or not: record what can still be recorded, once more.

        Unlike ``flush`` it does not stop at a background round's error (the pull reports its
        own): a round whose rows met a full disk kept them, and space freed since (the failed
        image's temp file) may take them now. Errors here are not raised: nothing depends on them.
        """
        with self._flushing:
            self._error = None
            try:
                self._round()
            except Exception:
                pass

    def _round(self) -> None:
        with self._lock:
            files, rows, self._files, self._rows = self._files, self._rows, [], []
            self._room.notify_all()
        if files:
            sync_files(files)
        if rows:
            try:
                self._record(rows)
            except BaseException:  # their images are durable: the next round (or ``close``) tries again
                with self._lock:
                    self._rows[:0] = rows
                raise
        self.flushes += bool(files or rows)


def _load_syncfs() -> Callable[[int], int] | None:
    """Linux's ``syncfs(2)``, where it reports writeback errors (kernel 5.8 and later), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        major, minor = (int(part) for part in os.uname().release.split(".")[:2])
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (ValueError, OSError, AttributeError):
        return None
    if (major, minor) < (5, 8):  # before 5.8 syncfs returned 0 even when writing back had failed
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return cast(Callable[[int], int], function)


_SYNCFS = _load_syncfs()


def _syncfs(folders: list[Path]) -> bool:
    """Make everything on the filesystem holding ``folders`` durable in one call, if they share one.

    A file or folder fsynced one by one costs three system calls and a task for the fsync
    threads, each handing the GIL around a pull's fetch threads: 0.1-0.2 ms of CPU per image.
    syncfs commits the files, their folders and their renames together. False: do it file by file.
    """
    if _SYNCFS is None:
        return False
    try:
        devices = {os.stat(folder).st_dev for folder in folders}
        fd = os.open(folders[0], os.O_RDONLY)
    except OSError:
        return False  # a folder removed meanwhile: the file-by-file path skips what is gone
    try:
        if len(devices) > 1:
            return False
        if _SYNCFS(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))
        return True
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # removed since (a version deleted meanwhile): nothing of it to make durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _fsync_pool() -> ThreadPoolExecutor:
    """The fsync threads, made once per process: a pool per round started up to 16 threads for
    every round, hundreds a second in a big pull, each start waiting for the GIL."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(FSYNC_THREADS, thread_name_prefix="tlsync-fsync")
        return _pool


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of its parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def sync_files(files: list[Path]) -> None:
    """Make ``files`` and their folders durable: one ``syncfs`` for several where it can (``_syncfs``),
    else fsync each file, then each folder holding them once, from up to ``FSYNC_THREADS`` threads at once.

    The folders too: one after another, each would wait for a journal commit of its own,
    since the other fetch threads keep adding images to the same 256 folders meanwhile
    (a 200-image pull has ~180 of them); concurrent fsyncs share their commits.
    """
    unique = list(dict.fromkeys(files))
    folders = list(dict.fromkeys(path.parent for path in unique))
    try:
        if len(unique) > 1 and _syncfs(folders):
            return
        if len(unique) == 1:
            _fsync_file(unique[0])
            fsync_dir(folders[0])
            return
        pool = _fsync_pool()
        for start in range(0, len(unique), MAX_PENDING):  # a future per file: a bounded number at once
            list(pool.map(_fsync_file, unique[start:start + MAX_PENDING]))
        list(pool.map(fsync_dir, folders))
    except OSError as e:
        raise store_write_error(e, unique[0].parent) from None
