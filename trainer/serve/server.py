"""The HTTP side of ``tlsync serve``: Label Studio's ML backend protocol over a threading server.

Routes are those Label Studio's ``ml/api_connector.py`` calls. ``/setup`` answers with the
``model_version`` (the run's name) only when the project's labelling config can show every class;
otherwise HTTP 400 whose reason phrase says what is missing, because Label Studio shows a failed
backend's error as requests words it, which quotes the reason phrase and not the body.
``/predict`` answers one entry per task, in order: the boxes as ``rectanglelabels`` in percent with
scores, or, for a task whose image could not be read, an entry without ``result`` (Label Studio
skips it) whose ``error`` says why; the server goes on.
"""

from __future__ import annotations

import base64
import hmac
import json
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tlsync.console import info
from tlsync.errors import TlsyncError
from tlsync.fields import loads
from tlsync.format import ImageRef, Item

from .batcher import Batcher
from .images import ImageFetcher
from .labelconfig import Target, read_config

MAX_BODY = 32 << 20  # bytes of one request
FETCH_THREADS = 8


@dataclass
class Backend:
    """What the handler needs: the model's classes and name, the image fetcher, the batcher, the password."""

    batcher: Batcher
    fetcher: ImageFetcher
    model_version: str
    categories: list[str]
    prediction: Callable[..., dict[str, Any]]  # the Label Studio plugin's Item -> prediction
    basic_auth: tuple[str, str] | None = None
    counts: dict[str, int] = field(default_factory=lambda: {"tasks": 0, "errors": 0, "requests": 0})
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def setup(self, body: dict[str, Any]) -> dict[str, Any]:
        read_config(body.get("schema"), self.categories)
        return {"model_version": self.model_version}

    def predict(self, body: dict[str, Any]) -> dict[str, Any]:
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise TlsyncError("the request has no 'tasks' list")
        target = read_config(body.get("label_config"), self.categories)
        with tempfile.TemporaryDirectory(prefix="tlsync-serve-") as tmp:
            def fetch(n: int) -> tuple[Path, int, int] | TlsyncError:
                return self._fetch(tasks[n], n, target, Path(tmp))

            if len(tasks) == 1:  # a person opening a task: no threads to start for one image
                fetched = [fetch(0)]
            else:
                with ThreadPoolExecutor(min(FETCH_THREADS, len(tasks))) as pool:
                    fetched = list(pool.map(fetch, range(len(tasks))))
            ready = [f for f in fetched if not isinstance(f, TlsyncError)]
            found = iter(self.batcher.boxes(ready))
            results = [f if isinstance(f, TlsyncError) else next(found) for f in fetched]
        answers = [self._answer(task, result, image, target)
                   for task, result, image in zip(tasks, results, fetched, strict=True)]
        with self._lock:
            self.counts["tasks"] += len(tasks)
            self.counts["errors"] += sum("error" in a for a in answers)
        return {"results": answers, "model_version": self.model_version}

    def _fetch(self, task: Any, n: int, target: Target, tmp: Path) -> tuple[Path, int, int] | TlsyncError:
        data = task.get("data") if isinstance(task, dict) else None
        reference = data.get(target.image_key) if isinstance(data, dict) else None
        if not isinstance(reference, str) or not reference:
            return TlsyncError(f"data.{target.image_key} is missing")
        folder = tmp / str(n)
        folder.mkdir()
        try:
            return self.fetcher.fetch(reference, folder)
        except TlsyncError as e:
            return e
        except OSError as e:  # this task's file only (the server serves the others), and said in its log line
            return TlsyncError(f"image {reference}: {e.strerror or e}")

    def _answer(self, task: Any, result: Any, image: Any, target: Target) -> dict[str, Any]:
        label = f"task {task.get('id') if isinstance(task, dict) else '?'}"
        if isinstance(result, TlsyncError):
            info(f"{label}: {result}")
            return {"model_version": self.model_version, "error": f"{label}: {result}"}
        _path, width, height = image
        item = Item(label, ImageRef("", width=width, height=height), result)
        return self.prediction(item, self.model_version, target.from_name, target.to_name)

    def allowed(self, header: str | None) -> bool:
        """HTTP Basic with ``--basic-auth-user`` and its password, compared in constant time."""
        if self.basic_auth is None:
            return True
        expected = base64.b64encode(f"{self.basic_auth[0]}:{self.basic_auth[1]}".encode()).decode()
        return hmac.compare_digest((header or "").encode(), f"Basic {expected}".encode())


def make_server(backend: Backend, host: str, port: int) -> ThreadingHTTPServer:
    """A server for ``backend`` on ``host:port`` (port 0: any free one), not yet serving."""

    class Handler(_Handler):
        pass

    Handler.backend = backend
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


class _Handler(BaseHTTPRequestHandler):
    backend: Backend
    server_version = "tlsync-serve"

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        routes: dict[str, Callable[..., dict[str, Any]]] = {
            "/health": lambda: {"status": "UP", "model_class": "tlsync", "model_version": self.model_version},
            "/versions": lambda: {"versions": [self.model_version]}}
        self._route(routes, None)

    def do_POST(self) -> None:  # noqa: N802
        routes = {"/setup": self.backend.setup, "/predict": self.backend.predict, "/webhook": _webhook}
        self._route(routes, self._body())

    @property
    def model_version(self) -> str:
        return self.backend.model_version

    def _route(self, routes: dict[str, Callable[..., dict[str, Any]]], body: Any) -> None:
        if not self.backend.allowed(self.headers.get("Authorization")):
            self._send(401, {"error": "basic auth required"}, {"WWW-Authenticate": 'Basic realm="tlsync serve"'})
            return
        handler = routes.get(self.path.split("?", 1)[0].rstrip("/") or "/")
        if handler is None:
            self._send(404, {"error": f"no route {self.command} {self.path.split('?', 1)[0]}"})
            return
        with self.backend._lock:
            self.backend.counts["requests"] += 1
        try:
            if isinstance(body, TlsyncError):
                raise body
            self._send(200, handler(body) if body is not None else handler())
        except TlsyncError as e:
            info(f"{self.command} {self.path}: {e}")
            self._send(400, {"error": str(e)}, reason=str(e))

    def _body(self) -> dict[str, Any] | TlsyncError:
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_BODY:
            return TlsyncError(f"a request body needs a Content-Length of at most {MAX_BODY:,} bytes")
        try:
            body = loads(self.rfile.read(int(length)), f"{self.command} {self.path}")
        except (ValueError, TlsyncError) as e:
            return TlsyncError(f"the request body is not valid JSON ({e})")
        return body if isinstance(body, dict) else TlsyncError("the request body must be a JSON object")

    def _send(self, status: int, answer: dict[str, Any], headers: dict[str, str] | None = None,
              reason: str | None = None) -> None:
        data = json.dumps(answer).encode()
        # A reason phrase is one line of Latin-1 in HTTP/1.1: keep it printable ASCII and short.
        phrase = "".join(c if c.isascii() and c.isprintable() else "?" for c in reason)[:300] if reason else None
        self.send_response(status, phrase)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(data)),
                            **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: each error is reported once, by the route that saw it."""


def _webhook(body: dict[str, Any]) -> dict[str, Any]:
    """Label Studio sends annotation events here for backends that train; this one predicts only."""
    return {"status": "ignored", "detail": "tlsync serve does not train here: pull the labels and run tlsync train"}


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve_until_stopped(server: ThreadingHTTPServer, backend: Backend) -> dict[str, Any]:
    """Serve until Ctrl-C; the counts and seconds served, for the closing line."""
    started = time.monotonic()
    previous = signal.signal(signal.SIGTERM, _interrupt)  # how service managers (and tests) stop it
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.server_close()
    return {**backend.counts, "batches": backend.batcher.batches, "seconds": time.monotonic() - started}
