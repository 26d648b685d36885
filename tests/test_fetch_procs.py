"""A big pull's image downloads in fetch worker processes (``tlsync.fetch_procs``, ``tlsync.fetch_worker``).

Pulls run against the fake Nucleus on 127.0.0.1 with ``TLSYNC_FETCH_PROCESSES=2`` and a low
``TLSYNC_FETCH_PROCESSES_AFTER``, so that a small slice takes the path a 100,000-item one takes.
"""

from __future__ import annotations

import errno
import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fake_nucleus import serving_slice
from test_nucleus_e2e import KEY, assert_store_matches_server, finished_images, pull_args

from tlsync import fetch_procs, fetch_worker, sink
from tlsync.fetch_procs import FetchProcesses
from tlsync.fetcher import Fetcher, Limits
from tlsync.format import ImageRef, Item
from tlsync.http import HttpClient
from tlsync.sources import Source
from tlsync.store import Store
from tlsync.testing.server import Faults, Response


@pytest.fixture
def nucleus(monkeypatch: pytest.MonkeyPatch):
    """A fake Nucleus whose slice slc_1 holds 40 items; pulls use two fetch workers after 4 misses."""
    with serving_slice(monkeypatch, KEY, 40, "horses", "horses train") as fake:
        monkeypatch.setenv(fetch_procs.PROCESSES_ENV, "2")
        monkeypatch.setenv(fetch_procs.AFTER_ENV, "4")
        yield fake


@pytest.fixture
def answers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The kind of every answer a worker gave; the workers are waited for once started, so that every
    miss after the ``after``-th goes to them whatever the machine's load."""
    seen: list[str] = []
    start, answer = FetchProcesses._start, FetchProcesses._answer

    def started(self: FetchProcesses) -> None:
        start(self)
        ends = time.monotonic() + 60
        while not all(w.ready or w.gone for w in self.workers) and time.monotonic() < ends:
            time.sleep(0.01)

    def answered(self: FetchProcesses, future: Any, item: Item, kind: str, rest: list[Any]) -> None:
        seen.append(kind)
        answer(self, future, item, kind, rest)

    monkeypatch.setattr(FetchProcesses, "_start", started)
    monkeypatch.setattr(FetchProcesses, "_answer", answered)
    return seen


def test_a_big_pull_is_fetched_by_worker_processes(nucleus, run_cli, store, answers):
    result = run_cli(*pull_args())
    assert result.exit_code == 0, result.stderr
    assert "40 images fetched, 0 from cache" in result.stdout
    assert answers.count("ok") >= 30  # all but the first few misses and those already in flight
    assert_store_matches_server(store, nucleus, "horses@1", 40)
    assert len(finished_images(store)) == 40  # the workers' images are in the fetch cache
    assert sorted(nucleus.image_requests()) == sorted(nucleus.slices["slc_1"].ref_ids)

    nucleus.server.clear_log()
    again = run_cli(*pull_args())
    assert again.exit_code == 0 and nucleus.image_requests() == []


def test_workers_retry_and_decode_as_the_threads_do(nucleus, run_cli, store, answers):
    nucleus.server.faults = Faults(rate=0.3, kinds=("429", "503", "reset"), seed=3, paths="/images/")
    gzipped = nucleus.slices["slc_1"].ref_ids[20]
    nucleus.misbehave[gzipped] = lambda data, nth: Response(200, gzip.compress(data), {"Content-Encoding": "gzip"})
    result = run_cli(*pull_args())
    assert result.exit_code == 0, result.stderr
    assert answers.count("ok") >= 30
    assert_store_matches_server(store, nucleus, "horses@1", 40)


def test_bad_images_from_a_worker_are_bad_items_named_and_counted(nucleus, run_cli, store, answers):
    refs = nucleus.slices["slc_1"].ref_ids
    nucleus.misbehave[refs[30]] = lambda data, nth: Response(200, data[: len(data) // 2])  # always cut short
    nucleus.misbehave[refs[31]] = lambda data, nth: Response(200, b"<html>not an image</html>")
    nucleus.misbehave[refs[32]] = lambda data, nth: Response(404, b"gone")

    failed = run_cli(*pull_args())
    assert failed.exit_code == 1
    assert failed.stderr.count("\n") == 1 and f"item '{refs[30]}'" in failed.stderr
    assert "X-Amz-Signature" not in failed.stderr  # the signed URL lost its query
    assert store.versions("horses") == []
    assert "failed" in answers  # the worker's answer, not a thread's

    skipped = run_cli(*pull_args("--on-error", "skip"))
    assert skipped.exit_code == 0, skipped.stderr
    assert "skipped 3:" in skipped.stdout
    for ref, why in ((refs[30], "truncated PNG"), (refs[31], "not a readable image"), (refs[32], "HTTP 404")):
        assert any(f"item '{ref}'" in line and why in line for line in skipped.stdout.splitlines()), ref
    assert len(list(store.open("horses@1").items())) == 37


def test_a_worker_that_dies_mid_pull_hands_its_images_to_the_threads(nucleus, run_cli, store, monkeypatch,
                                                                     answers):
    nucleus.server.latency = 0.02
    send, jobs = FetchProcesses._send, []

    def kill_after_three_jobs(self: FetchProcesses, worker: Any, job: Any) -> bool:
        sent = send(self, worker, job)
        if isinstance(job, list):
            jobs.append(job)
            if len(jobs) == 3:  # the workers die holding jobs
                for each in self.workers:
                    each.proc.send_signal(signal.SIGKILL)
                    each.proc.wait()
        return sent

    monkeypatch.setattr(FetchProcesses, "_send", kill_after_three_jobs)
    monkeypatch.setenv(fetch_procs.AFTER_ENV, "0")
    result = run_cli(*pull_args("--concurrency", "8"))
    assert result.exit_code == 0, result.stderr
    # Jobs sent before the readers saw the workers die were handed to the threads, as was the rest.
    assert len(jobs) >= 3 and len(answers) <= 3
    assert_store_matches_server(store, nucleus, "horses@1", 40)
    assert len(finished_images(store)) == 40


def _workers_of(home: Path) -> list[int]:
    """Fetch worker processes still running for the store at ``home``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if b"tlsync.fetch_worker" in cmdline and f"TLSYNC_HOME={home}\0".encode() in environ:
            found.append(int(proc.name))
    return found


def test_kill_9_of_a_pull_ends_its_workers_and_keeps_the_last_version(nucleus, run_cli, store):
    assert run_cli(*pull_args()).exit_code == 0
    before = store.open("horses@1").content_hash
    added = nucleus.add_items("ds_1", 200, prefix="late", slice_id="slc_1")
    nucleus.server.latency = 0.05
    nucleus.server.clear_log()
    env = {**os.environ, fetch_procs.AFTER_ENV: "0"}
    child = subprocess.Popen([sys.executable, "-m", "tlsync", *pull_args("--concurrency", "4")], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ends = time.monotonic() + 60
    while (not _workers_of(store.home) or len(nucleus.image_requests()) < 40) and time.monotonic() < ends:
        time.sleep(0.01)
    assert _workers_of(store.home), "the pull started no fetch worker"
    child.send_signal(signal.SIGKILL)
    child.wait()
    ends = time.monotonic() + 10
    while _workers_of(store.home) and time.monotonic() < ends:
        time.sleep(0.05)
    assert _workers_of(store.home) == []

    assert store.versions("horses") == [1] and store.open("horses@1").content_hash == before
    nucleus.server.latency = 0
    rerun = run_cli(*pull_args())
    assert rerun.exit_code == 0, rerun.stderr
    assert not list((store.images_dir / ".tmp").iterdir())  # the workers' temp files too
    assert_store_matches_server(store, nucleus, "horses@2", 40 + len(added))


def test_a_failure_recording_a_workers_image_ends_the_pull_instead_of_hanging_it(nucleus, run_cli, store,
                                                                                 monkeypatch, answers):
    def broken(self: Store, rel: str) -> None:
        raise RuntimeError("recording failed")

    monkeypatch.setattr(Store, "adopt_image", broken)
    monkeypatch.setenv(fetch_procs.AFTER_ENV, "0")
    result = run_cli(*pull_args())
    assert result.exit_code != 0 and "ok" in answers
    assert "recording failed" in result.stderr and store.versions("horses") == []


# -- the worker's side, in this process --------------------------------------------------


def _worker_fetcher(home: Path) -> Fetcher:
    return fetch_worker.make_fetcher({"home": str(home), "source": "nucleus", "max_bytes": 1 << 20,
                                      "deadline": 30.0, "http": fetch_worker.http_settings(HttpClient(attempts=2))})


def test_a_full_disk_in_a_worker_is_the_stores_error_not_the_items(nucleus, tmp_path, monkeypatch):
    fetcher = _worker_fetcher(tmp_path)
    url = f"{nucleus.server.url}/images/ds_1/{nucleus.slices['slc_1'].ref_ids[0]}.png?X-Amz-Signature=abc"

    def full(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sink, "write_fd", full)
    seq, kind, message = fetch_worker.run_job(fetcher, [7, url, "img-0"])
    assert (seq, kind) == (7, "store")
    assert "cannot write to the store" in message and "ENOSPC" in message


def test_a_bug_in_a_worker_is_reported_with_the_url_scrubbed(tmp_path, monkeypatch):
    fetcher = _worker_fetcher(tmp_path)

    def broken(item: Item) -> None:
        raise RuntimeError(f"cannot handle {item.image.uri}")

    monkeypatch.setattr(fetcher, "fetch_image", broken)
    seq, kind, message = fetch_worker.run_job(fetcher, [1, "https://b.example/x.jpg?X-Amz-Signature=s3cr3t", "x"])
    assert (seq, kind) == (1, "bug")
    assert "RuntimeError" in message and "s3cr3t" not in message


def test_a_worker_answers_ok_with_the_stored_image(nucleus, tmp_path):
    ref = nucleus.slices["slc_1"].ref_ids[0]
    answer = fetch_worker.run_job(_worker_fetcher(tmp_path), [3, f"{nucleus.server.url}/images/ds_1/{ref}.png", ref])
    assert answer[:2] == [3, "ok"]
    path, sha256, width, height = answer[2:]
    assert (tmp_path / path).read_bytes() == nucleus.image_data(ref)
    assert sha256 == nucleus.image_sha256(ref) and (width, height) == nucleus.image_size


# -- which pulls use workers --------------------------------------------------------------


class _OwnFetch(Source):
    name = "own-fetch"

    def items(self, ctx: Any, **options: Any) -> Any:
        return iter(())

    def fetch(self, item: Item, out: Any) -> None:  # authenticated downloads, say
        out.write(b"")


class _Plain(_OwnFetch):
    name = "plain"
    fetch = Source.fetch  # type: ignore[assignment]


def test_only_plain_gets_of_the_default_fetch_go_to_workers(tmp_path, monkeypatch):
    monkeypatch.setenv(fetch_procs.PROCESSES_ENV, "2")
    monkeypatch.setenv(fetch_procs.AFTER_ENV, "1000000")  # never start: only the decision is tested
    store = Store(tmp_path)
    own = FetchProcesses(Fetcher(store, _OwnFetch(), Limits()), 8, pool=None)  # type: ignore[arg-type]
    assert own.http is None and not own.takes(Item("a", ImageRef("https://x.example/a.jpg")))

    plain = _Plain()
    procs = FetchProcesses(Fetcher(store, plain, Limits()), 8, pool=None)  # type: ignore[arg-type]
    assert procs.http is plain.http and procs.count == 2

    plain.http.session.auth = ("user", "pass")  # requests must send this one
    assert not plain.http.sends_directly("https://x.example/a.jpg")
    plain.http.session.auth = None
    assert plain.http.sends_directly("https://x.example/a.jpg")
    assert not plain.http.sends_directly("https://user:pw@x.example/a.jpg")


def test_a_big_pull_of_local_files_starts_no_worker(tmp_path, monkeypatch):
    monkeypatch.setenv(fetch_procs.PROCESSES_ENV, "2")
    monkeypatch.setenv(fetch_procs.AFTER_ENV, "0")
    procs = FetchProcesses(Fetcher(Store(tmp_path), _Plain(), Limits()), 8, pool=None)  # type: ignore[arg-type]
    assert not procs.takes(Item("a", ImageRef(str(tmp_path / "a.jpg"))))
    assert not procs.takes(Item("b", ImageRef(f"file://{tmp_path}/b.jpg")))
    assert procs.workers == [] and procs.misses == 0


def test_the_process_count_is_a_setting(monkeypatch):
    monkeypatch.setenv(fetch_procs.PROCESSES_ENV, "0")
    assert fetch_procs.process_count() == 0
    monkeypatch.setenv(fetch_procs.PROCESSES_ENV, "3")
    assert fetch_procs.process_count() == 3
    monkeypatch.delenv(fetch_procs.PROCESSES_ENV)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    assert fetch_procs.process_count() == (min(4, cores) if cores > 1 else 0)


def test_a_bad_process_count_is_one_line(nucleus, run_cli, monkeypatch):
    monkeypatch.setenv(fetch_procs.PROCESSES_ENV, "many")
    result = run_cli(*pull_args())
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: TLSYNC_FETCH_PROCESSES='many': give a whole number "
                                     "(0 turns fetch worker processes off)")
