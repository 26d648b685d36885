"""Images made durable in batches: a kill -9 at any moment leaves the last version and the fetch cache sound.

Images are no longer fsynced one by one (``tlsync.durable``); these tests hold the batch to
the old promise: a version is published only after every image it names is fsynced, a
fetch-cache row only ever names a whole image in the store, and a pull killed anywhere,
before, during or after its publish, leaves the previous version as it was.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fake_nucleus import FakeNucleus, serving_slice

from tlsync.store import Store

KEY = "nucleus_live_durable_0123456789"


@pytest.fixture
def nucleus(monkeypatch: pytest.MonkeyPatch):
    with serving_slice(monkeypatch, KEY, 10, "durable") as fake:
        yield fake


ARGS = ["pull", "--source", "nucleus", "--slice", "slc_1", "--dataset", "d", "--page-size", "10"]


def assert_cache_consistent(store: Store) -> int:
    """Every fetch-cache row names an image that is in the store, whole, under its own hash."""
    with sqlite3.connect(store.home / "fetch-cache.sqlite") as db:
        rows = db.execute("SELECT key, path, sha256 FROM fetched").fetchall()
    for key, path, sha in rows:
        data = (store.home / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha == Path(path).stem, key
    return len(rows)


def test_a_pull_killed_at_any_moment_leaves_the_last_version_and_the_cache_sound(nucleus: FakeNucleus, run_cli: Any,
                                                                                  store: Store) -> None:
    assert run_cli(*ARGS).exit_code == 0
    before = store.open("d@1")
    images_before = {item.image.sha256: store.home / str(item.image.path) for item in before.items()}
    nucleus.server.latency = 0.02
    started = time.monotonic()
    full = subprocess.run([sys.executable, "-m", "tlsync", *ARGS, "--reread"], env=dict(os.environ),
                          capture_output=True, text=True, timeout=120)
    assert full.returncode == 0, full.stderr
    duration = time.monotonic() - started

    for round_ in range(8):
        nucleus.add_items("ds_1", 15, prefix=f"late{round_}", slice_id="slc_1")
        child = subprocess.Popen([sys.executable, "-m", "tlsync", *ARGS, "--concurrency", "4"], env=dict(os.environ),
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(duration * (0.15 + 0.15 * round_))  # from start-up to past the publish
        child.send_signal(signal.SIGKILL)
        child.wait()

        versions = store.versions("d")
        assert versions[0] == 1 and store.open("d@1").content_hash == before.content_hash
        for sha, path in images_before.items():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
        for version in versions:  # a version the kill came too late to stop is whole
            assert run_cli("datasets", "verify", f"d@{version}").exit_code == 0
        assert_cache_consistent(store)
        for path in store.images_dir.glob("??/*"):  # only whole images under real names
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem

    nucleus.server.latency = 0
    final = run_cli(*ARGS)
    assert final.exit_code == 0, final.stderr
    latest = store.open("d")
    assert latest.info["counts"]["items"] == 10 + 8 * 15
    assert run_cli("datasets", "verify", "d").exit_code == 0
    assert assert_cache_consistent(store) >= 10 + 8 * 15


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "file-by-file"])
def test_images_are_fsynced_in_batches_before_the_version_is_published(nucleus: FakeNucleus, run_cli: Any,
                                                                       store: Store, syncfs: bool,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every image file is made durable (its own fsync, or a syncfs of the store's filesystem after
    it was placed) before the rename that publishes the version naming it, and its fetch-cache row
    is written only after that."""
    from tlsync import durable, fetch_cache

    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_syncfs = os.fsync, os.replace, durable._SYNCFS

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def whole_filesystem(fd: int) -> int:
        events.append(("syncfs", os.readlink(f"/proc/self/fd/{fd}")))
        if real_syncfs is None:  # no syncfs(2) here (not Linux 5.8+): the whole-machine sync stands in
            os.sync()
            return 0
        return real_syncfs(fd)

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        events.append(("rename", str(dst)))
        real_replace(src, dst, **kw)

    real_put_many = fetch_cache.FetchCache.put_many

    def put_many(self: Any, rows: list[Any]) -> None:
        events.extend(("cache", str(store.home / row[1])) for row in rows)
        real_put_many(self, rows)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(durable, "_SYNCFS", whole_filesystem if syncfs else None)
    monkeypatch.setattr(fetch_cache.FetchCache, "put_many", put_many)
    assert run_cli(*ARGS).exit_code == 0
    publish = events.index(("rename", str(store.datasets_dir / "d" / "1")))
    for item in store.open("d").items():
        image = str(store.home / str(item.image.path))
        placed = events.index(("rename", image))
        synced = next(n for n, (kind, path) in enumerate(events) if (kind, path) == ("fsync", image)
                      or (kind == "syncfs" and n > placed))  # the one filesystem of the store
        assert synced < publish
        assert events.index(("cache", image)) > synced
    assert any(kind == "syncfs" for kind, _ in events) == syncfs


def test_images_waiting_for_their_fsync_are_bounded_however_fast_they_arrive(monkeypatch: pytest.MonkeyPatch,
                                                                           tmp_path: Path):
    """Where files are created faster than the disk fsyncs them, a fetch thread waits instead of the backlog
    growing with the pull; nothing is lost meanwhile."""
    import threading

    from tlsync import durable

    monkeypatch.setattr(durable, "MAX_PENDING", 8)
    started, gate, synced = threading.Event(), threading.Event(), []

    def slow_disk(files: list[Path], threads: int = 1) -> None:
        started.set()
        gate.wait(10)
        synced.extend(files)

    monkeypatch.setattr(durable, "sync_files", slow_disk)
    batch = durable.DurableBatch(lambda rows: None)
    batch.add_file(tmp_path / "0")
    assert started.wait(10), "the committing thread took the first image"
    for n in range(1, 9):
        batch.add_file(tmp_path / str(n))  # eight wait: the limit
    ninth = threading.Thread(target=batch.add_file, args=(tmp_path / "9",))
    ninth.start()
    ninth.join(0.5)
    assert ninth.is_alive(), "a ninth waiting image must wait for the round in progress"
    gate.set()
    ninth.join(10)
    assert not ninth.is_alive()
    batch.flush()
    assert sorted(int(p.name) for p in synced) == list(range(10))


def test_cache_rows_that_met_a_full_disk_are_recorded_at_the_end_once_there_is_room(tmp_path: Path):
    """The pull's own 'images fetched so far are cached' must hold when the fetch cache's first write
    met the full disk: the rows wait, and the pull's end records them once the failed image's
    temp file is gone."""
    import errno

    from tlsync import durable

    recorded: list[tuple] = []
    disk_full = [True]

    def record(rows: list) -> None:
        if disk_full[0]:
            raise OSError(errno.ENOSPC, "database or disk is full")
        recorded.extend(rows)

    image = tmp_path / "ab" / "image.png"
    image.parent.mkdir()
    image.write_bytes(b"png")
    batch = durable.DurableBatch(record)
    batch.add_file(image)
    batch.add_row(("key", "images/ab/image.png", "ab" * 32, 1, 1))
    with pytest.raises(OSError, match="disk is full"):
        batch.flush()  # a publish would stop here
    assert recorded == []
    disk_full[0] = False  # the failed image's temp file was removed
    batch.close()
    assert [row[0] for row in recorded] == ["key"]
