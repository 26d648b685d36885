"""HTTP for sources: timeouts, retries with backoff, and no secret in any message.

Labelling platforms rate-limit (429) and their CDNs hiccup (5xx, resets); a pull of
100k images must ride through that without the user noticing. Retries use exponential
backoff with full jitter and honour ``Retry-After``. Errors name the URL with keys
redacted and never include a response body that might echo one.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from typing import Any, BinaryIO, Callable
from urllib.parse import urlsplit

import requests

from .errors import SourceError
from .secrets import redact

RETRY_STATUS = frozenset({429, 500, 502, 503, 504, 520, 524})


class HttpError(SourceError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(redact(message))
        self.status = status


class _Session(requests.Session):
    """A Session that reads proxy and CA settings from the environment once per host.

    requests re-scans every environment variable (proxies, no_proxy, CA bundles) on every
    request: about a third of the CPU of fetching a small image, paid under the GIL by all
    download threads. The environment does not change during a pull, so once per host is
    enough. Explicit per-request proxies bypass the cache.
    """

    def __init__(self) -> None:
        super().__init__()
        self._environment: dict[tuple, dict[str, Any]] = {}

    def merge_environment_settings(self, url: str, proxies: Any, stream: Any, verify: Any, cert: Any) -> dict[str, Any]:
        if proxies:
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, verify, cert)
        if key not in self._environment:
            self._environment[key] = super().merge_environment_settings(url, proxies, None, verify, cert)
        return {**self._environment[key], "stream": requests.sessions.merge_setting(stream, self.stream)}


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
    ):
        """``pool_size``: keep-alive connections per host; set it to at least the number of
        threads sharing this client, or requests opens (and drops) a connection per request."""
        self.session = session or _Session()
        if pool_size:
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=pool_size)
            self.session.mount("http://", adapter)
            self.session.mount("https://", adapter)
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self.sleep = sleep

    def _delay(self, attempt: int, response: requests.Response | None) -> float:
        if response is not None and response.headers.get("Retry-After"):
            try:
                return min(float(response.headers["Retry-After"]), self.max_backoff * 4)
            except ValueError:
                pass  # an HTTP date: fall back to our own backoff
        return random.uniform(0, min(self.max_backoff, self.backoff * 2**attempt))

    def request(self, method: str, url: str, what: str = "", **kwargs: Any) -> requests.Response:
        """Send with retries; return the first non-retryable response (the caller checks it)."""
        kwargs.setdefault("timeout", self.timeout)
        label = f"{what}: " if what else ""
        for attempt in range(self.attempts):
            response = None
            try:
                response = self.session.request(method, url, **kwargs)
                if response.status_code not in RETRY_STATUS:
                    return response
                reason = f"HTTP {response.status_code}"
                response.close()
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                reason = type(e).__name__  # ChunkedEncodingError: the body was cut short
            if attempt == self.attempts - 1:
                raise HttpError(f"{label}{method} {url} failed after {self.attempts} attempts ({reason})",
                                response.status_code if response is not None else None)
            self.sleep(self._delay(attempt, response))
        raise AssertionError("unreachable")

    def json(self, method: str, url: str, what: str = "", **kwargs: Any) -> Any:
        """Request and decode JSON, with a clear error for a non-2xx status or a bad body."""
        response = self.request(method, url, what, **kwargs)
        label = f"{what}: " if what else ""
        if not response.ok:
            raise HttpError(f"{label}{method} {url} returned HTTP {response.status_code}", response.status_code)
        try:
            return response.json()
        except ValueError:
            raise HttpError(f"{label}{method} {url} returned a body that is not valid JSON", response.status_code) from None

    def download(self, url: str, out: BinaryIO, what: str = "", progress: Callable[[int, int | None], None] | None = None,
                 **kwargs: Any) -> int:
        """Stream ``url`` into ``out``; a broken transfer is retried from the start.

        Bytes go to a spooled temp file first so that ``out`` only ever receives a whole,
        length-checked body. Returns the number of bytes written.
        """
        label = f"{what}: " if what else ""
        for attempt in range(self.attempts):
            response = self.request("GET", url, what, stream=True, **kwargs)
            if not response.ok:
                response.close()
                raise HttpError(f"{label}GET {url} returned HTTP {response.status_code}", response.status_code)
            expected = response.headers.get("Content-Length")
            total = int(expected) if expected and expected.isdigit() else None
            with tempfile.SpooledTemporaryFile(max_size=32 << 20) as spool:
                size = 0
                try:
                    for chunk in response.iter_content(1 << 16):
                        spool.write(chunk)
                        size += len(chunk)
                        if progress:
                            progress(size, total)
                except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as e:
                    reason = type(e).__name__
                else:
                    if total is None or size == total:
                        spool.seek(0)
                        shutil.copyfileobj(spool, out, 1 << 20)
                        return size
                    reason = f"got {size} of {total} bytes"
                finally:
                    response.close()
            if attempt == self.attempts - 1:
                raise HttpError(f"{label}download of {url} failed after {self.attempts} attempts ({reason})")
            self.sleep(self._delay(attempt, None))
        raise AssertionError("unreachable")
