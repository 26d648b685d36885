"""Talking to one Label Studio server with the key in ``LABEL_STUDIO_API_KEY``, as the official SDK does.

Label Studio has two kinds of key. A **Personal Access Token** (the default for new
organisations) is a JWT refresh token: it is never sent to the API itself but exchanged at
``POST /api/token/refresh`` for a short-lived access token, sent as ``Authorization: Bearer``.
A **legacy token** is a plain string sent as ``Authorization: Token``. Like ``label-studio-sdk``,
a key that decodes as a JWT is a PAT; anything else is a legacy token. The access token is
refreshed shortly before its ``exp`` and once more on a 401 (a server restart, a clock skew),
and is scrubbed from every message like the key itself.

A refused key ends in one line that carries the server's own reason (``"Invalid token."``,
``"legacy token authentication has been disabled for this organization"``...) and says which
kind of key was tried and where to get the other.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import time
from typing import IO, Any, BinaryIO, cast

from tlsync.errors import TlsyncError
from tlsync.fields import loads, max_json_bytes
from tlsync.http import HttpClient, HttpError
from tlsync.secrets import get_secret, remember

API_KEY = "LABEL_STUDIO_API_KEY"
URL = "LABEL_STUDIO_URL"
REFRESH_MARGIN = 30.0  # seconds before its exp that an access token is replaced
REASON_LIMIT = 200  # characters of the server's reason quoted in an error
REASON_BYTES = 64 << 10  # bytes of a refusal (or a token answer) read at most

_HINTS = {
    "pat": ("a Personal Access Token", "if your organisation uses legacy tokens instead, copy the legacy token "
            "from Account & Settings; a revoked or expired PAT must be created again there"),
    "legacy": ("a legacy token", "new organisations have legacy tokens switched off: create a Personal Access "
               "Token under Account & Settings, or ask an admin to enable legacy tokens for the organisation"),
}


def jwt_claims(token: str) -> dict[str, Any] | None:
    """The (unverified) payload of a JWT, or None when ``token`` is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    return claims if isinstance(claims, dict) else None


def key_kind(key: str) -> str:
    """``"pat"`` for a JWT (a Personal Access Token), else ``"legacy"``."""
    return "pat" if jwt_claims(key) is not None else "legacy"


class LabelStudioClient:
    """The server's ``/api/`` and ``/data/`` routes with the right ``Authorization``; the key goes nowhere else."""

    def __init__(self, http: HttpClient, server: str, clock: Any = time.time):
        self.http, self.server, self.clock = http, server.rstrip("/"), clock
        self._key: str | None = None
        self._access: tuple[str, float] | None = None  # (token, exp as a Unix time)
        self._lock = threading.Lock()

    @property
    def key(self) -> str:
        if self._key is None:
            self._key = get_secret(API_KEY)
        return self._key

    @property
    def kind(self) -> str:
        return key_kind(self.key)

    def headers(self, renew: bool = False) -> dict[str, str]:
        """``Authorization`` for the next request; ``renew`` forces a fresh access token (after a 401)."""
        if self.kind == "legacy":
            return {"Authorization": f"Token {self.key}"}
        with self._lock:  # image fetches run in threads: one refresh serves them all
            if renew or self._access is None or self._access[1] - REFRESH_MARGIN <= self.clock():
                self._access = self._refresh()
            return {"Authorization": f"Bearer {self._access[0]}"}

    def _refresh(self) -> tuple[str, float]:
        url = f"{self.server}/api/token/refresh/"
        response = self.http.request("POST", url, "Label Studio token refresh", json={"refresh": self.key},
                                     stream=True)
        if response.status_code in (400, 401, 403):
            raise self.refused(response.status_code, _reason(response), "POST /api/token/refresh")
        if not response.ok:
            response.close()
            raise HttpError(f"Label Studio: POST {url} returned HTTP {response.status_code}", response.status_code)
        try:
            answer = loads(_read(response, REASON_BYTES), f"Label Studio: POST {url}")
            access = answer.get("access") if isinstance(answer, dict) else None
        except (ValueError, TlsyncError):
            access = None
        if not isinstance(access, str) or not access:
            raise TlsyncError(f"Label Studio: POST {url} returned no access token")
        remember(access)
        claims = jwt_claims(access) or {}
        exp = claims.get("exp")
        return access, float(exp) if isinstance(exp, (int, float)) else self.clock() + 60.0

    def refused(self, status: int, reason: str, what: str) -> TlsyncError:
        name, hint = _HINTS[self.kind]
        said = f": {reason}" if reason else ""
        return TlsyncError(f"Label Studio at {self.server} refused {name} in {API_KEY} ({what}: HTTP {status}{said}); "
                           f"{hint}")

    def json(self, method: str, route: str, what: str = "Label Studio", **kwargs: Any) -> Any:
        """Call ``/api/...`` and decode the answer; a non-2xx answer other than 401 is an ``HttpError``."""
        url = f"{self.server}{route}"
        response = self._send(method, url, what, **kwargs)
        if not response.ok:
            reason = _reason(response)
            if response.status_code in (401, 403):
                raise self.refused(response.status_code, reason, f"{method} {route.split('?')[0]}")
            said = f": {reason}" if reason else ""
            raise HttpError(f"{what}: {method} {url} returned HTTP {response.status_code}{said}",
                            response.status_code)
        body = _read(response, max_json_bytes(), f"{what}: {method} {url}")
        if not body:
            return None  # 204 No Content (a DELETE)
        try:
            return loads(body, f"{what}: {method} {url}")
        except ValueError:
            raise HttpError(f"{what}: {method} {url} returned a body that is not valid JSON",
                            response.status_code) from None

    def _send(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        extra = kwargs.pop("headers", {})
        response = self.http.request(method, url, what, headers={**self.headers(), **extra}, stream=True, **kwargs)
        if response.status_code == 401 and self.kind == "pat":
            response.close()
            _rewind(kwargs)
            response = self.http.request(method, url, what, headers={**self.headers(renew=True), **extra},
                                         stream=True, **kwargs)
        return response

    def download(self, url: str, out: IO[bytes], what: str, **kwargs: Any) -> int:
        """``HttpClient.download`` of one of the server's own URLs, with the key (renewed once on a 401)."""
        for renew in (False, True):
            try:
                return self.http.download(url, cast(BinaryIO, out), what, headers=self.headers(renew), **kwargs)
            except HttpError as e:
                if e.status == 401 and self.kind == "pat" and not renew:
                    continue  # a refused download wrote nothing into ``out``: once more, with a fresh token
                if e.status in (401, 403):
                    raise self._explain(url, e.status) from None
                raise
        raise AssertionError("unreachable")

    def _explain(self, url: str, status: int) -> TlsyncError:
        """A download's refusal, with the reason the server gives for this key (a download has no JSON body)."""
        probe = self.http.request("GET", f"{self.server}/api/current-user/whoami", "Label Studio",
                                  headers=self.headers(), stream=True)
        reason = _reason(probe) if probe.status_code in (401, 403) else ""
        probe.close()
        return self.refused(status, reason or "the key may not read this project's files",
                            f"GET {url.split('?')[0]}")


def _read(response: Any, limit: int, what: str = "") -> bytes:
    """A streamed body, whole; one over ``limit`` bytes is refused (for a reason: cut) before it is all read."""
    chunks, size = [], 0
    try:
        for chunk in response.iter_content(1 << 16):
            size += len(chunk)
            if size > limit:
                if not what:
                    break
                raise TlsyncError(f"{what}: the answer is larger than {limit:,} bytes; refused")
            chunks.append(chunk)
    finally:
        response.close()
    return b"".join(chunks)


def _reason(response: Any) -> str:
    """The server's ``detail`` (or body) in one bounded, printable line: it is quoted in an error."""
    raw = _read(response, REASON_BYTES)
    try:
        body = loads(raw, "Label Studio's refusal")
        text = body.get("detail") or body.get("message") or body if isinstance(body, dict) else body
    except (ValueError, TlsyncError):  # not JSON, or too deep: the raw start of it
        text = raw[:REASON_LIMIT * 4].decode("utf-8", "replace")
    printable = "".join(c if c.isprintable() else " " for c in str(text))  # escape sequences lose their ESC
    line = " ".join(printable.split())
    return line[:REASON_LIMIT] + ("..." if len(line) > REASON_LIMIT else "")


def _rewind(kwargs: dict[str, Any]) -> None:
    """An upload's file is read by the first attempt: start it again for the retry."""
    for value in (kwargs.get("files") or {}).values():
        handle = value[1] if isinstance(value, tuple) else value
        if hasattr(handle, "seek"):
            handle.seek(0)

