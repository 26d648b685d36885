"""The fetch cache under threads and in-process pulls: a corrupt file met by two threads at once is
set aside once, and a pull leaves no connection behind."""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from test_store_failures import coco_folder

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
    cache.close()
    if Path("/proc/self/fd").is_dir():  # the connections that met the corrupt file were closed too, not left
        assert _open_cache_files(tmp_path) == []  # to the garbage collector (see the test below)


def _open_cache_files(under: Path) -> list[str]:
    """This process's open files under ``under`` that belong to a fetch cache."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed since the listing
        if target.startswith(str(under)) and "fetch-cache.sqlite" in target:
            names.append(target)
    return names


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to list open files")
def test_a_pull_closes_the_fetch_cache_when_it_ends(tmp_path: Path, run_cli):
    """A connection left for the garbage collector deletes ``fetch-cache.sqlite-wal`` by name
    whenever it is collected. After a rebuild that name is the new cache's: CI saw a pull
    that had just refilled a rebuilt cache answer "0 from cache" on the next pull. Programs
    that pull in-process (tests, notebooks, a service) hold no handle once a pull returns."""
    export = coco_folder(tmp_path / "export", n=2)
    result = run_cli("pull", "--source", "coco", "--path", export, "--dataset", "cells")
    assert result.exit_code == 0, result.stderr
    assert _open_cache_files(tmp_path) == []
    result = run_cli("pull", "--source", "coco", "--path", export, "--dataset", "cells", "--reread")
    assert "2 from cache" in result.stdout
    assert _open_cache_files(tmp_path) == []
