"""Fetch worker processes: a big pull's plain image downloads spread over more than one core.

A pull's fetch threads share one GIL, and each small image costs about half a millisecond
of CPU under it: one process tops out near 2,000 images a second however fast the network
(BENCHMARKS.md, "loopback"). Once a pull has fetched ``$TLSYNC_FETCH_PROCESSES_AFTER``
images (1,000) on its threads, the rest of its misses go to ``$TLSYNC_FETCH_PROCESSES``
worker processes (``tlsync.fetch_worker``; by default one per core, at most 4, none on one
core), started meanwhile so the pull never waits for them.

Only what a worker can do exactly as the pull's process would is handed over: an item whose
source fetches with the default ``Source.fetch`` and whose URL its ``HttpClient`` sends as a
plain GET (no auth, proxy, cookies, client certificate or test double: ``http_direct``).
Everything else stays on the threads. Each result comes back on a reader thread, which does
what a fetch thread does after its download: the image joins the durability batch and its
fetch-cache row is queued (``Fetcher.stored``). A worker that dies mid-pull is not an error
of the items it held: they are fetched again on the threads, and no more go to workers.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any, Protocol, cast

import orjson

from .errors import TlsyncError
from .fetch_worker import http_settings
from .fetcher import Fetcher, FetchFailed
from .format import Item
from .http import HttpClient
from .sink import StoreWriteError
from .sources import Source

PROCESSES_ENV = "TLSYNC_FETCH_PROCESSES"
AFTER_ENV = "TLSYNC_FETCH_PROCESSES_AFTER"
DEFAULT_AFTER = 1000  # a pull smaller than this never pays a worker's start (about 0.3 s of CPU)
MAX_DEFAULT_PROCESSES = 4
KEEP_THREADS = 8  # the pull's own fetch threads left once workers take over (other items, a worker's jobs if it dies)
STOP_SECONDS = 10.0  # how long a worker may take to finish after its stdin closes


def _env_count(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise TlsyncError(f"{name}={value!r}: give a whole number (0 turns fetch worker processes off)")
    return int(value)


def process_count() -> int:
    """``$TLSYNC_FETCH_PROCESSES``, else one per core this process may use, at most 4 (none on one core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return _env_count(PROCESSES_ENV, min(MAX_DEFAULT_PROCESSES, cores) if cores > 1 else 0)


def _client(source: Source) -> HttpClient | None:
    """The source's client, if its images are fetched by ``Source.fetch`` on a client a worker can copy."""
    if type(source).fetch is not Source.fetch or not sys.executable:
        return None
    http = source.http
    return http if type(http) is HttpClient and http.sleep is time.sleep else None


class ThreadPool(Protocol):
    """The pull's own fetch threads (``fetcher._Workers``)."""

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future: ...

    def shrink(self, keep: int) -> None: ...


class _Worker:
    """One worker process, the jobs it holds, and the thread that reads its answers."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.pending: dict[int, tuple[Future, Item]] = {}
        self.lock = threading.Lock()
        self.ready = False
        self.gone = False
        self.reader: threading.Thread | None = None


class FetchProcesses:
    """Hands a pull's plain GETs to worker processes once the pull is big enough (see the module's docstring)."""

    def __init__(self, fetcher: Fetcher, threads: int, pool: ThreadPool):
        self.fetcher = fetcher
        self.threads = threads  # the pull's concurrency, shared among the workers
        self.pool = pool
        self.http = _client(fetcher.source)
        self.count = process_count() if self.http is not None else 0
        self.after = _env_count(AFTER_ENV, DEFAULT_AFTER)
        self.workers: list[_Worker] = []
        self.misses = 0
        self._seq = itertools.count()
        self._closing = False
        self._shrunk = False
        self._lock = threading.Lock()

    def takes(self, item: Item) -> bool:
        """Whether ``item``, a cache miss, goes to a worker; they start at the ``after``-th miss a worker could take
        (local files never start them)."""
        uri = item.image.uri
        if (self.http is None or self.count == 0 or not uri.startswith(("http://", "https://"))
                or not self.http.sends_directly(uri)):
            return False
        self.misses += 1
        if not self.workers and self.misses >= self.after:
            self._start()
        return any(w.ready and not w.gone for w in self.workers)

    def submit(self, item: Item) -> Future:
        future: Future = Future()
        worker = min((w for w in self.workers if w.ready and not w.gone), key=lambda w: len(w.pending), default=None)
        seq = next(self._seq)
        taken = False
        if worker is not None:
            with worker.lock:
                if taken := not worker.gone:
                    worker.pending[seq] = (future, item)
        if taken:  # if sending fails, the worker is gone: its reader hands this job to the threads with the rest
            self._send(cast(_Worker, worker), [seq, item.image.uri, item.id])
        else:
            self._chain(self.pool.submit(self.fetcher.fetch, item), future)
        return future

    def _send(self, worker: _Worker, job: Any) -> bool:
        data = memoryview(orjson.dumps(job) + b"\n")
        stdin = cast(IO[bytes], worker.proc.stdin)
        try:
            while data:
                data = data[os.write(stdin.fileno(), data):]
        except OSError:  # the worker is gone; its reader hands what it held to the threads
            return False
        return True

    def _start(self) -> None:
        """Start the workers (from this, the pull's main thread: each dies with the thread that started it)."""
        import tlsync

        env = dict(os.environ)
        root = str(Path(tlsync.__file__).resolve().parent.parent)  # the same tlsync, installed or not
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        limits = self.fetcher.limits
        settings = {"home": str(self.fetcher.store.home), "parent": os.getpid(), "source": self.fetcher.source.name,
                    "threads": max(1, -(-self.threads // self.count)), "max_bytes": limits.max_bytes,
                    "deadline": limits.deadline, "http": http_settings(cast(HttpClient, self.http))}
        for _ in range(self.count):
            try:
                proc = subprocess.Popen([sys.executable, "-m", "tlsync.fetch_worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
            except OSError:  # no process to be had (limits): the threads do it all
                break
            worker = _Worker(proc)
            self.workers.append(worker)
            if not self._send(worker, settings):
                worker.gone = True
                continue
            worker.reader = threading.Thread(target=self._read, args=(worker,), name="tlsync-fetch-worker",
                                             daemon=True)
            worker.reader.start()

    def _read(self, worker: _Worker) -> None:
        """Answers, as they come; at the end of the stream, the worker's remaining jobs go to the threads."""
        stdout = cast(IO[bytes], worker.proc.stdout)
        try:
            if b"ready" in stdout.readline():
                worker.ready = True
                with self._lock:
                    first, self._shrunk = not self._shrunk, True
                if first:  # the workers' connections replace most of the threads'
                    self.pool.shrink(KEEP_THREADS)
                for line in stdout:
                    seq, kind, *rest = orjson.loads(line)
                    with worker.lock:
                        future, item = worker.pending.pop(seq)
                    try:
                        self._answer(future, item, kind, rest)
                    except Exception as e:  # a bug here must reach the pull, not leave it waiting forever
                        if not future.done():
                            future.set_exception(e)
        except (OSError, ValueError, KeyError):  # a garbled line: treat the worker as gone
            pass
        with worker.lock:
            worker.gone = True
            left, worker.pending = list(worker.pending.values()), {}
        for future, item in left:
            if self._closing:
                future.cancel()
            else:
                self._chain(self.pool.submit(self.fetcher.fetch, item), future)

    def _answer(self, future: Future, item: Item, kind: str, rest: list[Any]) -> None:
        outcome: Any
        if kind == "ok":
            placed = (rest[0], rest[1], rest[2], rest[3])
            self.fetcher.store.adopt_image(placed[0])
            outcome = self.fetcher.stored(item, placed)
        elif kind == "failed":
            outcome = FetchFailed(rest[0], bool(rest[1]))
        elif kind == "store":
            outcome = StoreWriteError(rest[0])
        else:
            outcome = TlsyncError(rest[0])
        if future.done():  # cancelled: the pull has ended
            return
        if kind == "bug":
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    @staticmethod
    def _chain(inner: Future, outer: Future) -> None:
        def copy(done: Future) -> None:
            if done.cancelled():
                outer.cancel()
            elif (error := done.exception()) is not None:
                outer.set_exception(error)
            else:
                outer.set_result(done.result())

        inner.add_done_callback(copy)

    def close(self) -> None:
        """End the workers: at once if they still hold jobs (the pull failed), else once they finish."""
        self._closing = True
        for worker in self.workers:
            if worker.proc.stdin is not None:
                worker.proc.stdin.close()
            if worker.pending:
                worker.proc.kill()
        for worker in self.workers:
            try:
                worker.proc.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait()
            if worker.reader is not None:
                worker.reader.join()
            if worker.proc.stdout is not None:
                worker.proc.stdout.close()

