"""HTTP/1.1 GETs on a socket, their answers parsed by llhttp (through ``httptools``).

``http_lean`` sends a pull's image GETs here. ``http.client`` cost about 70 µs of CPU per
request over the socket work itself (a buffered file over the socket, a ``readline`` per
header line, the email package's parser for the header block), held under the GIL that a
fetch worker's threads share: about a fifth of what a worker spent on an image. Here a
request is one ``sendall`` of bytes prepared once per host, and the answer is fed, as it
arrives, to llhttp: Node.js's parser, in C, and strict about what it accepts (conflicting
lengths, malformed chunk sizes, bytes that are not HTTP).

Everything from the server is hostile: the status line and headers are bounded together
(``MAX_HEAD_BYTES``, ``MAX_HEADERS``), bytes after the answer or a protocol switch
make the connection unusable, and a connection closed before the body's declared end is
``CutShort``. The body itself is bounded by the caller (``--max-image-bytes``).
"""

from __future__ import annotations

import re
import socket
import ssl

import httptools

MAX_HEAD_BYTES = 1 << 16  # status line and headers together; a CDN's are a few KB
MAX_HEADERS = 100  # as http.client
_RECEIVE = 1 << 16
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f-\U0010ffff]")  # as http.client: no spaces, controls or non-ASCII


class WireError(Exception):
    """The server's bytes are not an HTTP answer we accept."""


class RemoteClosed(ConnectionError):
    """The connection closed before any byte of the answer: a keep-alive connection the server dropped."""


class CutShort(ConnectionError):
    """The connection closed before the body's end."""


class InvalidTarget(ValueError):
    """A request target with a space, control or non-ASCII character in it."""


class Headers:
    """An answer's headers; ``get`` takes a name in any case, as requests' and http.client's do.

    A repeated header keeps its first value, as ``http.client``'s ``msg.get`` does.
    """

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[str, str] = {}

    def add(self, name: str, value: str) -> None:
        self._values.setdefault(name.lower(), value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._values.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __len__(self) -> int:
        return len(self._values)


def request_head(host: str, port: int, default_port: int, headers: dict[str, str | bytes]) -> bytes:
    """What follows a request line, prepared once per host: ``Host`` and the session's headers.

    A name or value with a line break in it (which would start a header of its own) is refused.
    """
    bare = host.strip("[]")
    name = f"[{bare}]" if ":" in bare else bare
    lines = [b"Host: " + (name if port == default_port else f"{name}:{port}").encode("idna")]
    for key, value in headers.items():
        raw = value if isinstance(value, bytes) else str(value).encode("latin-1")
        if not key or any(c in key for c in "\r\n:") or b"\r" in raw or b"\n" in raw:
            raise ValueError(f"invalid header {key!r}")
        lines.append(key.encode("ascii") + b": " + raw)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def request_line(method: str, target: str) -> bytes:
    if _BAD_TARGET.search(target):
        raise InvalidTarget(f"URL can't contain control characters, spaces or non-ASCII: {target[:200]!r}")
    return f"{method} {target} HTTP/1.1\r\n".encode("ascii")


class Connection:
    """One keep-alive connection to one host: a request out, then its answer, one at a time."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext | None):
        self.host, self.port, self.context = host.strip("[]"), port, context
        self.sock: socket.socket | None = None
        self._buffer = bytearray(_RECEIVE)

    def connect(self, timeout: float) -> None:
        sock = socket.create_connection((self.host, self.port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self.context.wrap_socket(sock, server_hostname=self.host) if self.context else sock
        except BaseException:
            sock.close()
            raise

    def request(self, data: bytes) -> Answer:
        """Send ``data`` (a whole request) and read the answer's status and headers."""
        assert self.sock is not None, "connect first"
        self.sock.sendall(data)
        answer = Answer(self)
        answer.read_head()
        return answer

    def receive(self, answer: Answer) -> int:
        """Read what has arrived into the answer's parser; 0 when the server closed the connection."""
        assert self.sock is not None
        n = self.sock.recv_into(self._buffer)
        if n:
            answer.feed(memoryview(self._buffer)[:n])
        return n

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()


class Answer:
    """One answer: ``status`` and ``headers`` once ``read_head`` returns, then the body from ``read``.

    The ``on_*`` methods are llhttp's callbacks, called from ``feed``.
    """

    def __init__(self, conn: Connection):
        self._conn = conn
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers = Headers()
        self.wire = 0  # body bytes received, before any Content-Encoding is undone
        self._pieces: list[bytes] = []
        self._header_lines = 0
        self._head_done = self._complete = self._extra = self._closed = self._keep_alive = False

    # -- llhttp's callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._extra = self._extra or self._complete  # a second answer: bytes nobody asked for

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._head_done:
            return  # a chunked body's trailer (or a second answer's): ignored, as http.client ignores it
        self._header_lines += 1  # lines, not names: a repeated header keeps one value but counts each time
        if self._header_lines > MAX_HEADERS:
            raise WireError(f"the answer has more than {MAX_HEADERS} headers")
        self.headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        if self._head_done:
            return  # a second answer's
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # "100 Continue" and the like: the real answer follows
            self.headers, self._header_lines = Headers(), 0
            return
        self.status, self._head_done = status, True

    def on_body(self, data: bytes) -> None:
        if self._complete:
            return  # a second answer's
        self._pieces.append(data)
        self.wire += len(data)

    def on_message_complete(self) -> None:
        if self._head_done and not self._complete:
            self._complete = True
            self._keep_alive = self._parser.should_keep_alive()  # llhttp forgets it once the answer is done

    # -- reading --------------------------------------------------------------------------

    def feed(self, data: memoryview) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise WireError("the server switched protocols") from None
        except httptools.HttpParserCallbackError as e:
            raise (e.__context__ if isinstance(e.__context__, WireError) else WireError(str(e))) from None
        except httptools.HttpParserError as e:
            if not self._complete:
                raise WireError(f"malformed answer ({e})") from None
            self._extra = True  # junk after a whole answer: that answer stands, the connection does not

    def read_head(self) -> None:
        fed = 0
        while not self._head_done:
            if fed > MAX_HEAD_BYTES:
                raise WireError(f"the answer's status line and headers are over {MAX_HEAD_BYTES:,} bytes")
            n = self._conn.receive(self)
            if not n:
                if fed:
                    raise WireError("the connection closed in the middle of the answer's headers")
                raise RemoteClosed("the server closed the connection without answering")
            fed += n

    def read(self) -> bytes:
        """What has arrived of the body (waiting for more if nothing has); ``b""`` once it is whole."""
        while not self._pieces:
            if self._complete:
                return b""
            if not self._conn.receive(self):
                if self._ends_at_close():
                    self._complete = self._closed = True
                    return b""
                raise CutShort(f"the connection closed after {self.wire:,} bytes of the body")
        pieces, self._pieces = self._pieces, []
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _ends_at_close(self) -> bool:
        """No length and not chunked: the body is whatever comes before the server closes (HTTP/1.0 style)."""
        coding = (self.headers.get("Transfer-Encoding") or "").lower().rstrip()
        return "content-length" not in self.headers and not coding.endswith("chunked")

    @property
    def reusable(self) -> bool:
        """Whether the connection may carry the next request: read to its end, kept alive, nothing more sent."""
        return self._complete and self._keep_alive and not self._closed and not self._extra
