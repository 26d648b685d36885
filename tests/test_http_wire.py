"""Image GETs read their answers with llhttp (``tlsync.http_wire``): hostile answers are refused, bounded, retried.

A raw TCP server on 127.0.0.1 sends exactly the bytes each test gives it (what no real
HTTP server library would send), after reading the request's head. Downloads go through
``HttpClient`` as a pull's do, with requests' own path made to fail, so only this one can pass.
"""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from test_http_direct import direct_client

from tlsync.http import HttpError
from tlsync.http_wire import MAX_HEAD_BYTES, Connection, InvalidTarget, request_head, request_line

PNG = b"\x89PNG\r\n\x1a\n" + b"x" * 300


@pytest.fixture
def sleeps() -> list[float]:
    return []


@contextmanager
def raw_server(answer: Callable[[int], bytes | Iterator[bytes]], close: bool = True) -> Iterator[tuple[str, list[int]]]:
    """Serve ``answer(n)`` for the n-th request (counted over all connections); yields the URL and
    the number of requests each connection carried."""
    listener = socket.create_server(("127.0.0.1", 0))
    per_connection: list[int] = []
    count = 0

    def serve(conn: socket.socket) -> None:
        nonlocal count
        slot = len(per_connection)
        per_connection.append(0)
        with conn:
            pending = b""
            while True:
                while b"\r\n\r\n" not in pending:
                    data = conn.recv(65536)
                    if not data:
                        return
                    pending += data
                pending = pending.split(b"\r\n\r\n", 1)[1]
                per_connection[slot] += 1
                count += 1
                reply = answer(count)
                try:
                    for piece in [reply] if isinstance(reply, bytes) else reply:
                        conn.sendall(piece)
                except OSError:
                    return
                if close:
                    return

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/img.png", per_connection
    finally:
        listener.close()


def ok(body: bytes = PNG, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


def fetch(url: str, sleeps: list[float], monkeypatch: pytest.MonkeyPatch, attempts: int = 2) -> bytes:
    out = io.BytesIO()
    direct_client(sleeps, monkeypatch, attempts=attempts, timeout=(2.0, 2.0)).download(url, out)
    return out.getvalue()


def test_a_chunked_body_is_stored_whole(sleeps, monkeypatch) -> None:
    chunks = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(PNG[i:i + 97]), PNG[i:i + 97]) for i in range(0, len(PNG), 97))
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\nX-Trailer: 1\r\n\r\n"
    with raw_server(lambda n: reply) as (url, _):
        assert fetch(url, sleeps, monkeypatch) == PNG


def test_an_answer_sent_a_byte_at_a_time_is_read_whole(sleeps, monkeypatch) -> None:
    reply = ok()
    with raw_server(lambda n: iter([reply[i:i + 1] for i in range(len(reply))])) as (url, _):
        assert fetch(url, sleeps, monkeypatch) == PNG


def test_informational_answers_before_the_real_one_are_passed_over(sleeps, monkeypatch) -> None:
    reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n" + ok()
    with raw_server(lambda n: reply) as (url, _):
        assert fetch(url, sleeps, monkeypatch) == PNG


def test_a_body_that_ends_at_close_is_read_to_the_close(sleeps, monkeypatch) -> None:
    with raw_server(lambda n: b"HTTP/1.0 200 OK\r\n\r\n" + PNG) as (url, _):
        assert fetch(url, sleeps, monkeypatch) == PNG


@pytest.mark.parametrize("reply, why", [
    (b"NOT HTTP AT ALL\r\n\r\n", "garbage instead of a status line"),
    (b"HTTP/1.1 2000 OK\r\nContent-Length: 3\r\n\r\nabc", "a status out of range"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc", "two lengths"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\nabc", "a negative length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", "a chunk size not in hex"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nabc", "a chunk size overflowing"),
    (b"HTTP/1.1 200 OK\r\nBad Header Name: x\r\nContent-Length: 3\r\n\r\nabc", "a space in a header name"),
    (b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 3\r\n\r\nabc", "a bare CR in a header value"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", "a protocol switch"),
    (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(101)) + b"Content-Length: 3\r\n\r\nabc",
     "101 headers"),
    (b"HTTP/1.1 200 OK\r\n" + b"X-Same: 1\r\n" * 101 + b"Content-Length: 3\r\n\r\nabc", "one header 101 times"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 300\r\n\r\n" + PNG[:120], "a body cut short"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n", "headers cut short"),
    (b"", "nothing at all"),
])
def test_a_malformed_answer_is_retried_then_a_one_line_error(sleeps, monkeypatch, reply, why) -> None:
    with raw_server(lambda n: reply) as (url, conns):
        with pytest.raises(HttpError, match=r"failed after 2 attempts \((ConnectionError|ChunkedEncodingError|got)"):
            fetch(url, sleeps, monkeypatch)
    assert sum(conns) == 2, why  # tried again once, on a new connection


def test_endless_headers_are_refused_after_a_bounded_read(sleeps, monkeypatch) -> None:
    read: list[int] = []
    real = Connection.receive
    monkeypatch.setattr(Connection, "receive", lambda self, answer: read.append(real(self, answer)) or read[-1])

    def endless(n: int) -> Iterator[bytes]:
        yield b"HTTP/1.1 200 OK\r\nX-Long: "
        for _ in range(10_000):  # 40 MB, were it all read
            yield b"a" * 4096

    with raw_server(endless) as (url, _):
        with pytest.raises(HttpError, match="failed after 2 attempts"):
            fetch(url, sleeps, monkeypatch)
    assert sum(read) < 2 * (MAX_HEAD_BYTES + (1 << 16))  # each attempt stopped one read past the bound


def test_bytes_after_a_whole_answer_leave_it_standing_but_the_connection_is_not_reused(sleeps, monkeypatch) -> None:
    with raw_server(lambda n: ok() + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi" + b"junk", close=False) \
            as (url, conns):
        client = direct_client(sleeps, monkeypatch)
        for _ in range(3):
            out = io.BytesIO()
            client.download(url, out)
            assert out.getvalue() == PNG
    assert conns == [1, 1, 1] and sleeps == []


def test_a_kept_alive_connection_carries_the_next_request(sleeps, monkeypatch) -> None:
    with raw_server(lambda n: ok(), close=False) as (url, conns):
        client = direct_client(sleeps, monkeypatch)
        for _ in range(5):
            out = io.BytesIO()
            client.download(url, out)
            assert out.getvalue() == PNG
    assert conns == [5]


def test_requests_are_refused_before_sending_where_http_client_refused_them() -> None:
    for target in ("/a b.png", "/a\r\nX-Injected: 1", "/caf\u00e9.png", "/a\x00.png"):
        with pytest.raises(InvalidTarget):
            request_line("GET", target)
    with pytest.raises(ValueError, match="invalid header"):
        request_head("cdn.example", 80, 80, {"User-Agent": "tlsync\r\nX-Injected: 1"})
    assert request_head("::1", 8080, 80, {"Accept": "*/*"}) == b"Host: [::1]:8080\r\nAccept: */*\r\n\r\n"
    assert request_head("cdn.example", 443, 443, {}) == b"Host: cdn.example\r\n\r\n"
