"""What a source is: the class every connector (built-in or third-party) subclasses.

A source turns its platform's export into ``Item``s and knows how to fetch an image's
bytes. Everything else (caching images, validating boxes, splits, versions, progress,
``--on-error``) is the core's job, so a connector stays a page long.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar

import click

from .errors import InvalidItem, SourceError, TlsyncError
from .files import NotRegularFile, open_regular
from .format import Box, ImageRef, Item

if TYPE_CHECKING:
    from .http import HttpClient
    from .store import Store


class PullContext:
    """Handed to ``Source.items``: the pull's settings and the way to report bad input.

    ``ctx.bad(message)`` is how a source reports one bad item or box: with
    ``--on-error fail`` it stops the pull with that message; with ``--on-error skip`` it is
    counted under the message and the source carries on (it must then drop that item/box).
    """

    def __init__(self, store: Store, source_name: str, on_error: str = "fail"):
        self.store = store
        self.source_name = source_name
        self.on_error = on_error
        self.categories: list[str] | None = None
        self.skipped: dict[str, int] = {}
        self.not_used: dict[str, int] = {}
        self.notes: list[str] = []

    def bad(self, message: str) -> None:
        """Report bad input: raises under ``fail``, counts under ``skip``."""
        if self.on_error == "fail":
            raise SourceError(message)
        self.skip(message)

    def item(self, item_id: Any, image: ImageRef, annotations: list[Box] | None = None, split: str | None = None,
             metadata: dict[str, Any] | None = None, where: str = "") -> Item | None:
        """``Item(...)``, or None after ``bad`` when the id (or split) breaks the format's rules.

        Ids come from outside (file names, a platform's fields): an id with a control
        character, or one that is not a string or an integer, is that item's bad field, which
        ``--on-error skip`` counts, rather than an exception that would end the source's loop.
        """
        try:
            return Item(item_id, image, annotations or [], split, metadata or {})
        except InvalidItem as e:
            self.bad(f"{where}: {e}" if where else str(e))
            return None

    def skip(self, reason: str) -> None:
        """Count something dropped on purpose (e.g. a zero-area VOC box), whatever the mode."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def set_categories(self, names: list[str]) -> None:
        """Declare the ordered class list, including classes that have no boxes yet."""
        self.categories = list(names)

    def count_not_used(self, kind: str, n: int = 1) -> None:
        """Count annotations of a kind tlsync does not train on (polygons, keypoints...)."""
        self.not_used[kind] = self.not_used.get(kind, 0) + n

    def note(self, message: str) -> None:
        """A line for the pull summary (e.g. 'downloaded export v23')."""
        self.notes.append(message)

    def cache_dir(self, *parts: str) -> Path:
        return self.store.cache_dir(self.source_name, *parts)


class Source(ABC):
    """Subclass, set the class attributes, implement ``items``; override ``fetch`` if needed.

    ``options`` are click options: they appear in ``tlsync pull --source NAME --help`` and
    arrive as keyword arguments to ``items``. Options named in ``secret_options`` are
    removed from the parameters recorded in ``dataset.json``.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    options: ClassVar[list[click.Option]] = []
    secret_options: ClassVar[tuple[str, ...]] = ()
    concurrency: int = 4

    _http: HttpClient | None = None

    @property
    def http(self) -> HttpClient:
        """A shared HTTP client with tlsync's retry policy (created on first use)."""
        if self._http is None:
            from .http import HttpClient

            self._http = HttpClient()
        return self._http

    @abstractmethod
    def items(self, ctx: PullContext, **options: Any) -> Iterator[Item]:
        """Yield the items, in a deterministic order; report bad input with ``ctx.bad``."""

    def fetch(self, item: Item, out: BinaryIO) -> None:
        """Write the bytes of ``item.image.uri`` to ``out``.

        The default reads local paths and ``file://`` URIs, and downloads ``http(s)://``
        with retries. Override it for authenticated downloads.
        """
        uri = item.image.uri
        if uri.startswith(("http://", "https://")):
            self.http.download(uri, out, what=f"item '{item.id}'")
            return
        path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
        try:
            with open_regular(path) as f:
                shutil.copyfileobj(f, out, 1 << 20)
        except NotRegularFile as e:
            raise SourceError(f"item '{item.id}': cannot read image {path}: it is {e.kind}, not a regular file") \
                from None
        except OSError as e:
            raise SourceError(f"item '{item.id}': cannot read image {path}: {e.strerror or e}") from None

    def fingerprint(self, ctx: PullContext, **options: Any) -> str | None:
        """A string that changes whenever ``items`` could yield something different, or None.

        When it equals the one the dataset's last pull recorded (with the same options),
        ``tlsync pull`` answers "unchanged" without calling ``items`` or touching an image:
        re-reading a large export to learn that nothing changed is most of a warm pull.
        Sources that read local files return ``files_fingerprint(...)`` of every file
        ``items`` reads; None (the default) means "always read", right for remote sources
        whose listing must be fetched to know. It must be cheap and change nothing.
        """
        return None

    def recorded_params(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options as stored in ``dataset.json``: secrets removed, paths as strings."""
        return {
            k: (str(v.absolute()) if isinstance(v, Path) else v)
            for k, v in options.items()
            if k not in self.secret_options and v is not None
        }


def local_path(uri: str) -> Path | None:
    """The filesystem path of a local URI, or None for a remote one."""
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" in uri:
        return None
    return Path(uri)


# Files modified this recently may change again within one filesystem timestamp tick.
RACY_SECONDS = 2.0


def files_fingerprint(*paths: Path) -> str | None:
    """A digest of the names, sizes, times and inodes of every file in ``paths`` (walked).

    The same test ``make``, rsync and git use to decide a file is unchanged, and the one
    the fetch cache already trusts for local images. Like git with its "racy" entries,
    it returns None while any file is younger than ``RACY_SECONDS``: a rewrite within
    the same timestamp tick, with the same size, would otherwise go unnoticed.
    """
    digest = hashlib.sha256()
    newest = time.time_ns() - int(RACY_SECONDS * 1e9)
    seen: set[tuple[int, int]] = set()

    def add(path: str, st: os.stat_result) -> bool:
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode())
        return max(st.st_mtime_ns, st.st_ctime_ns) < newest

    def walk(folder: str) -> bool:
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:  # a symlink loop, or a folder given twice
            return True
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_dir():
                    if not walk(entry.path):
                        return False
                elif not add(entry.path, entry.stat()):
                    return False
        return True

    try:
        for path in paths:
            where = os.path.abspath(path)
            if not (walk(where) if os.path.isdir(where) else add(where, os.stat(where))):
                return None
    except OSError:
        return None  # something vanished or is unreadable: let the full read report it
    return digest.hexdigest()


def check_source(obj: Any, plugin: str) -> Source:
    """Refuse a registered object that is not a usable source, naming the plugin."""
    if not isinstance(obj, Source):
        raise TlsyncError(f"plugin '{plugin}' registered {obj!r}, which is not a tlsync.sources.Source")
    if not getattr(obj, "name", None):
        raise TlsyncError(f"plugin '{plugin}' registered a source without a name")
    from .plugin_options import check_options

    check_options(obj, "source", plugin)
    return obj
