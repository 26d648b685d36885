"""A fetch worker process: downloads a pull's images into the store for the pull's own process.

One Python process fetches at most about 2,000 small images a second: each costs about half
a millisecond of CPU under its one GIL (the HTTP exchange, hashing, the image check, the
store's file calls), however many threads share it. A big pull therefore hands its plain
image GETs to a few of these processes (``tlsync.fetch_procs``) and uses more than one core.

The protocol is JSON lines on stdin and stdout:

- in: the settings (store home, threads, limits, the HTTP client's retry policy and headers),
  then one job per line, ``[seq, uri, item id]``;
- out: ``{"ready": pid}``, then one line per job: ``[seq, "ok", path, sha256, width, height]``,
  ``[seq, "failed", message, io]`` (a bad item), ``[seq, "store", message]`` (the store cannot
  be written: the pull ends) or ``[seq, "bug", message]``.

A worker only writes images to their content address (through its own temp files, named
after its pid, which ``Store.clean_tmp`` removes once it is gone). It records nothing: the
pull's process makes the images durable, fills the fetch cache and publishes. It ends when
its stdin closes, or with its parent (``PR_SET_PDEATHSIG`` on Linux): a kill -9 of the pull
leaves no worker running.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from .errors import TlsyncError
from .fetcher import Fetcher, FetchFailed, Limits
from .format import ImageRef, Item
from .http import HttpClient
from .images import preload
from .secrets import for_storage
from .sink import StoreWriteError
from .sources import PullContext, Source
from .store import Store

PR_SET_PDEATHSIG = 1


class Downloads(Source):
    """What the pull's source would do with an item: ``Source.fetch``'s GET, on this process's client."""

    name = "fetch-worker"  # set to the pull's source's name (messages name it)

    def __init__(self, http: HttpClient):
        self._http = http

    def items(self, ctx: PullContext, **options: Any) -> Iterator[Item]:
        """None: a worker is handed its items one by one, by the pull that listed them."""
        return iter(())


def http_settings(http: HttpClient) -> dict[str, Any]:
    """What a worker's client must share with the pull's: the retry policy, timeouts and headers."""
    return {"attempts": http.attempts, "backoff": http.backoff, "max_backoff": http.max_backoff,
            "timeout": list(http.timeout), "deadline": http.deadline, "headers": dict(http.session.headers)}


def make_fetcher(settings: dict[str, Any]) -> Fetcher:
    """The fetcher a worker runs, from the settings its parent sent."""
    h = settings["http"]
    http = HttpClient(attempts=h["attempts"], backoff=h["backoff"], max_backoff=h["max_backoff"],
                      timeout=tuple(h["timeout"]), deadline=h["deadline"])
    http.session.headers.clear()
    http.session.headers.update(h["headers"])
    limits = Limits(settings["max_bytes"], settings["deadline"])
    Downloads.name = settings["source"]
    return Fetcher(Store(Path(settings["home"])), Downloads(http), limits)


def run_job(fetcher: Fetcher, job: list[Any]) -> list[Any]:
    """One job's answer line. Nothing raised escapes: a worker that died would cost its parent the other jobs."""
    seq, uri, item_id = job
    try:
        placed = fetcher.fetch_image(Item(item_id, ImageRef(uri), []))
    except Exception as e:
        return [seq, "bug", for_storage(f"item '{item_id}': fetch worker: {type(e).__name__}: {e}")]
    if isinstance(placed, StoreWriteError):
        return [seq, "store", str(placed)]
    if isinstance(placed, TlsyncError):
        return [seq, "failed", str(placed), isinstance(placed, FetchFailed) and placed.io]
    return [seq, "ok", *placed]


class _Output:
    """Answer lines to the parent: whichever fetch thread finds no write in progress writes them all.

    A lock around one write per answer made fetch threads queue behind each other, and a
    writer thread woken for each answer cost more CPU than the write. Here an answer is
    appended to a list, and the thread that found nobody writing writes what has gathered,
    as many lines per system call as arrived meanwhile. A parent gone (the pipe closed)
    means this worker is done.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lines: list[bytes] = []
        self._writing = False

    def send(self, message: Any) -> None:
        line = orjson.dumps(message) + b"\n"
        with self._lock:
            self._lines.append(line)
            if self._writing:
                return
            self._writing = True
        while True:
            with self._lock:
                lines, self._lines = self._lines, []
                if not lines:
                    self._writing = False
                    return
            data = memoryview(b"".join(lines))
            try:
                while data:
                    data = data[os.write(1, data):]
            except OSError:  # the parent closed the pipe: it has ended (or was killed)
                os._exit(0)


def _die_with_parent(parent: int) -> None:
    """Ask Linux to kill this process when the thread that started it ends (the pull's main thread)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError, TypeError):
        return  # not Linux: a closed stdin ends the worker
    if os.getppid() != parent:  # the parent ended before the request took effect
        os._exit(0)


def _work(fetcher: Fetcher, jobs: queue.SimpleQueue, out: _Output) -> None:
    while (job := jobs.get()) is not None:
        out.send(run_job(fetcher, job))


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    stdin = sys.stdin.buffer
    settings = orjson.loads(stdin.readline())
    _die_with_parent(settings["parent"])
    fetcher = make_fetcher(settings)
    out = _Output()
    jobs: queue.SimpleQueue[list[Any] | None] = queue.SimpleQueue()
    threads = [threading.Thread(target=_work, args=(fetcher, jobs, out), daemon=True)
               for _ in range(settings["threads"])]
    for thread in threads:
        thread.start()
    preload()
    out.send({"ready": os.getpid()})
    for line in stdin:
        jobs.put(orjson.loads(line))
    for _ in threads:
        jobs.put(None)
    for thread in threads:
        thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
