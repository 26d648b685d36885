"""A hostile or broken server, driven through ``tlsync pull`` as a user would.

Each test builds one misbehaviour on the loopback fake Nucleus (or a bare loopback
server) and checks what the user sees: the pull finishes or stops with one clear line,
nothing is stored that should not be, and no key or signed URL is written anywhere.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import time
import zlib
from pathlib import Path

import pytest
from fake_nucleus import FakeNucleus

from tlsync.http import HttpClient
from tlsync.secrets import get_secret, redact
from tlsync.testing.server import LoopbackServer, Response

KEY = "nucleus_live_5c2e9f1a7b3d"
N = 6


@pytest.fixture
def nucleus(monkeypatch: pytest.MonkeyPatch):
    with FakeNucleus(api_key=KEY) as fake:
        fake.add_dataset("ds_1", "horses")
        fake.add_slice("slc_1", "ds_1", [])
        fake.add_items("ds_1", N, slice_id="slc_1")
        monkeypatch.setenv("NUCLEUS_API_KEY", KEY)
        monkeypatch.setenv("NUCLEUS_ENDPOINT", fake.endpoint)
        yield fake


def pull(run_cli, *extra: str):
    return run_cli("pull", "--source", "nucleus", "--slice", "slc_1", "--dataset", "horses", *extra)


def stored_text(home: Path) -> str:
    """Everything tlsync wrote about the dataset that people read or copy around."""
    folder = home / "datasets" / "horses"
    return "".join(p.read_text() for p in folder.rglob("*.json"))


# -- keys -----------------------------------------------------------------------------------

def test_a_key_with_a_control_character_is_refused_without_printing_it(nucleus, run_cli, monkeypatch):
    monkeypatch.setenv("NUCLEUS_API_KEY", "nucleus_live_5c2e\x1b[31m9f1a")
    result = pull(run_cli)
    assert result.exit_code == 1
    assert "NUCLEUS_API_KEY contains a control character (\\x1b)" in result.stderr
    assert "5c2e" not in result.stderr and "9f1a" not in result.stderr


def test_a_key_pasted_with_a_carriage_return_works_and_is_never_written(nucleus, run_cli, monkeypatch, isolated_home):
    monkeypatch.setenv("NUCLEUS_API_KEY", KEY + "\r\n")
    nucleus.misbehave[nucleus.slices["slc_1"].ref_ids[0]] = lambda data, nth: Response(404, b"gone")
    result = pull(run_cli, "--on-error", "skip")
    assert result.exit_code == 0, result.stderr
    assert "new version horses@1" in result.stdout
    everything = result.stdout + result.stderr + stored_text(isolated_home)
    for spelling in (KEY, repr(KEY + "\r")[1:-1], base64.b64encode(f"{KEY}:".encode()).decode()):
        assert spelling not in everything


def test_every_spelling_of_a_known_key_is_redacted(monkeypatch):
    monkeypatch.setenv("DEMO_API_KEY", "s3cr3t/key+value\r")
    key = get_secret("DEMO_API_KEY")
    assert key == "s3cr3t/key+value"
    for form in (key, "s3cr3t/key+value\\r", "s3cr3t%2Fkey%2Bvalue", base64.b64encode(b"s3cr3t/key+value:").decode(),
                 json.dumps(key)[1:-1]):
        assert "s3cr3t" not in redact(f"InvalidHeader: Authorization: Basic {form}!"), form


# -- what is stored -------------------------------------------------------------------------

def test_skip_reasons_are_stored_without_the_signed_query(nucleus, run_cli, isolated_home):
    bad = nucleus.slices["slc_1"].ref_ids[2]
    nucleus.misbehave[bad] = lambda data, nth: Response(403, b"AccessDenied")
    result = pull(run_cli, "--on-error", "skip")
    assert result.exit_code == 0, result.stderr
    info = json.loads((isolated_home / "datasets" / "horses" / "1" / "dataset.json").read_text())
    [reason] = info["skipped"]
    assert f"/images/ds_1/{bad}.png" in reason and "HTTP 403" in reason
    for text in (reason, stored_text(isolated_home), result.stdout):
        assert "X-Amz-Signature" not in text and "X-Amz-Expires" not in text
    failed = run_cli("pull", "--source", "nucleus", "--slice", "slc_1", "--dataset", "other")
    assert failed.exit_code == 1 and f"/images/ds_1/{bad}.png" in failed.stderr
    assert "X-Amz-Signature" not in failed.stderr, "the one-line error holds no signed query either"


# -- images that are not whole, or too big -----------------------------------------------------

def test_an_image_cut_short_without_content_length_is_retried(nucleus, run_cli, store):
    ref = nucleus.slices["slc_1"].ref_ids[1]
    nucleus.misbehave[ref] = lambda data, nth: Response(200, data, send_length=False,
                                                        cut_at=len(data) // 2 if nth == 1 else None)
    result = pull(run_cli)
    assert result.exit_code == 0, result.stderr
    [item] = [i for i in store.open("horses").items() if i.id == ref]
    assert item.image.sha256 == nucleus.image_sha256(ref)
    assert nucleus.image_requests().count(ref) == 2


def test_an_image_always_cut_short_is_a_counted_skip(nucleus, run_cli, store):
    ref = nucleus.slices["slc_1"].ref_ids[1]
    nucleus.misbehave[ref] = lambda data, nth: Response(200, data, send_length=False, cut_at=len(data) - 20)
    failed = pull(run_cli)
    assert failed.exit_code == 1
    assert f"item '{ref}'" in failed.stderr and "truncated PNG" in failed.stderr
    assert store.versions("horses") == []
    skipped = pull(run_cli, "--on-error", "skip")
    assert skipped.exit_code == 0, skipped.stderr
    assert "skipped 1:" in skipped.stdout and "truncated PNG" in skipped.stdout
    assert len(list(store.open("horses").items())) == N - 1


@pytest.mark.parametrize("send_length", [True, False], ids=["content-length", "no-content-length"])
def test_an_image_over_max_image_bytes_is_refused_without_reading_it_all(nucleus, run_cli, store, send_length):
    ref = nucleus.slices["slc_1"].ref_ids[0]
    nucleus.misbehave[ref] = lambda data, nth: Response(200, data + b"\0" * 200_000, send_length=send_length)
    result = pull(run_cli, "--on-error", "skip", "--max-image-bytes", "100KB")
    assert result.exit_code == 0, result.stderr
    assert "larger than the limit of 100,000 bytes (--max-image-bytes)" in result.stdout
    assert nucleus.image_requests().count(ref) == 1, "a body over the cap is not downloaded again"
    assert len(list(store.open("horses").items())) == N - 1
    assert not list((store.images_dir / ".tmp").iterdir())


@pytest.mark.parametrize("encoding, encode", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_a_compressed_body_is_stored_decoded(nucleus, run_cli, store, encoding, encode):
    ref = nucleus.slices["slc_1"].ref_ids[3]
    nucleus.misbehave[ref] = lambda data, nth: Response(200, encode(data), {"Content-Encoding": encoding})
    result = pull(run_cli)
    assert result.exit_code == 0, result.stderr
    [item] = [i for i in store.open("horses").items() if i.id == ref]
    stored = (store.home / item.image.path).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == item.image.sha256 == nucleus.image_sha256(ref)


def test_a_dripping_server_is_cut_off_at_the_download_deadline(nucleus, run_cli, store):
    ref = nucleus.slices["slc_1"].ref_ids[4]
    nucleus.misbehave[ref] = lambda data, nth: Response(200, data, drip=0.05)  # ~15 s for the whole image
    started = time.monotonic()
    result = pull(run_cli, "--on-error", "skip", "--download-timeout", "0.5")
    assert time.monotonic() - started < 6
    assert result.exit_code == 0, result.stderr
    assert "did not finish within 0.5s" in result.stdout
    assert len(list(store.open("horses").items())) == N - 1


# -- servers that would keep tlsync busy forever ------------------------------------------------

def test_an_export_page_that_repeats_its_token_ends_the_pull(nucleus, run_cli):
    rows = iter([nucleus.row("ds_1", item, 1)] for item in nucleus.datasets["ds_1"].items.values())
    nucleus.page_handler = lambda request: Response.json({"data": next(rows), "nextPageToken": "again"})
    result = pull(run_cli)
    assert result.exit_code == 1
    assert "repeated a nextPageToken it had already given" in result.stderr
    assert len(nucleus.server.requests("POST", "/v1/nucleus/slice/slc_1/exportForTrainingPage")) <= 3


def test_an_empty_page_with_a_token_ends_the_pull(nucleus, run_cli):
    nucleus.page_handler = lambda request: Response.json({"data": [], "nextPageToken": "more"})
    result = pull(run_cli)
    assert result.exit_code == 1
    assert "returned an empty page that still has a nextPageToken" in result.stderr
    assert len(nucleus.server.requests("POST", "/v1/nucleus/slice/slc_1/exportForTrainingPage")) <= 2


@pytest.mark.parametrize("value, expected", [("-1", 0.0), ("1e9", 120.0), ("0.25", 0.25)])
def test_retry_after_is_clamped(value, expected):
    sleeps: list[float] = []
    with LoopbackServer() as server:
        answers = iter([Response(429, b"", {"Retry-After": value}), Response.json({"ok": True})])
        server.route("GET", "/x")(lambda request: next(answers))
        assert HttpClient(sleep=sleeps.append).json("GET", server.url + "/x") == {"ok": True}
    assert sleeps == [expected]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_a_retry_after_that_is_not_a_finite_number_falls_back_to_backoff(value):
    sleeps: list[float] = []
    with LoopbackServer() as server:
        answers = iter([Response(503, b"", {"Retry-After": value}), Response.json({"ok": True})])
        server.route("GET", "/x")(lambda request: next(answers))
        assert HttpClient(sleep=sleeps.append, backoff=0.5).json("GET", server.url + "/x") == {"ok": True}
    assert len(sleeps) == 1 and 0.0 <= sleeps[0] <= 0.5


def test_a_pull_rides_through_429s_with_a_negative_retry_after(run_cli, monkeypatch, store):
    from tlsync.testing.server import Faults

    with FakeNucleus(api_key=KEY, faults=Faults(rate=0.5, kinds=("429",), retry_after="-1", seed=3)) as fake:
        fake.add_dataset("ds_1")
        fake.add_slice("slc_1", "ds_1", [])
        fake.add_items("ds_1", N, slice_id="slc_1")
        monkeypatch.setenv("NUCLEUS_API_KEY", KEY)
        monkeypatch.setenv("NUCLEUS_ENDPOINT", fake.endpoint)
        result = pull(run_cli)
        assert any(r.status == 429 for r in fake.server.log)
    assert result.exit_code == 0, result.stderr
    assert len(list(store.open("horses").items())) == N


def test_the_roboflow_export_wait_counts_wall_time(run_cli, monkeypatch):
    with LoopbackServer(latency=0.3) as server:
        server.route("GET", "/acme/chess/1/coco")(lambda request: Response.json({"progress": 0.1}, 202))
        monkeypatch.setenv("ROBOFLOW_API_KEY", "rf_key_0123456789")
        monkeypatch.setenv("ROBOFLOW_API_URL", server.url)
        started = time.monotonic()
        result = run_cli("pull", "--source", "roboflow", "--workspace", "acme", "--project", "chess",
                         "--version", "1", "--export-timeout", "1", "--dataset", "chess")
        elapsed = time.monotonic() - started
        polls = len(server.requests("GET", "/acme/chess/1/coco"))
    assert result.exit_code == 1
    assert "still being prepared after 1s" in result.stderr
    assert elapsed < 3 and polls <= 4
    assert "rf_key_0123456789" not in result.stderr


def test_a_429_makes_every_thread_of_the_client_wait():
    """Politeness with many fetch threads: one 429's Retry-After holds back the others too."""
    import threading

    told = threading.Event()

    def answer(request):
        if not told.is_set():
            told.set()
            return Response(429, b"", {"Retry-After": "1"})
        return Response.json({"ok": True})

    with LoopbackServer() as server:
        server.route("GET", "/x")(answer)
        client = HttpClient()
        other = threading.Thread(target=client.json, args=("GET", server.url + "/x"))
        other.start()
        assert told.wait(5)
        time.sleep(0.2)  # the 429 has reached the other thread
        assert client.json("GET", server.url + "/x") == {"ok": True}
        other.join(5)
        arrivals = sorted(r.at for r in server.log)
    assert len(arrivals) == 3 and arrivals[1] - arrivals[0] >= 0.9, "nobody came back before Retry-After"


def test_a_server_that_never_sends_headers_is_cut_off_at_the_download_deadline(nucleus, run_cli, store):
    ref = nucleus.slices["slc_1"].ref_ids[5]
    nucleus.misbehave[ref] = lambda data, nth: (time.sleep(2), Response(200, data))[1]
    started = time.monotonic()
    result = pull(run_cli, "--on-error", "skip", "--download-timeout", "0.5")
    assert result.exit_code == 0, result.stderr
    assert time.monotonic() - started < 2.5, "all attempts together stay within the deadline"
    assert f"item '{ref}'" in result.stdout and "--download-timeout" in result.stdout
    assert len(list(store.open("horses").items())) == N - 1
