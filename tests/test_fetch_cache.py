"""The fetch cache under threads: a corrupt file met by two of them at once is set aside once."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from pathlib import Path

from tlsync.fetch_cache import FetchCache


def test_two_threads_meeting_a_corrupt_cache_set_it_aside_once(tmp_path: Path):
    """The fetch starter thread opens the lookup connection while a fetch thread may open the
    writer: both fail on the same corrupt file, and the second must not set aside the fresh
    cache the first one just started (or trip over the file that is no longer there)."""
    path = tmp_path / "fetch-cache.sqlite"
    path.write_bytes(b"this is not an sqlite database" * 100)
    cache = FetchCache(path)
    real_open = cache._open
    both_failing = threading.Barrier(2)
    calls = itertools.count()

    def open_together() -> sqlite3.Connection:
        if next(calls) < 2:  # the first two opens (one per thread) meet the corrupt file together
            both_failing.wait(timeout=10)
        return real_open()

    cache._open = open_together  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def run(call) -> None:
        try:
            call()
        except BaseException as e:  # noqa: BLE001  (the test reports any of them)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(cache.warm,)),
               threading.Thread(target=run, args=(lambda: cache.put("k", "images/ab/x.jpg", "ab", 4, 3),))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert len(list(tmp_path.glob("fetch-cache.sqlite.corrupt-*"))) == 1
    assert cache.get_many(["k"]) == {"k": ("images/ab/x.jpg", "ab", 4, 3)}
