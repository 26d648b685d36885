"""Image GETs on a socket of their own (``tlsync.http_lean``, ``tlsync.http_wire``) do what urllib3 did for them.

Each test downloads through ``HttpClient`` from a real loopback server, with requests' own
``Session.request`` made to fail, so that only the lean path can pass it.
"""

from __future__ import annotations

import gzip
import io
import threading
import time

import pytest
from test_http_direct import BODY, direct_client

from tlsync.http import HttpError
from tlsync.http_wire import Connection
from tlsync.testing.server import LoopbackServer, Response


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every TCP connection the lean path opens, by thread."""
    opened: list[str] = []
    real = Connection.connect

    def connect(self, timeout: float) -> None:
        opened.append(threading.current_thread().name)
        real(self, timeout)

    monkeypatch.setattr(Connection, "connect", connect)
    return opened


def test_a_thread_keeps_one_connection_for_its_downloads(sleeps, monkeypatch, connects) -> None:
    with LoopbackServer() as server:
        server.route("GET", "/img.jpg")(lambda request: Response(200, BODY))
        client = direct_client(sleeps, monkeypatch)
        for _ in range(10):
            out = io.BytesIO()
            client.download(server.url + "/img.jpg", out)
            assert out.getvalue() == BODY
    assert len(connects) == 1


def test_a_keep_alive_connection_the_server_closed_is_opened_again_at_once(sleeps, monkeypatch, connects) -> None:
    with LoopbackServer(idle_timeout=0.2) as server:
        server.route("GET", "/img.jpg")(lambda request: Response(200, BODY))
        client = direct_client(sleeps, monkeypatch)
        client.download(server.url + "/img.jpg", io.BytesIO())
        time.sleep(0.6)  # the server drops the idle connection
        out = io.BytesIO()
        client.download(server.url + "/img.jpg", out)
    assert out.getvalue() == BODY
    assert sleeps == [] and len(connects) == 2  # no backoff: a stale connection is not a failure
    assert len(server.log) == 2


def test_a_connection_the_server_says_it_closes_is_not_reused(sleeps, monkeypatch, connects) -> None:
    with LoopbackServer() as server:
        server.route("GET", "/img.jpg")(lambda request: Response(200, BODY, send_length=False))
        client = direct_client(sleeps, monkeypatch)
        for _ in range(3):
            out = io.BytesIO()
            client.download(server.url + "/img.jpg", out)
            assert out.getvalue() == BODY
    assert len(connects) == 3 and sleeps == []


def test_a_gzip_body_is_stored_decoded_and_checked_against_its_length_on_the_wire(sleeps, monkeypatch) -> None:
    packed = gzip.compress(BODY)
    with LoopbackServer() as server:
        server.route("GET", "/img.jpg")(lambda request: Response(200, packed, {"Content-Encoding": "gzip"}))
        server.route("GET", "/cut.jpg")(lambda request: Response(200, packed, {"Content-Encoding": "gzip"},
                                                                   cut_at=len(packed) // 2))
        server.route("GET", "/bad.jpg")(lambda request: Response(200, b"not gzip at all",
                                                                   {"Content-Encoding": "gzip"}))
        client = direct_client(sleeps, monkeypatch, attempts=3)
        out = io.BytesIO()
        assert client.download(server.url + "/img.jpg", out) == len(BODY)
        assert out.getvalue() == BODY
        with pytest.raises(HttpError, match=r"failed after 3 attempts \((ChunkedEncodingError|got \d+ of)"):
            client.download(server.url + "/cut.jpg", io.BytesIO())
        with pytest.raises(HttpError, match=r"failed after 3 attempts \(ContentDecodingError\)"):
            client.download(server.url + "/bad.jpg", io.BytesIO())


def test_a_server_that_stops_answering_mid_body_times_out(sleeps, monkeypatch) -> None:
    with LoopbackServer() as server:
        server.route("GET", "/slow.jpg")(lambda request: Response(200, BODY[:50], drip=0.5))
        client = direct_client(sleeps, monkeypatch, attempts=3, timeout=(0.2, 0.2))
        started = time.monotonic()
        with pytest.raises(HttpError, match="failed after 3 attempts"):
            client.download(server.url + "/slow.jpg", io.BytesIO())
    assert time.monotonic() - started < 5
