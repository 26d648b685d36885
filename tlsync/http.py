"""HTTP for sources: timeouts, retries with backoff, and no secret in any message.

Labelling platforms rate-limit (429) and their CDNs hiccup (5xx, resets); a pull of
100k images must ride through that without the user noticing. Retries use exponential
backoff with full jitter and honour ``Retry-After``. Errors name the URL with keys
redacted and never include a response body that might echo one.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import math
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlsplit

import requests

from .errors import SourceError
from .http_direct import DirectGet
from .secrets import redact
from .sink import ImageTooLarge

if TYPE_CHECKING:
    from requests.sessions import _Settings  # the stubs' TypedDict; not there at run time

RETRY_STATUS = frozenset({429, 500, 502, 503, 504, 520, 524})


class HttpError(SourceError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(redact(message))
        self.status = status


class TooLarge(HttpError, ImageTooLarge):
    """A body over the byte cap: bad input, not retried (the same URL would send it again)."""


class _Watchdog:
    """One thread that ends downloads past their deadline by shutting their socket down.

    A socket timeout bounds each read, not a download: a server that drips a byte every
    few seconds never trips it. Shutting the socket down wakes the blocked read at once.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._cancelled: set[int] = set()
        self._ids = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, action: Callable[[], None]) -> int:
        with self._wake:
            handle = next(self._ids)
            earliest = not self._heap or deadline < self._heap[0][0]
            heapq.heappush(self._heap, (deadline, handle, action))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tlsync-deadlines", daemon=True)
                self._thread.start()
            if earliest:  # else it sleeps until an earlier deadline anyway: waking it costs every thread the GIL
                self._wake.notify()
            return handle

    def cancel(self, handle: int) -> None:
        with self._wake:
            self._cancelled.add(handle)
            # Most downloads finish long before their deadline: drop their entries now and
            # then, or a 100k-image pull would keep minutes' worth of them.
            if len(self._cancelled) > 256 and 2 * len(self._cancelled) > len(self._heap):
                self._heap = [entry for entry in self._heap if entry[1] not in self._cancelled]
                heapq.heapify(self._heap)
                self._cancelled.clear()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._wake.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                _, handle, action = heapq.heappop(self._heap)
                if handle in self._cancelled:
                    self._cancelled.discard(handle)
                    continue
            try:
                action()
            except Exception:
                pass  # the connection is gone already


_watchdog = _Watchdog()


def _socket_of(response: requests.Response) -> Any:
    raw = response.raw
    conn = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    if sock is None:  # urllib3 hands the connection back early on some paths; dig through the file
        fp = getattr(getattr(getattr(raw, "_fp", None), "fp", None), "raw", None)
        sock = getattr(fp, "_sock", None)
    return sock


class _Guard:
    """Shuts one response's socket at its deadline, unless the download ended first.

    Disarmed before the connection goes back to the pool, so a late deadline can never
    cut the next request that reuses the same socket.
    """

    def __init__(self, response: requests.Response):
        self._response: requests.Response | None = response
        self._lock = threading.Lock()

    def fire(self) -> None:
        import socket

        with self._lock:
            if self._response is not None and (sock := _socket_of(self._response)) is not None:
                sock.shutdown(socket.SHUT_RDWR)

    def disarm(self) -> None:
        with self._lock:
            self._response = None


class _Session(requests.Session):
    """A Session that reads proxy and CA settings from the environment once per host.

    requests re-scans every environment variable (proxies, no_proxy, CA bundles) on every
    request: about a third of the CPU of fetching a small image, paid under the GIL by all
    download threads. The environment does not change during a pull, so once per host is
    enough. Explicit per-request proxies bypass the cache.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple, _Settings] = {}

    def merge_environment_settings(self, url: str | bytes | None, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> _Settings:
        if proxies or not isinstance(url, str):  # requests always passes the prepared URL, a str
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, verify, cert)
        if key not in self._environment:
            self._environment[key] = super().merge_environment_settings(url, proxies, None, verify, cert)
        settings = self._environment[key].copy()
        settings["stream"] = requests.sessions.merge_setting(stream, self.stream)
        return settings


class HttpClient:
    """A ``requests.Session`` with the retry policy; thread-safe for concurrent fetches."""

    def __init__(
        self,
        session: requests.Session | None = None,
        attempts: int = 6,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        timeout: tuple[float, float] = (10.0, 120.0),
        sleep: Callable[[float], None] = time.sleep,
        pool_size: int | None = None,
        deadline: float | None = None,
    ):
        """``pool_size``: keep-alive connections per host; set it to at least the number of
        threads sharing this client, or requests opens (and drops) a connection per request."""
        self.session = session or _Session()
        # A session the caller built may carry anything (adapters, auth, hooks): it sends everything itself.
        self._direct = DirectGet(self.session) if session is None else None
        if pool_size:
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.sleep = sleep
        self.deadline = deadline  # seconds per download attempt, wall time; None: none
        # host -> (monotonic time before which no other thread starts a request, the thread that set it)
        self._calm_until: dict[str, tuple[float, int | None]] = {}
        self._calm_lock = threading.Lock()

    def _delay(self, attempt: int, response: requests.Response | None) -> float:
        if response is not None and response.headers.get("Retry-After"):
            try:
                wait = float(response.headers["Retry-After"])
            except ValueError:
                wait = math.nan  # an HTTP date: fall back to our own backoff
            if math.isfinite(wait):  # "-1", "nan" and "inf" are a broken server, not a plan
                return max(0.0, min(wait, self.max_backoff * 4))
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))

    def _wait_for_host(self, url: str) -> None:
        """Sleep while ``url``'s host is calming down, unless this thread set (and slept) the calm."""
        if not self._calm_until:  # no 429 yet (the usual case): no parsing, no lock, for every request
            return
        host = urlsplit(url).netloc
        with self._calm_lock:
            until, who = self._calm_until.get(host, (0.0, None))
        wait = until - time.monotonic()
        if wait > 0 and who != threading.get_ident():
            self.sleep(wait)

    def _calm(self, host: str, delay: float) -> None:
        """After a 429, no thread of this client starts a request to ``host`` for ``delay`` s.

        Many fetch threads share one client; without this, the others would keep sending
        while one waits out the server's ``Retry-After``, which is not what it asked for.
        """
        until = time.monotonic() + delay
        with self._calm_lock:
            if until > self._calm_until.get(host, (0.0, None))[0]:
                self._calm_until[host] = (until, threading.get_ident())

    def request(self, method: str, url: str, what: str = "", ends: float | None = None, direct: bool = False,
                **kwargs: Any) -> requests.Response:
        """Send with retries; return the first non-retryable response (the caller checks it).

        ``ends`` (a ``time.monotonic()`` value) bounds all attempts together: each one's
        read timeout and each backoff are cut to what is left of it. ``direct``: the caller
        only streams the body (``download``), so a plain GET may skip requests (``http_direct``).
        """
        timeout = kwargs.pop("timeout", self.timeout)
        connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        label = f"{what}: " if what else ""
        for attempt in range(self.attempts):
            response = None
            self._wait_for_host(url)
            left = None if ends is None else ends - time.monotonic()
            if left is not None and left <= 0:
                raise HttpError(f"{label}{method} {url} did not finish within its deadline (--download-timeout)")
            try:
                response = self._send(method, url, (connect, read if left is None else max(0.05, min(read, left))),
                                      kwargs, direct)
                if response.status_code not in RETRY_STATUS:
                    return response
                reason = f"HTTP {response.status_code}"
                response.close()
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                reason = type(e).__name__  # ChunkedEncodingError: the body was cut short
            except requests.RequestException as e:  # InvalidHeader, InvalidURL...: retrying cannot help
                raise HttpError(f"{label}{method} {url} could not be sent ({type(e).__name__}: {e})") from None
            if attempt == self.attempts - 1:
                raise HttpError(f"{label}{method} {url} failed after {self.attempts} attempts ({reason})",
                                response.status_code if response is not None else None)
            delay = self._delay(attempt, response)
            if response is not None and response.status_code == 429:
                self._calm(urlsplit(url).netloc, delay)
            self.sleep(delay if ends is None else max(0.0, min(delay, ends - time.monotonic())))
        raise AssertionError("unreachable")

    def _send(self, method: str, url: str, timeout: tuple[float, float], kwargs: dict[str, Any],
              direct: bool) -> Any:
        """One attempt: a download's plain GET straight through urllib3 where nothing needs requests."""
        if direct and self._direct is not None and method == "GET" and kwargs == {"stream": True}:
            response = self._direct.get(url, timeout)
            if response is not None:
                return response
        return self.session.request(method, url, timeout=timeout, **kwargs)

    def sends_directly(self, url: str) -> bool:
        """Whether a download of ``url`` is a plain GET that needs nothing of this session but its headers."""
        return self._direct is not None and self._direct.sends(url)

    def json(self, method: str, url: str, what: str = "", **kwargs: Any) -> Any:
        """Request and decode JSON, with a clear error for a non-2xx status or a bad body.

        The body is read up to ``$TLSYNC_MAX_JSON_BYTES`` and parsed by ``fields.loads``
        (depth bounded): an answer too large or too deep is one line naming the request.
        """
        from .fields import loads

        response = self.request(method, url, what, stream=True, **kwargs)
        label = f"{what}: " if what else ""
        try:
            if not response.ok:
                raise HttpError(f"{label}{method} {url} returned HTTP {response.status_code}", response.status_code)
            body = self._bounded_body(response, f"{label}{method} {url}")
        finally:
            response.close()
        try:
            return loads(body, f"{label}{method} {url}")
        except ValueError:
            raise HttpError(f"{label}{method} {url} returned a body that is not valid JSON",
                            response.status_code) from None

    @staticmethod
    def _bounded_body(response: requests.Response, what: str) -> bytes:
        """The whole body, refusing one over ``max_json_bytes()`` before reading it all."""
        from .fields import MAX_JSON_ENV, JsonTooLarge, max_json_bytes

        limit = max_json_bytes()
        chunks, size = [], 0
        try:
            for chunk in response.iter_content(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise JsonTooLarge(f"{what}: the JSON answer is larger than the {limit:,}-byte limit; "
                                       f"refused (raise {MAX_JSON_ENV} if it is real)")
                chunks.append(chunk)
        except (requests.RequestException, OSError) as e:
            raise HttpError(f"{what}: the answer was cut short ({type(e).__name__})", response.status_code) from None
        return b"".join(chunks)

    def download(self, url: str, out: BinaryIO, what: str = "",
                 progress: Callable[[int, int | None], None] | None = None, max_bytes: int | None = None,
                 deadline: float | None = None, **kwargs: Any) -> int:
        """Stream ``url`` into ``out``; a broken transfer is retried from the start.

        Bytes go to a spooled temp file first so that ``out`` only ever receives a whole,
        length-checked body (unless ``out`` has ``reset()``, as the store's image sink does:
        it is reset before a retry, and the store checks the image before naming it).
        ``Content-Length`` is compared with the bytes on the wire (a gzip body is longer
        once decoded), and ``out`` gets the decoded bytes. A body
        over ``max_bytes`` (default: ``out.max_bytes``, which the store's image sink
        carries) is refused, and the download, retries included, must finish within
        ``deadline`` seconds of wall time (default: ``out.deadline``, else this client's).
        Returns the number of bytes written.
        """
        label = f"{what}: " if what else ""
        limit = max_bytes if max_bytes is not None else getattr(out, "max_bytes", None)
        deadline = deadline if deadline is not None else getattr(out, "deadline", None) or self.deadline
        ends = time.monotonic() + deadline if deadline else None  # retries included: one budget per download
        # The store's image sink can start over, so a body goes straight into it; anything
        # else gets a spool first, so that it only ever receives a whole body.
        direct = callable(getattr(out, "reset", None))
        for attempt in range(self.attempts):
            response = self.request("GET", url, what, stream=True, ends=ends, direct=True, **kwargs)
            if not response.ok:
                response.close()
                raise HttpError(f"{label}GET {url} returned HTTP {response.status_code}", response.status_code)
            expected = response.headers.get("Content-Length")
            total = int(expected) if expected and expected.isdigit() else None
            if limit is not None and total is not None and total > limit:
                response.close()
                raise TooLarge(f"{label}{url} is {total:,} bytes, larger than the limit of {limit:,} bytes "
                               f"(--max-image-bytes)")
            guard = _Guard(response)
            timer = _watchdog.add(ends, guard.fire) if ends is not None else None
            with contextlib.ExitStack() as stack:
                target = out if direct else stack.enter_context(tempfile.SpooledTemporaryFile(max_size=32 << 20))
                if direct and attempt:
                    out.reset()  # type: ignore[attr-defined]
                try:
                    reason, size = self._receive(response, target, total, limit, label, url, progress)
                finally:
                    guard.disarm()
                    if timer is not None:
                        _watchdog.cancel(timer)
                    response.close()
                if ends is not None and time.monotonic() >= ends:
                    raise HttpError(f"{label}download of {url} did not finish within {deadline:g}s "
                                    f"(--download-timeout)")
                if reason is None:
                    if not direct:
                        target.seek(0)
                        shutil.copyfileobj(target, out, 1 << 20)
                    return size
            if attempt == self.attempts - 1:
                raise HttpError(f"{label}download of {url} failed after {self.attempts} attempts ({reason})")
            delay = self._delay(attempt, None)
            self.sleep(delay if ends is None else max(0.0, min(delay, ends - time.monotonic())))
        raise AssertionError("unreachable")

    @staticmethod
    def _receive(response: requests.Response, spool: Any, total: int | None, limit: int | None, label: str,
                 url: str, progress: Callable[[int, int | None], None] | None) -> tuple[str | None, int]:
        """Read the body into ``spool``: ``(None, decoded size)`` when whole, else ``(why, size)``."""
        size = 0
        try:
            for chunk in response.iter_content(1 << 18):
                spool.write(chunk)
                size += len(chunk)
                if limit is not None and size > limit:
                    raise TooLarge(f"{label}{url} is larger than the limit of {limit:,} bytes (--max-image-bytes)")
                if progress:
                    progress(size, total)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as e:
            return type(e).__name__, size
        on_wire = response.raw.tell() if hasattr(response.raw, "tell") else size
        if total is not None and on_wire != total:
            return f"got {on_wire} of {total} bytes", size
        return None, size
