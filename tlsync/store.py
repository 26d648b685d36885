"""The local dataset store under ``TLSYNC_HOME``.

Layout::

    $TLSYNC_HOME/
      images/ab/<sha256>.jpg     every image once, named by its content
      fetch-cache.sqlite         source cache key -> sha256, size (skip refetching)
      datasets/<name>/<N>/       one folder per version: items.jsonl + dataset.json
      datasets/<name>/.lock      held while a pull writes a new version
      datasets/<name>/last-pull.json  what the last pull read (lets an unchanged re-pull skip it)
      cache/<source>/...         source downloads (e.g. Roboflow zips)

Images are copied, not linked, into the store: a hard link would change under us when
the user edits the original in place, and a symlink breaks when they move the folder.
Content addressing makes the copy cheap across versions and datasets.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson

from .atomic import fsync_dir
from .durable import DurableBatch
from .errors import TlsyncError
from .fetch_cache import FetchCache
from .files import file_sha256, open_regular  # noqa: F401  (file_sha256 re-exported)
from .format import Item
from .images import EXTENSIONS, IncompleteImage, check_complete_image, image_info  # noqa: F401  (re-exported)
from .locks import LockTimeout, exclusive
from .manifest import INFO, ITEMS, atomic_write_json, read_info, read_items
from .sink import ImageSink, create_temp, process_alive, store_write_error

T = TypeVar("T")

LAST_PULL = "last-pull.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
IMAGE_SUFFIXES = frozenset(EXTENSIONS.values())
# Images whose bytes this process has hashed: path -> (size, inode, mtime, ctime) when it matched.
_CHECKED: dict[str, tuple[int, int, int, int]] = {}


class ChangedImage(TlsyncError):
    """An image in the store whose bytes no longer match the sha256 its dataset recorded."""


def default_home() -> Path:
    env = os.environ.get("TLSYNC_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("tlsync", appauthor=False))


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"chess@2"`` -> ``("chess", 2)``; ``"chess"`` -> ``("chess", None)`` (the latest)."""
    name, _, version = ref.partition("@")
    if not NAME_RE.match(name):
        raise TlsyncError(f"dataset name {name!r}: use letters, digits, '.', '_' or '-'")
    if not version:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise TlsyncError(f"dataset {ref!r}: version must be a positive number, as in {name}@1")
    return name, int(version)


@dataclass
class DatasetVersion:
    """A finished, read-only dataset version."""

    store: Store
    name: str
    version: int
    folder: Path
    info: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def categories(self) -> list[str]:
        return list(self.info["categories"])

    @property
    def content_hash(self) -> str:
        return self.info["content_hash"]

    def items(self, split: str | None = None) -> Iterator[Item]:
        """Stream the items, optionally of one split only."""
        for item in read_items(self.folder / ITEMS):
            if split is None or item.split == split:
                yield item

    def image_path(self, item: Item) -> Path:
        """The item's image in the store, named by its sha256 alone and checked against it.

        The manifest is a file like any other: an ``items.jsonl`` edited to name
        ``../../somewhere`` must not make ``export`` copy that file out, and an image whose
        bytes changed after the pull must not be exported or trained on in silence. So the
        path is built from the sha256 (the manifest's path only lends its extension), and
        the bytes are hashed once per image per process (``Store.checked_image``).
        """
        return self.store.checked_image(item, self.ref)


class Store:
    def __init__(self, home: str | os.PathLike | None = None):
        self.home = Path(home).expanduser() if home else default_home()
        self.images_dir = self.home / "images"
        self.datasets_dir = self.home / "datasets"
        self._cache = FetchCache(self.home / "fetch-cache.sqlite")
        self._durable = DurableBatch(self._cache.put_many)
        # The write path works on strings: a fetch thread stores thousands of images a second,
        # and pathlib's parsing and joining cost it more than the system calls they name.
        self._home = str(self.home)
        self._tmp_dir = os.path.join(self._home, "images", ".tmp")
        self._folders: set[str] = set()  # image folders known to exist (see ``_folder``)

    # -- images ---------------------------------------------------------------------------

    def image_relpath(self, sha256: str, ext: str) -> str:
        return f"images/{sha256[:2]}/{sha256}{ext}"

    def image_of(self, item: Item, ref: str = "") -> Path:
        """Where the item's image lives, from its sha256 only; a one-line refusal if it cannot."""
        where = f"{ref + ': ' if ref else ''}item {item.id!r}"
        sha = item.image.sha256
        if not isinstance(sha, str) or not SHA256_RE.match(sha):
            raise TlsyncError(f"{where}: its manifest holds no valid sha256 (got {str(sha)[:80]!r}); "
                              f"refused (tlsync datasets verify {ref or 'NAME'} lists every problem)")
        hint = item.image.path
        ext = os.path.splitext(hint)[1].lower() if isinstance(hint, str) else ""
        candidates = [ext] if ext in IMAGE_SUFFIXES else sorted(IMAGE_SUFFIXES)
        for suffix in candidates:
            path = self.home / self.image_relpath(sha, suffix)
            if len(candidates) == 1 or path.exists():
                return path
        return self.home / self.image_relpath(sha, candidates[0])

    def checked_image(self, item: Item, ref: str = "") -> Path:
        """``image_of``, refusing a file whose bytes no longer hash to the item's sha256.

        Each image is hashed once per process; after that a ``stat`` showing the same size,
        inode and change time (which no write can leave as it was) stands for the hash.
        """
        path = self.image_of(item, ref)
        sha = cast(str, item.image.sha256)
        try:
            st = os.stat(path)
        except OSError as e:
            raise TlsyncError(f"{ref + ': ' if ref else ''}item {item.id!r}: its image {path} is missing from the "
                              f"store ({e.strerror or e}); pull the dataset again") from None
        seen = (st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)
        if _CHECKED.get(str(path)) == seen:
            return path
        actual = file_sha256(path)
        if actual != sha:
            raise ChangedImage(f"{ref + ': ' if ref else ''}item {item.id!r}: its image changed in the store after "
                               f"the pull (sha256 {sha} recorded, {actual} found in {path}); refused: pull the "
                               f"dataset again, or see tlsync datasets verify {ref or 'NAME'}")
        _CHECKED[str(path)] = seen
        return path

    def add_image(self, write: Callable[[ImageSink], None], max_bytes: int | None = None,
                  deadline: float | None = None) -> tuple[str, str, int, int]:
        """``write_image``, and the image joins this process's durability batch (``adopt_image``)."""
        placed = self.write_image(write, max_bytes, deadline)
        self.adopt_image(placed[0])
        return placed

    def adopt_image(self, rel: str) -> None:
        """Make an image placed in the store (by this process or a fetch worker) durable before any version names
        it. Not fsynced at once: the batch fsyncs many together, and a killed pull may have placed one without
        making it durable, so one found in place joins the batch too (fsyncing a clean file costs little)."""
        self._durable.add_file(self.home / rel)

    def write_image(self, write: Callable[[ImageSink], None], max_bytes: int | None = None,
                    deadline: float | None = None) -> tuple[str, str, int, int]:
        """Let ``write`` fill a temp file, check it is a whole image, move it to its content address.

        Returns ``(relative path, sha256, width, height)``. Bytes land in ``images/.tmp``
        first (named after this process), so a killed pull leaves no partial image under a
        real name; ``clean_tmp`` removes what dead processes left behind. Any error writing
        the store is a ``StoreWriteError``, whatever ``write`` did with it.
        """
        tmp_dir = self._tmp_dir
        try:
            fd, tmp = self._folder(tmp_dir, lambda: create_temp(tmp_dir))
        except OSError as e:
            raise store_write_error(e, tmp_dir) from None
        try:
            sink = ImageSink(fd, self.home, max_bytes, deadline)
            try:
                write(sink)
                sink.flush()
            finally:
                sink.close()  # a full disk can fail here too
                if sink.failed:
                    raise sink.failed from None
            width, height, ext = check_complete_image(tmp, sink.kept())  # IncompleteImage when cut short
            rel = self.image_relpath(sink.sha256(), ext)
            self._place(tmp, os.path.join(self._home, rel))
            return rel, sink.sha256(), width, height
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _place(self, tmp: str, dest: str) -> None:
        folder = os.path.dirname(dest)
        try:
            if os.path.exists(dest):
                os.unlink(tmp)
            else:
                self._folder(folder, lambda: os.replace(tmp, dest))
        except OSError as e:
            raise store_write_error(e, folder) from None

    def _folder(self, folder: str, act: Callable[[], T]) -> T:
        """``act()``, which writes into ``folder``, with ``folder`` created first if need be.

        A pull's images go into 257 folders: making sure of one with ``mkdir(exist_ok=True)``
        for every image cost two system calls and a caught exception each time (0.09 ms of
        CPU per image). Known folders are remembered; one removed meanwhile is made again.
        """
        if folder not in self._folders:
            os.makedirs(folder, exist_ok=True)
            self._folders.add(folder)
        try:
            return act()
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            return act()

    def sync_images(self) -> None:
        """Make every image placed so far durable and record its fetch-cache row (before a publish)."""
        self._durable.flush()

    def clean_tmp(self) -> None:
        """Remove temp images left by pulls whose process is gone (e.g. SIGKILLed)."""
        tmp_dir = self.images_dir / ".tmp"
        if not tmp_dir.exists():
            return
        for path in tmp_dir.iterdir():
            pid = path.name.split("-", 1)[0]
            if pid.isdigit() and not process_alive(int(pid)):
                path.unlink(missing_ok=True)

    # -- fetch cache ----------------------------------------------------------------------

    def cache_get(self, key: str) -> tuple[str, str, int, int] | None:
        """``(path, sha256, width, height)`` for a cache key whose image is still in the store."""
        row = self._cache.get(key)
        if row and (self.home / row[0]).exists():
            return row
        return None

    def cache_warm(self) -> None:
        """Open the fetch cache ahead of the first look-up (the fetcher does it while a source pages)."""
        self._cache.warm()

    def cache_get_many(self, keys: list[str]) -> dict[str, tuple[str, str, int, int]]:
        """``cache_get`` for many keys at once (at most SQLite's 999 variables a call)."""
        found: dict[str, tuple[str, str, int, int]] = {}
        for start in range(0, len(keys), 500):
            found.update(self._cache.get_many(keys[start:start + 500]))
        return {key: row for key, row in found.items() if (self.home / row[0]).exists()}

    def cache_close(self) -> None:
        """Record what can still be recorded (durable images only), then close the cache."""
        try:
            self._durable.close()  # the pull's outcome is decided: a publish flushed first, and raised
        finally:
            self._cache.close()

    def cache_put(self, key: str, path: str, sha256: str, width: int, height: int) -> None:
        """Queue the row: it reaches ``fetch-cache.sqlite`` once its image is durable."""
        self._durable.add_row((key, path, sha256, width, height))

    # -- datasets -------------------------------------------------------------------------

    def dataset_names(self) -> list[str]:
        if not self.datasets_dir.exists():
            return []
        return sorted(p.name for p in self.datasets_dir.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        folder = self.datasets_dir / name
        if not folder.exists():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / INFO).exists())

    def open(self, ref: str) -> DatasetVersion:
        """Open ``name`` (latest) or ``name@N``; a clear error when it does not exist."""
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if not versions:
            raise TlsyncError(f"dataset '{name}' not found in {self.datasets_dir} (pull it first: tlsync pull ...)")
        if version is None:
            version = versions[-1]
        elif version not in versions:
            raise TlsyncError(f"dataset '{name}' has no version {version} (versions: {', '.join(map(str, versions))})")
        folder = self.datasets_dir / name / str(version)
        return DatasetVersion(self, name, version, folder, read_info(folder))

    @contextmanager
    def lock(self, name: str, timeout: float = 600) -> Iterator[None]:
        """Serialise writers of one dataset, across processes."""
        folder = self.datasets_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with exclusive(folder / ".lock", timeout):
                yield
        except LockTimeout:
            raise TlsyncError(f"dataset '{name}' is locked by another pull ({folder / '.lock'})") from None

    @contextmanager
    def staging(self, name: str) -> Iterator[Path]:
        """A temp folder for a new version; removed unless ``publish`` renamed it (call under ``lock``).

        Only the lock's holder creates staging folders, so any found here were left by a
        pull that was killed (kill -9, power cut): they are swept first.
        """
        folder = self.datasets_dir / name
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(".staging-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".staging-"))
        except OSError as e:
            raise store_write_error(e, folder) from None
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def publish(self, name: str, staging: Path, version: int) -> None:
        """Rename a finished staging folder into place as ``name@version`` (call under ``lock``).

        Its files (``ManifestWriter.sync``, ``atomic_write_json``) and the images it names
        (``sync_images``) are already fsynced; the folder and the rename are made durable here.
        """
        try:
            fsync_dir(staging)
            os.replace(staging, self.datasets_dir / name / str(version))
        except OSError as e:
            raise store_write_error(e, self.datasets_dir / name) from None
        fsync_dir(self.datasets_dir / name)

    def remove(self, ref: str) -> list[str]:
        """Delete one version (``name@N``) or every version (``name``); images stay shared."""
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if not versions or (version is not None and version not in versions):
            raise TlsyncError(f"dataset '{ref}' not found")
        with self.lock(name):
            if version is None:
                shutil.rmtree(self.datasets_dir / name)
                return [f"{name}@{v}" for v in versions]
            shutil.rmtree(self.datasets_dir / name / str(version))
            return [f"{name}@{version}"]

    def last_pull(self, name: str) -> dict[str, Any] | None:
        """What ``record_pull`` saved for ``name``, or None (never pulled, or unreadable)."""
        try:  # orjson: a record nested too deep is unreadable, not a RecursionError
            record = orjson.loads((self.datasets_dir / name / LAST_PULL).read_bytes())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def record_pull(self, name: str, record: dict[str, Any]) -> None:
        """Remember the inputs and outcome of a pull (call under ``lock``)."""
        try:
            atomic_write_json(self.datasets_dir / name / LAST_PULL, record)
        except OSError as e:
            raise store_write_error(e, self.datasets_dir / name) from None

    def cache_dir(self, *parts: str) -> Path:
        """A folder for a source's downloads (e.g. Roboflow zips), kept between pulls."""
        path = self.home.joinpath("cache", *parts)
        path.mkdir(parents=True, exist_ok=True)
        return path
