"""Image GETs on a socket of their own: one keep-alive connection per fetch thread and host.

``http_direct`` already skips requests for a plain image GET; this skips urllib3 and
``http.client`` too, for the same GETs (``DirectGet`` decides which): the request is bytes
prepared once per host, the answer is parsed by llhttp (``http_wire``). urllib3's pool cost
about 70 µs of CPU per request over ``http.client`` (a liveness poll, socket timeouts set
twice, Retry and Timeout objects, header dicts copied), and ``http.client`` as much again over
the socket work, held under the GIL that a pull's fetch threads share. A thread's connection
is its own, so no pool is needed.

What urllib3 did is kept: the same headers, timeouts (connect, then read), TLS verified
against the CA bundle requests would use, a body decoded as urllib3 decodes it, a stale
keep-alive connection retried once on a fresh one, and failures raised as the requests
exceptions ``HttpClient`` already handles (retried, or "could not be sent").
"""

from __future__ import annotations

import os
import ssl
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import requests
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from .http_wire import (
    Answer,
    Connection,
    CutShort,
    Headers,
    InvalidTarget,
    RemoteClosed,
    WireError,
    request_head,
    request_line,
)

_urllib3_decoder: Any
try:  # the decoders urllib3 uses (gzip, deflate, and br / zstd where installed)
    from urllib3.response import _get_decoder as _urllib3_decoder
except ImportError:  # pragma: no cover - a urllib3 without it: the body is passed on undecoded
    _urllib3_decoder = None

# A reused connection the server has closed meanwhile fails like this on its next request.
_STALE = (RemoteClosed, BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


_ALL: weakref.WeakSet[LeanGet] = weakref.WeakSet()


def close_thread_connections() -> None:
    """Close the calling thread's connections, of every ``LeanGet`` (a fetch thread that is ending).

    Left to the garbage collector, a finished thread's keep-alive connections could stay open
    for as long as the server lets idle ones live (10 s and more): a server that limits the
    connections per client then makes the pull's new ones (a fetch worker's) wait.
    """
    for lean in list(_ALL):
        conn = getattr(lean._local, "conn", None)
        if conn is not None:
            conn.close()
            lean._local.conn = None


def _tls_context(ca_file: str | bool) -> ssl.SSLContext:
    """Verification as requests does it: its CA bundle, or the file or folder ``verify`` names."""
    where = ca_file if isinstance(ca_file, str) else DEFAULT_CA_BUNDLE_PATH
    folder = os.path.isdir(where)
    context = ssl.create_default_context(cafile=None if folder else where, capath=where if folder else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # as urllib3
    return context


class LeanGet:
    """GETs to one ``scheme://host:port``, each fetch thread on its own connection.

    ``headers`` (the session's) must hold no line breaks: ``ValueError`` here, and requests sends.
    """

    def __init__(self, scheme: str, host: str, port: int | None, headers: dict[str, Any], verify: str | bool):
        self.https = scheme == "https"
        default = 443 if self.https else 80
        self.host, self.port = host, port or default
        self._head = request_head(host, self.port, default, headers)
        self._context = _tls_context(verify) if self.https else None
        self._local = threading.local()
        _ALL.add(self)

    def _connection(self) -> tuple[Connection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, conn.sock is not None
        conn = self._local.conn = Connection(self.host, self.port, self._context)
        return conn, False

    def get(self, target: str, url: str, timeout: tuple[float, float]) -> LeanResponse:
        """Send ``GET target``; a keep-alive connection found closed is opened again once."""
        for attempt in range(2):
            conn, reused = self._connection()
            stage = "connect"
            try:
                data = request_line("GET", target) + self._head
                if conn.sock is None:
                    conn.connect(timeout[0])
                stage = "read"
                assert conn.sock is not None
                if conn.sock.gettimeout() != timeout[1]:
                    conn.sock.settimeout(timeout[1])
                return LeanResponse(conn, conn.request(data), url)
            except _STALE as e:
                conn.close()
                if reused and attempt == 0:
                    continue
                raise requests.ConnectionError(e) from None
            except BaseException as e:
                conn.close()
                raise _translate(e, stage) from None
        raise AssertionError("unreachable")


def _translate(e: BaseException, stage: str) -> BaseException:
    """The requests exception urllib3's path raised for the same failure (``http_direct.translate``)."""
    if isinstance(e, ssl.SSLError):
        return requests.exceptions.SSLError(e)
    if isinstance(e, TimeoutError):
        return requests.ConnectTimeout(e) if stage == "connect" else requests.ReadTimeout(e)
    if isinstance(e, InvalidTarget):
        return requests.exceptions.InvalidURL(e)
    if isinstance(e, (OSError, WireError)):
        return requests.ConnectionError(e)
    return e


class LeanResponse:
    """What ``HttpClient.download`` reads of a ``requests.Response``, over an ``http_wire.Answer``."""

    def __init__(self, conn: Connection, answer: Answer, url: str):
        self.connection = conn  # http._socket_of finds the socket here, for the download's deadline
        self.raw = self  # HttpClient asks raw.tell() for the bytes on the wire
        self.url = url
        self.status_code = answer.status
        self.headers: Headers = answer.headers  # case-insensitive .get(), as requests' headers
        self._answer = answer
        self._consumed = False

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    def tell(self) -> int:
        return self._answer.wire

    def iter_content(self, chunk_size: int) -> Iterator[bytes]:
        """The decoded body, failures raised as ``requests.Response.iter_content`` raises them.

        Pieces come as they arrive (at most one socket read's worth), whatever ``chunk_size``.
        """
        encoding = (self.headers.get("Content-Encoding") or "").strip().lower()
        decoder = _urllib3_decoder(encoding) if encoding and _urllib3_decoder else None
        while chunk := self._read():
            yield _decoded(decoder.decompress, chunk) if decoder else chunk
        if decoder is not None and (tail := _decoded(decoder.flush)):
            yield tail
        self._consumed = True

    def _read(self) -> bytes:
        try:
            return self._answer.read()
        except ssl.SSLError as e:
            raise requests.exceptions.SSLError(e) from None
        except TimeoutError as e:
            raise requests.ConnectionError(e) from None
        except (CutShort, OSError, WireError) as e:  # as http.client's IncompleteRead and bad chunk headers
            raise requests.exceptions.ChunkedEncodingError(e) from None

    def close(self) -> None:
        """Keep the connection for the thread's next GET only when this body was read to its end."""
        if not (self._consumed and self._answer.reusable):
            self.connection.close()


def _decoded(step: Any, *data: bytes) -> bytes:
    """A decoder step; its error (zlib.error, brotli.error...) as requests reports a bad encoding."""
    try:
        return step(*data)
    except Exception as e:
        raise requests.exceptions.ContentDecodingError(e) from None
