"""A task's image, read as a pull reads one: bounded in size and time, whole, and the key only where it belongs.

Label Studio's own ``/data/...`` URLs (uploads, local storage) need the API key, and get it only
when they are on ``--url``, the server ``tlsync serve`` was told about, never on a host a request
names. Other http(s) URLs are fetched without it; local paths only inside ``--images-root``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tlsync.errors import TlsyncError
from tlsync.http import HttpClient
from tlsync.images import check_complete_image
from tlsync.paths import ExportRoot


class ImageFetcher:
    def __init__(self, server: str | None, images_root: Path | None, max_bytes: int, timeout: float):
        self.http = HttpClient(attempts=3, pool_size=16)
        self.server = server.rstrip("/") if server else None
        self.root = ExportRoot(images_root) if images_root else None
        self.max_bytes, self.timeout = max_bytes, timeout
        self._client: Any = None

    def client(self) -> Any:
        """The Label Studio client of the plugin (PATs and legacy tokens, as its pull uses them)."""
        if self._client is None:
            try:
                from tlsync_labelstudio_client import LabelStudioClient
            except ImportError:
                raise TlsyncError("images under Label Studio's /data/ need the tlsync-labelstudio plugin: "
                                  "pip install ./plugins/tlsync-labelstudio") from None
            self._client = LabelStudioClient(self.http, self.server or "")
        return self._client

    def fetch(self, reference: str, folder: Path) -> tuple[Path, int, int]:
        """The image at ``reference`` as a checked local file (in ``folder`` if downloaded), and its size."""
        path = folder / "image"
        parts = urlsplit(reference)
        on_server = reference.startswith("/data/") or bool(self.server and reference.startswith(self.server + "/data/"))
        if on_server:
            if not self.server:
                raise TlsyncError(f"image {reference} is on the Label Studio server: start tlsync serve with --url "
                                  f"(or LABEL_STUDIO_URL) and LABEL_STUDIO_API_KEY")
            url = reference if parts.scheme else self.server + reference
            with open(path, "wb") as out:
                self.client().download(url, out, f"image {reference}", max_bytes=self.max_bytes,
                                       deadline=self.timeout)
        elif parts.scheme in ("http", "https"):
            with open(path, "wb") as out:
                self.http.download(reference, out, f"image {reference}", max_bytes=self.max_bytes,
                                   deadline=self.timeout)
        elif parts.scheme:
            raise TlsyncError(f"image {reference}: {parts.scheme}:// is not supported "
                              f"(http(s), /data/ or a local path)")
        else:
            path = self._local(reference)
        width, height, _ext = check_complete_image(path)
        return path, width, height

    def _local(self, reference: str) -> Path:
        if self.root is None:
            raise TlsyncError(f"image {reference} is a local path: start tlsync serve with --images-root FOLDER "
                              f"to allow local images from that folder")
        candidate = Path(reference) if os.path.isabs(reference) else self.root.root / reference
        if "\x00" in reference or not self.root.contains(candidate):  # symlinks and .. resolved as open would
            raise TlsyncError(f"image {reference} lies outside --images-root {self.root.root}; refused")
        path = candidate
        size = path.stat().st_size if path.is_file() else None
        if size is None:
            raise TlsyncError(f"image {reference}: no such file under --images-root")
        if size > self.max_bytes:
            raise TlsyncError(f"image {reference} is {size:,} bytes, larger than --max-image-bytes "
                              f"({self.max_bytes:,})")
        return path
