"""Plain streamed GETs sent without requests, for the many image downloads of a pull.

``requests`` does a lot per request that an anonymous image GET does not need: it merges
cookies, hooks, auth and settings, re-prepares and re-quotes the URL, looks for a
``.netrc``, builds a response object and copies its headers. That is about half a
millisecond of CPU per image, held under the GIL that all fetch threads share, so at 64
threads it bounds the pull, not the network. Here what requests would decide for a host
(proxy, ``.netrc``, CA bundle, headers) is worked out once, and the GET goes out on a
keep-alive connection of the fetch thread's own (``http_lean``), with the
same headers, timeouts and TLS settings; the answer reads like a ``requests.Response``
(failures are raised as the same requests exceptions, so callers and their messages do not change).

Anything that might make requests behave differently goes through requests instead: a
mocked or custom transport adapter, a proxy or ``.netrc`` entry for the host, client
certificates or ``verify=False``, session cookies for the host, auth, hooks or params, extra request
options, credentials or unusual characters in the URL, and redirects to such a URL.
"""

from __future__ import annotations

import re
import threading
from typing import Any
from urllib.parse import urljoin

import requests
from requests.adapters import HTTPAdapter
from requests.utils import get_netrc_auth, requote_uri, select_proxy

from .http_lean import LeanGet, LeanResponse

_STOCK_SEND = HTTPAdapter.send  # ``responses`` and friends patch it: then requests must send
# Printable ASCII only, no user info: nothing that requests would quote, IDNA-encode or turn into auth.
_PLAIN_URL = re.compile(r"(https?)://([A-Za-z0-9.\-]+(?::\d+)?)([/?][\x21-\x7e]*)?", re.IGNORECASE)
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _domain_matches(hostname: str, domain: str) -> bool:
    """A cookie of ``domain`` may go to ``hostname`` (the cookie jar names a dotless host ``host.local``)."""
    domain = domain.lstrip(".").lower()
    names = (hostname, f"{hostname}.local") if "." not in hostname else (hostname,)
    return any(name == domain or name.endswith(f".{domain}") for name in names)


class _Plan:
    """How one scheme://host is reached: requests' adapter for it (to notice a new one), and the GETs."""

    def __init__(self, adapter: HTTPAdapter, lean: LeanGet):
        self.adapter = adapter
        self.lean = lean


class DirectGet:
    """Sends eligible GETs of one ``requests.Session`` without it (see the module's docstring)."""

    def __init__(self, session: requests.Session):
        self.session = session
        self._plans: dict[tuple[str, str], _Plan | None] = {}
        self._cookie_hosts: dict[tuple[str, int], bool] = {}
        self._lock = threading.Lock()

    def get(self, url: str, timeout: tuple[float, float]) -> requests.Response | LeanResponse | None:
        """The response to ``GET url``, or None where requests must send it. Redirects are followed
        as requests follows them; one to a URL this cannot send is handed to requests."""
        for _ in range(self.session.max_redirects + 1):
            plan = self._plan(url)
            if plan is None:
                return None
            response = self._send(plan, url, timeout)
            location = response.headers.get("Location")
            if response.status_code not in _REDIRECTS or not location:
                return response
            response.close()
            url = urljoin(url, requote_uri(location))
            if self._plan(url) is None:  # e.g. a proxy for the new host: requests sends this hop
                return self.session.request("GET", url, timeout=timeout, stream=True)
        raise requests.TooManyRedirects(f"Exceeded {self.session.max_redirects} redirects.")

    def sends(self, url: str) -> bool:
        """Whether a GET of ``url`` goes out here rather than through requests (nothing about it needs requests)."""
        return self._plan(url) is not None

    def _send(self, plan: _Plan, url: str, timeout: tuple[float, float]) -> LeanResponse:
        plain = _PLAIN_URL.fullmatch(url.split("#", 1)[0])
        rest = (plain.group(3) if plain else None) or ""
        target = requote_uri(rest if rest.startswith("/") else f"/{rest}")  # requests' path_url, fragment dropped
        return plan.lean.get(target, url, timeout)

    def _plan(self, url: str) -> _Plan | None:
        session = self.session
        if (HTTPAdapter.send is not _STOCK_SEND or session.auth is not None or session.params or session.cert
                or session.verify is False or any(session.hooks.values())
                or not (plain := _PLAIN_URL.fullmatch(url.split("#", 1)[0]))):
            return None
        host = (plain.group(1).lower(), plain.group(2).lower())
        if self._has_cookies_for(host[1].rsplit(":", 1)[0]):
            return None
        adapter = session.get_adapter(url)
        if host not in self._plans or ((plan := self._plans[host]) is not None and plan.adapter is not adapter):
            with self._lock:
                self._plans[host] = self._new_plan(url, adapter)
        return self._plans[host]

    def _has_cookies_for(self, hostname: str) -> bool:
        """Whether the session holds a cookie whatever its path for ``hostname``: then requests must send.

        The API's own cookies (a load balancer's, say) must not turn every image download back
        into a requests one; only a cookie for the image host does. Cached until the jar changes.
        """
        jar = self.session.cookies
        if not len(jar):
            return False
        key = (hostname, len(jar))
        if key not in self._cookie_hosts:
            self._cookie_hosts[key] = any(_domain_matches(hostname, c.domain) for c in jar)
        return self._cookie_hosts[key]

    def _new_plan(self, url: str, adapter: Any) -> _Plan | None:
        """How requests would reach ``url`` (scheme, host, port, CA bundle, headers), unless something
        about the host (a custom adapter, a proxy, client certificates, a ``.netrc`` entry) asks for requests."""
        if type(adapter) is not HTTPAdapter or not hasattr(adapter, "build_connection_pool_key_attributes"):
            return None  # a custom adapter, or requests < 2.32: requests sends
        settings = self.session.merge_environment_settings(url, {}, None, None, None)
        verify, cert = settings.get("verify"), settings.get("cert")
        if select_proxy(url, settings.get("proxies") or {}) or cert:
            return None
        if not (verify is True or (isinstance(verify, str) and verify)):  # verify=False: requests warns, let it
            return None
        if self.session.trust_env and get_netrc_auth(url):
            return None
        request = requests.Request("GET", url).prepare()
        host_params, _ = adapter.build_connection_pool_key_attributes(request, verify, cert)
        # The session's headers as a plain dict, taken once: copying requests' CaseInsensitiveDict
        # per request is slow Python. The session is HttpClient's own.
        headers: dict[str, Any] = dict(self.session.headers.items())
        try:
            lean = LeanGet(host_params["scheme"], host_params["host"], host_params["port"], headers, verify)
        except (ValueError, UnicodeError):  # a header with a line break in it: requests refuses it in its words
            return None
        return _Plan(adapter, lean)
