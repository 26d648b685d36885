"""Fetching a pull's images into the store: cache hits at once, misses on worker threads.

Split from ``pull.py``, which decides what becomes a version; this module only turns items
into stored images, in the source's order, under the per-image limits.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import closing as _closing
from dataclasses import dataclass
from typing import Any, Protocol

from . import plugins
from .errors import PluginError, TlsyncError
from .format import Item
from .http_lean import close_thread_connections
from .images import preload
from .secrets import for_storage, stored_uri
from .sink import DEFAULT_DEADLINE, DEFAULT_MAX_IMAGE_BYTES, ImageTooLarge, StoreWriteError
from .sources import Source, local_path
from .store import IncompleteImage, Store

# Attempts at a remote image that arrives cut short (no Content-Length to tell). The HTTP
# client already retried connection errors; this catches a body that merely ends early.
INCOMPLETE_ATTEMPTS = 3
# Items looked up in the fetch cache at once: a small first batch, so that the first
# downloads start at once, then larger ones. Each look-up is a call into SQLite, which hands
# the GIL to the fetch threads, and the main thread then waits up to a switch interval
# (5 ms) to win it back: 64 at a time cost a 5,000-item pull 79 look-ups and 1.3 s of waiting.
FIRST_CACHE_BATCH, CACHE_BATCH = 64, 500
# Fetches in flight (or done, waiting for the ones before them) per fetch thread. Items leave
# in the source's order, so one slow fetch at the head stops new ones from starting once the
# window is full. At 4 per thread a 30,000-item loopback pull left the 2 cores idle 6-10% of
# the time: 2,589 items/s, against 3,056 at 16 (8: 2,837; 32: 2,910). The window holds items,
# not image bytes, so 1,024 of them cost little memory (peak RSS 148 and 149 MB).
WINDOW_PER_THREAD = 16


def _cache_key(item: Item) -> str:
    """Where the fetch cache looks an image up: the source's key, the URL, or path+size+mtime.

    ``os.path.abspath`` rather than ``Path.resolve``: this runs for every item of every
    re-pull, and resolving symlinks costs a stat per path component.
    """
    if item.image.cache_key:
        return item.image.cache_key
    path = local_path(item.image.uri)
    if path is None:
        uri = item.image.uri
        # A signed URL is a credential: the cache (a file in the store) keeps only its digest.
        return uri if stored_uri(uri) == uri else "url-sha256:" + hashlib.sha256(uri.encode()).hexdigest()
    where = os.path.abspath(path)
    try:
        st = os.stat(where)
    except OSError:
        return f"file:{where}"  # fetch will report the missing file
    return f"file:{where}:{st.st_size}:{st.st_mtime_ns}"


class FetchFailed(TlsyncError):
    """One item's image could not be fetched; ``io`` when the cause was reading or the
    network (worth trying again next pull) rather than the bytes themselves."""

    def __init__(self, message: str, io: bool):
        super().__init__(message)
        self.io = io


@dataclass
class Limits:
    """Per-image bounds every source's fetch runs under (``--max-image-bytes``, deadline)."""

    max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES
    deadline: float | None = DEFAULT_DEADLINE


class Fetcher:
    """Puts items' images into the store: cache hits at once, misses on worker threads."""

    def __init__(self, store: Store, source: Source, limits: Limits | None = None):
        self.store, self.source = store, source
        self.limits = limits or Limits()
        self.fetched = self.cached = 0

    def from_cache(self, items: list[Item]) -> list[Item | None]:
        """Each item with its cached image filled in, or None where it must be fetched.

        Runs on the calling thread, one lookup for a batch: a warm re-pull is all cache
        hits, and handing each one to a worker thread would cost more than the lookup.
        """
        keys = [_cache_key(item) for item in items]
        hits = self.store.cache_get_many(keys)
        found: list[Item | None] = []
        for item, key in zip(items, keys, strict=True):
            hit = hits.get(key)
            if hit:
                self.cached += 1
                _fill(item, *hit)
            found.append(item if hit else None)
        return found

    def fetch(self, item: Item) -> Item | TlsyncError:
        """Fetch one image into the store (on a worker thread).

        Errors are handed back to the main thread, which applies ``--on-error``; a
        ``StoreWriteError`` is handed back as it is, and ends the pull there.
        """
        placed = self.fetch_image(item)
        if isinstance(placed, TlsyncError):
            return placed
        self.store.adopt_image(placed[0])
        return self.stored(item, placed)

    def stored(self, item: Item, placed: tuple[str, str, int, int]) -> Item:
        """The item with its image placed in the store: filled in, and its cache row queued."""
        self.store.cache_put(_cache_key(item), *placed)
        _fill(item, *placed)
        return item

    def fetch_image(self, item: Item) -> tuple[str, str, int, int] | TlsyncError:
        """The image written to its place in the store (path, sha256, width, height), or the error.

        Not yet durable nor cached (``fetch`` does both): fetch worker processes run this
        (``tlsync.fetch_worker``), and the pull's own process makes their images durable.
        """
        remote = local_path(item.image.uri) is None
        for attempt in range(INCOMPLETE_ATTEMPTS if remote else 1):
            try:
                return self.store.write_image(lambda out: self._fetch(item, out), self.limits.max_bytes,
                                              self.limits.deadline)
            except StoreWriteError as e:
                return e
            except IncompleteImage as e:
                if attempt + 1 < INCOMPLETE_ATTEMPTS and remote:
                    continue
                return self._failed(item, e, io=remote)
            except _SourceFetchError as e:
                return self._failed(item, e.error, io=True)
            except TlsyncError as e:
                return self._failed(item, e, io=False)
        raise AssertionError("unreachable")

    @staticmethod
    def _failed(item: Item, e: TlsyncError, io: bool) -> FetchFailed:
        """The error as the user sees it, printed or stored: signed URLs lose their query."""
        msg = str(e)
        if not msg.startswith("item "):
            msg = f"item '{item.id}': image {item.image.uri}: {msg}"
        return FetchFailed(for_storage(msg), io)

    def _fetch(self, item: Item, out: Any) -> None:
        """The source's ``fetch``, with a bug in it blamed on the source by name."""
        try:
            self.source.fetch(item, out)
        except (StoreWriteError, ImageTooLarge):
            raise
        except TlsyncError as e:  # the source could not get the bytes: network, unreadable file
            raise _SourceFetchError(e) from None
        except Exception as e:
            raise PluginError(f"item '{item.id}': {plugins.describe_source(self.source.name)} "
                              f"fetch raised {type(e).__name__}: {e}") from e

    def _warm(self) -> None:
        """What the first look-up and the first image check need, got ready off the main thread."""
        self.store.cache_warm()
        preload()

    def in_order(self, items: Iterable[Item], workers: int,
                 processes: Callable[[Fetcher, int, Any], Helpers] | None = None) -> Iterator[Item | TlsyncError]:
        """Every item with its image in the store, in input order, misses fetched in parallel.

        A bounded window of pending fetches keeps memory flat however long the source is.
        ``processes`` (``fetch_procs.FetchProcesses``, which the pull passes) may take misses
        off the threads; it is handed this fetcher, the concurrency and the thread pool.
        """
        with _Workers(workers, self._warm) as pool, _closing((processes or _NoHelpers)(self, workers, pool)) as procs:
            window: deque[Future | Item] = deque()

            def head_ready() -> bool:
                return bool(window) and (not isinstance(window[0], Future) or window[0].done())

            def pop() -> Item | TlsyncError:
                head = window.popleft()
                if not isinstance(head, Future):
                    return head
                result = head.result()
                self.fetched += not isinstance(result, TlsyncError)
                return result

            for batch in _batches(items, FIRST_CACHE_BATCH, CACHE_BATCH):
                for item, cached in zip(batch, self.from_cache(batch), strict=True):
                    if cached is not None:
                        window.append(cached)
                    else:
                        window.append(procs.submit(item) if procs.takes(item) else pool.submit(self.fetch, item))
                    while len(window) >= workers * WINDOW_PER_THREAD or head_ready():
                        yield pop()
            while window:
                yield pop()


class Helpers(Protocol):
    """What takes misses off the pull's threads (``fetch_procs.FetchProcesses``)."""

    def takes(self, item: Item) -> bool: ...

    def submit(self, item: Item) -> Future: ...

    def close(self) -> None: ...


class _NoHelpers:
    """Every miss on the threads."""

    def __init__(self, fetcher: Fetcher, threads: int, pool: Any):
        pass

    def takes(self, item: Item) -> bool:
        return False

    def submit(self, item: Item) -> Future:
        raise AssertionError("takes() said no")

    def close(self) -> None:
        pass


class _Workers:
    """A fixed set of fetch threads, started while the source reads its first items.

    ``ThreadPoolExecutor`` starts a thread per ``submit`` until it has ``max_workers``,
    and each start waits for the new thread to win the GIL from the ones already
    downloading: with 64 threads that put up to a switch interval (5 ms) per thread
    between the first image request and the 64th. Here one starter thread starts them
    all on entry, while the main thread waits for the source's first page (a network
    round trip), and ``submit`` never waits for a thread: jobs queue until one is free.
    The starter then runs ``warm`` (what the first look-up and the first image check
    need), still ahead of the first image. On exit, fetches not yet begun are cancelled and the threads joined.
    """

    def __init__(self, workers: int, warm: Callable[[], None] | None = None):
        self.workers = workers
        self._warm = warm
        self._jobs: queue.SimpleQueue[tuple[Future, Callable[[Any], Any], Any] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._work, name=f"tlsync-fetch_{n}", daemon=True)
                         for n in range(workers)]
        self._starter = threading.Thread(target=self._start, name="tlsync-fetch-start", daemon=True)

    def _start(self) -> None:
        try:
            for thread in self._threads:
                thread.start()
        except RuntimeError:  # the OS would start no more threads: those running, and this one, share the work
            self._work()
            return
        if self._warm is not None:
            try:
                self._warm()
            except Exception:  # only a head start: the fetch that needs it meets the same error and reports it
                pass

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Future:
        future: Future = Future()
        self._jobs.put((future, fn, arg))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, arg = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(arg))
            except BaseException as e:  # handed to the main thread, as ThreadPoolExecutor does
                future.set_exception(e)
        close_thread_connections()

    def shrink(self, keep: int) -> None:
        """Let all but ``keep`` threads end once the jobs queued so far are done (fetch worker processes took
        over); each one's keep-alive connections close with it rather than sit idle on the server."""
        for _ in range(max(0, self.workers - keep)):
            self._jobs.put(None)

    def __enter__(self) -> _Workers:
        self._starter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        while True:  # cancel what no thread has begun; running fetches finish
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
        for _ in range(len(self._threads) + 1):  # one each, and one for the starter if it had to work
            self._jobs.put(None)
        self._starter.join()
        for thread in self._threads:
            if thread.ident is not None:
                thread.join()


class _SourceFetchError(Exception):
    """Carries a source's fetch error past ``add_image`` so the fetcher can tell it apart."""

    def __init__(self, error: TlsyncError):
        super().__init__(str(error))
        self.error = error


def _batches(items: Iterable[Item], first: int, size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == first:
            yield batch
            batch, first = [], size
    if batch:
        yield batch


def _fill(item: Item, path: str, sha256: str, width: int, height: int) -> None:
    item.image.path, item.image.sha256, item.image.width, item.image.height = path, sha256, width, height
