"""A real HTTP server on 127.0.0.1 for tests and benchmarks of network code.

Mocking ``requests`` proves what a client sends; it cannot prove that retries, timeouts,
connection pooling and concurrent downloads behave on a real socket. This server can:
it answers from a route table, records every request, can add latency to each answer,
and can fail a seeded fraction of requests with 429 (with ``Retry-After``), 503 or a
TCP reset. It runs in a thread and lives exactly as long as its ``with`` block.

Standard library only, so any test or benchmark can use it::

    server = LoopbackServer(latency=0.02, faults=Faults(rate=0.2, seed=1))

    @server.route("GET", "/items/{item_id}")
    def item(request: Request) -> Response:
        return Response.json({"id": request.params["item_id"]})

    with server:
        requests.get(server.url + "/items/7")
    assert server.requests("GET", "/items/")[0].status == 200
"""

from __future__ import annotations

import json
import random
import re
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

FAULT_KINDS = ("429", "503", "reset")


@dataclass
class Request:
    """What a route handler sees; ``params`` holds the ``{name}`` parts of the route."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        return json.loads(self.body or b"null")


@dataclass
class Response:
    """What a route answers. The last three fields misbehave on purpose, as broken servers do:
    ``send_length=False`` sends no ``Content-Length`` and ends the body by closing the
    connection (so a cut-off body looks whole on the wire); ``cut_at`` stops the body after
    that many bytes and closes; ``drip`` sends the body a byte at a time, that many
    seconds apart."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    send_length: bool = True
    cut_at: int | None = None
    drip: float = 0.0

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(data).encode(), {"Content-Type": "application/json"})


@dataclass
class LoggedRequest:
    """One request as the server saw it; ``fault`` names an injected failure, if any."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    status: int | None = None
    fault: str | None = None
    at: float = field(default_factory=time.monotonic)  # when it arrived (time.monotonic)


@dataclass
class Faults:
    """Fail ``rate`` of requests with one of ``kinds``, reproducibly for a given ``seed``.

    ``max_in_a_row`` caps consecutive faults on one method and path, so a client with
    bounded retries always gets through eventually and a test cannot flake on a long
    unlucky streak. ``paths`` (a regex searched in the path) limits where faults land.
    """

    rate: float = 0.2
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int = 0
    retry_after: str = "0"
    max_in_a_row: int = 2
    paths: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; use {FAULT_KINDS}")


Handler = Callable[[Request], Response]


class LoopbackServer:
    """Route table, request log, latency and fault injection on an ephemeral 127.0.0.1 port."""

    def __init__(self, latency: float = 0.0, faults: Faults | None = None, max_connections: int = 128,
                 idle_timeout: float = 10.0):
        self.latency = latency  # may be changed while running, as may ``faults``
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.log: list[LoggedRequest] = []
        self.errors: list[str] = []  # tracebacks of handlers that raised (answered 500)
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._lock = threading.Lock()
        self.faults = faults
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def faults(self) -> Faults | None:
        return self._faults

    @faults.setter
    def faults(self, faults: Faults | None) -> None:
        """Setting a fault plan restarts its seeded sequence."""
        with self._lock:
            self._faults = faults
            self._attempts: dict[tuple[str, str], int] = {}
            self._streak: dict[tuple[str, str], int] = {}

    # -- routes -------------------------------------------------------------------------

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        """Decorator: answer ``method`` on paths matching ``pattern`` (``{name}`` = one segment)."""
        regex = re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(pattern)))

        def register(handler: Handler) -> Handler:
            self._routes.append((method.upper(), regex, handler))
            return handler

        return register

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the server is not running; use it in a with block")
        host, port = self._httpd.server_address[:2]
        if isinstance(host, bytes):  # only for AF_UNIX-style addresses; an AF_INET host is a str
            host = host.decode()
        return f"http://{host}:{port}"

    def __enter__(self) -> LoopbackServer:
        self._httpd = _Server(self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="loopback-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.close_connections()  # frees handler slots, so an accept waiting for one can return
        httpd.shutdown()
        httpd.close_connections()  # and any connection accepted meanwhile
        httpd.server_close()
        if self._thread:
            self._thread.join(timeout=10)

    # -- the log ------------------------------------------------------------------------

    def requests(self, method: str | None = None, path_prefix: str = "") -> list[LoggedRequest]:
        """Logged requests, optionally of one method and under one path prefix."""
        with self._lock:
            return [r for r in self.log
                    if (method is None or r.method == method.upper()) and r.path.startswith(path_prefix)]

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    # -- serving (called from handler threads) ------------------------------------------

    def _pick_fault(self, method: str, path: str) -> str | None:
        if self._faults is None:  # most servers: no lock taken, no generator seeded per request
            return None
        with self._lock:
            faults = self._faults
            key = (method, path)
            # Decided by (seed, request, attempt) rather than one shared stream, so concurrent
            # clients fault the same requests whatever order their threads run in.
            attempt = self._attempts[key] = self._attempts.get(key, 0) + 1
            rng = random.Random(f"{faults.seed if faults else 0}:{method}:{path}:{attempt}")
            if (faults and faults.rate > 0 and re.search(faults.paths, path)
                    and rng.random() < faults.rate and self._streak.get(key, 0) < faults.max_in_a_row):
                self._streak[key] = self._streak.get(key, 0) + 1
                return rng.choice(faults.kinds)
            self._streak.pop(key, None)
            return None

    def _answer(self, method: str, path: str, request: Request) -> Response:
        for route_method, regex, handler in self._routes:
            match = regex.fullmatch(path)
            if route_method == method and match:
                request.params = match.groupdict()
                try:
                    return handler(request)
                except Exception:
                    self.errors.append(traceback.format_exc())
                    print(self.errors[-1], file=sys.stderr)
                    return Response.json({"error": "handler raised"}, 500)
        return Response.json({"error": f"no route for {method} {path}"}, 404)

    def _serve(self, handler: _Handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        parts = urlsplit(handler.path)
        headers = {k: v for k, v in handler.headers.items()}
        entry = LoggedRequest(handler.command, parts.path, parts.query, headers, body)
        with self._lock:
            self.log.append(entry)
        if self.latency:
            time.sleep(self.latency)
        entry.fault = self._pick_fault(handler.command, parts.path)
        if entry.fault == "reset":
            _reset(handler)
            return
        if entry.fault == "429":
            response = Response.json({"error": "rate limited"}, 429)
            response.headers["Retry-After"] = self.faults.retry_after if self.faults else "0"
        elif entry.fault == "503":
            response = Response.json({"error": "unavailable"}, 503)
        else:
            response = self._answer(handler.command, parts.path,
                                    Request(handler.command, parts.path, parse_qs(parts.query), headers, body))
        entry.status = response.status
        handler.send_response(response.status)
        for name, value in response.headers.items():
            handler.send_header(name, value)
        if response.send_length:
            handler.send_header("Content-Length", str(len(response.body)))
        else:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        if handler.command == "HEAD":
            handler.end_headers()
        elif response.drip or response.cut_at is not None:
            handler.end_headers()
            _send_body(handler, response)
        else:
            handler.end_headers_with(response.body)


def _send_body(handler: BaseHTTPRequestHandler, response: Response) -> None:
    body = response.body if response.cut_at is None else response.body[:response.cut_at]
    if response.drip:
        for i in range(len(body)):
            handler.wfile.write(body[i:i + 1])
            handler.wfile.flush()
            time.sleep(response.drip)
    else:
        handler.wfile.write(body)
    if response.cut_at is not None:
        handler.wfile.flush()
        handler.close_connection = True


def _reset(handler: BaseHTTPRequestHandler) -> None:
    """Drop the connection with a TCP RST, as an overloaded proxy or a flaky network does."""
    handler.close_connection = True
    sock = handler.connection
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like real APIs and CDNs
    server: _Server

    def setup(self) -> None:
        # socketserver reads it per instance in setup(); the stub wrongly calls it a ClassVar.
        self.timeout = self.server.app.idle_timeout  # type: ignore[misc]
        super().setup()
        # A dripped or cut answer's headers and body go out in separate writes; without this,
        # Nagle's algorithm meets the client's delayed ACK and such a response waits ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    _date: tuple[int, str] = (0, "")
    _headers_buffer: list[bytes]  # http.server's own, which its stub leaves out

    def end_headers_with(self, body: bytes) -> None:
        """End the headers and send them with ``body`` in one write, as a CDN answers a small file.

        Two writes were two sends and two TCP segments (``TCP_NODELAY``): on a 30,000-image loopback
        pull the fake Nucleus server's CPU per image went from 0.19-0.20 ms to 0.16-0.18 ms.
        """
        self._headers_buffer.append(b"\r\n")
        self._headers_buffer.append(body)
        self.flush_headers()

    def date_time_string(self, timestamp: float | None = None) -> str:
        """The ``Date`` header, formatted once a second: the stdlib formats it for every answer."""
        if timestamp is not None:
            return super().date_time_string(timestamp)
        now = int(time.time())
        second, text = _Handler._date
        if second != now:
            text = super().date_time_string(now)
            _Handler._date = (now, text)
        return text

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except OSError:
            self.close_connection = True  # the client went away (or we reset it)

    def _handle(self) -> None:
        self.server.app._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is the record."""


class _Server(ThreadingHTTPServer):
    """At most ``max_connections`` handler threads; open connections are closed on stop."""

    daemon_threads = True
    # socketserver's default listen backlog is 5. A pull opens up to 64 connections at once,
    # and on a loaded machine the accept thread falls behind: connections past the backlog
    # wait for the client's SYN retransmit (1 s, 3 s, 7 s, 15 s...), which a real CDN's
    # backlog never makes them do. That stalled benchmark rounds for 20-55 s.
    request_queue_size = 1024

    def __init__(self, app: LoopbackServer):
        self.app = app
        self._slots = threading.BoundedSemaphore(app.max_connections)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._slots.acquire()
        with self._open_lock:
            self._open.add(request)
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(request)

    def _release(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        self._slots.release()

    def close_connections(self) -> None:
        """Wake handler threads blocked on idle keep-alive connections so they end."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
