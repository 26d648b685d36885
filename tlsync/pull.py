"""``tlsync pull``: source items -> cached images -> a new (or unchanged) dataset version.

The source yields items; worker threads fetch their images into the content-addressed
store (skipping any the fetch cache already has); the core validates boxes against the
real image size, assigns missing splits, and streams the result into a staging folder
that becomes ``name@N+1`` only when it differs from ``name@N``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import __version__, plugins
from .errors import InvalidItem, PluginError, TlsyncError
from .format import Item
from .manifest import INFO, ManifestWriter, atomic_write_json
from .secrets import for_storage, redact
from .sink import DEFAULT_DEADLINE, DEFAULT_MAX_IMAGE_BYTES, ImageTooLarge, StoreWriteError, store_write_error
from .sources import PullContext, Source, local_path
from .splits import DEFAULT_RATIOS, SplitGrouper
from .store import IncompleteImage, Store, parse_ref

# Attempts at a remote image that arrives cut short (no Content-Length to tell). The HTTP
# client already retried connection errors; this catches a body that merely ends early.
INCOMPLETE_ATTEMPTS = 3
CACHE_BATCH = 64  # items looked up in the fetch cache at once


@dataclass
class PullResult:
    dataset: str
    version: int
    unchanged: bool
    items: int
    boxes: int
    categories: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    not_used: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    fetched: int = 0
    cached: int = 0
    seconds: float = 0.0
    quick: bool = False  # unchanged by the source's fingerprint: nothing was read
    io_skipped: int = 0  # items skipped because their image could not be read or downloaded

    @property
    def ref(self) -> str:
        return f"{self.dataset}@{self.version}"


def _cache_key(item: Item) -> str:
    """Where the fetch cache looks an image up: the source's key, the URL, or path+size+mtime.

    ``os.path.abspath`` rather than ``Path.resolve``: this runs for every item of every
    re-pull, and resolving symlinks costs a stat per path component.
    """
    if item.image.cache_key:
        return item.image.cache_key
    path = local_path(item.image.uri)
    if path is None:
        return item.image.uri
    where = os.path.abspath(path)
    try:
        st = os.stat(where)
    except OSError:
        return f"file:{where}"  # fetch will report the missing file
    return f"file:{where}:{st.st_size}:{st.st_mtime_ns}"


class FetchFailed(TlsyncError):
    """One item's image could not be fetched; ``io`` when the cause was reading or the
    network (worth trying again next pull) rather than the bytes themselves."""

    def __init__(self, message: str, io: bool):
        super().__init__(message)
        self.io = io


@dataclass
class Limits:
    """Per-image bounds every source's fetch runs under (``--max-image-bytes``, deadline)."""

    max_bytes: int | None = DEFAULT_MAX_IMAGE_BYTES
    deadline: float | None = DEFAULT_DEADLINE


class _Fetcher:
    """Puts items' images into the store: cache hits at once, misses on worker threads."""

    def __init__(self, store: Store, source: Source, limits: Limits | None = None):
        self.store, self.source = store, source
        self.limits = limits or Limits()
        self.fetched = self.cached = 0

    def from_cache(self, items: list[Item]) -> list[Item | None]:
        """Each item with its cached image filled in, or None where it must be fetched.

        Runs on the calling thread, one lookup for a batch: a warm re-pull is all cache
        hits, and handing each one to a worker thread would cost more than the lookup.
        """
        keys = [_cache_key(item) for item in items]
        hits = self.store.cache_get_many(keys)
        found: list[Item | None] = []
        for item, key in zip(items, keys, strict=True):
            hit = hits.get(key)
            if hit:
                self.cached += 1
                _fill(item, *hit)
            found.append(item if hit else None)
        return found

    def fetch(self, item: Item) -> Item | TlsyncError:
        """Fetch one image into the store (on a worker thread).

        Errors are handed back to the main thread, which applies ``--on-error``; a
        ``StoreWriteError`` is handed back as it is, and ends the pull there.
        """
        remote = local_path(item.image.uri) is None
        for attempt in range(INCOMPLETE_ATTEMPTS if remote else 1):
            try:
                path, sha256, width, height = self.store.add_image(
                    lambda out: self._fetch(item, out), self.limits.max_bytes, self.limits.deadline)
                self.store.cache_put(_cache_key(item), path, sha256, width, height)
            except StoreWriteError as e:
                return e
            except IncompleteImage as e:
                if attempt + 1 < INCOMPLETE_ATTEMPTS and remote:
                    continue
                return self._failed(item, e, io=remote)
            except _SourceFetchError as e:
                return self._failed(item, e.error, io=True)
            except TlsyncError as e:
                return self._failed(item, e, io=False)
            _fill(item, path, sha256, width, height)
            return item
        raise AssertionError("unreachable")

    @staticmethod
    def _failed(item: Item, e: TlsyncError, io: bool) -> FetchFailed:
        """The error as the user sees it, printed or stored: signed URLs lose their query."""
        msg = str(e)
        if not msg.startswith("item "):
            msg = f"item '{item.id}': image {item.image.uri}: {msg}"
        return FetchFailed(for_storage(msg), io)

    def _fetch(self, item: Item, out: Any) -> None:
        """The source's ``fetch``, with a bug in it blamed on the source by name."""
        try:
            self.source.fetch(item, out)
        except (StoreWriteError, ImageTooLarge):
            raise
        except TlsyncError as e:  # the source could not get the bytes: network, unreadable file
            raise _SourceFetchError(e) from None
        except Exception as e:
            raise PluginError(f"item '{item.id}': {plugins.describe_source(self.source.name)} "
                              f"fetch raised {type(e).__name__}: {e}") from e

    def in_order(self, items: Iterable[Item], workers: int) -> Iterator[Item | TlsyncError]:
        """Every item with its image in the store, in input order, misses fetched in parallel.

        A bounded window of pending fetches keeps memory flat however long the source is.
        """
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tlsync-fetch") as pool:
            window: deque[Future | Item] = deque()

            def head_ready() -> bool:
                return bool(window) and (not isinstance(window[0], Future) or window[0].done())

            def pop() -> Item | TlsyncError:
                head = window.popleft()
                if not isinstance(head, Future):
                    return head
                result = head.result()
                self.fetched += not isinstance(result, TlsyncError)
                return result

            try:
                for batch in _batches(items, CACHE_BATCH):
                    for item, cached in zip(batch, self.from_cache(batch), strict=True):
                        window.append(cached or pool.submit(self.fetch, item))
                        while len(window) >= workers * 4 or head_ready():
                            yield pop()
                while window:
                    yield pop()
            finally:
                for pending in window:
                    if isinstance(pending, Future):
                        pending.cancel()


class _SourceFetchError(Exception):
    """Carries a source's fetch error past ``add_image`` so the fetcher can tell it apart."""

    def __init__(self, error: TlsyncError):
        super().__init__(str(error))
        self.error = error


def _batches(items: Iterable[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _fill(item: Item, path: str, sha256: str, width: int, height: int) -> None:
    item.image.path, item.image.sha256, item.image.width, item.image.height = path, sha256, width, height


def _check_boxes(item: Item, ctx: PullContext) -> None:
    """Clip boxes to the real image size; a box entirely outside goes through --on-error."""
    try:
        item.clip_to_image()
        return
    except InvalidItem as e:
        if ctx.on_error == "fail":
            raise InvalidItem(f"{plugins.describe_source(ctx.source_name)}: {e}") from None
        first_error = str(e)
    width, height = item.image.width, item.image.height
    if width is None or height is None:  # _fill sets both from the image file before this runs
        raise InvalidItem(f"{plugins.describe_source(ctx.source_name)}: {first_error}")
    kept = []
    for box in item.annotations:
        clipped = box.clipped(width, height)
        if clipped is None:
            ctx.skip(f"box outside its image (first: {first_error})")
        else:
            kept.append(clipped)
    item.annotations = kept


def pull(
    store: Store,
    source: Source,
    options: dict[str, Any],
    dataset: str,
    on_error: str = "fail",
    split_ratios: tuple[float, float, float] = DEFAULT_RATIOS,
    concurrency: int | None = None,
    progress: Callable[[int], None] | None = None,
    reread: bool = False,
    limits: Limits | None = None,
) -> PullResult:
    """Pull ``source`` into ``dataset``; returns what happened (new version or unchanged).

    ``reread`` reads the source even when its fingerprint says nothing changed. A pull
    that skipped an item because its image could not be read or downloaded records no
    fingerprint, so the next pull reads the source again instead of answering "unchanged".
    """
    started = time.perf_counter()
    name, version = parse_ref(dataset)
    if version is not None:
        raise TlsyncError(f"--dataset {dataset!r}: give a name; pull picks the next version itself")
    ctx = PullContext(store, source.name, on_error)
    with store.lock(name):
        # Taken before reading, so a file edited during this pull makes the record stale.
        inputs = _inputs_key(source, ctx, options, split_ratios, on_error)
        if inputs and not reread and (quick := _unchanged_since_last_pull(store, name, inputs)):
            quick.seconds = time.perf_counter() - started
            return quick
        result = _read_and_publish(store, source, ctx, options, name, split_ratios, concurrency, progress,
                                   limits or Limits())
        result.seconds = time.perf_counter() - started
        store.record_pull(name, {
            "inputs": None if result.io_skipped else inputs, "version": result.version,
            "items": result.items, "boxes": result.boxes,
            "categories": result.categories, "skipped": result.skipped, "not_used": result.not_used,
        })
        return result


def _inputs_key(source: Source, ctx: PullContext, options: dict[str, Any],
                split_ratios: tuple[float, float, float], on_error: str) -> str | None:
    """One digest of everything a pull's outcome depends on, or None when it cannot be known."""
    try:
        fingerprint = source.fingerprint(ctx, **options)
    except (TlsyncError, OSError):
        return None  # the full read will report the problem properly
    except Exception as e:
        raise PluginError(f"{plugins.describe_source(source.name)} fingerprint raised {type(e).__name__}: {e}") from e
    if fingerprint is None:
        return None
    if not isinstance(fingerprint, str):
        raise PluginError(f"{plugins.describe_source(source.name)} fingerprint returned "
                          f"{type(fingerprint).__name__}, not a string or None")
    everything = {"source": source.name, "params": _redacted(source.recorded_params(options)),
                  "split_ratios": list(split_ratios), "on_error": on_error, "tlsync": __version__,
                  "fingerprint": fingerprint}
    return hashlib.sha256(json.dumps(everything, sort_keys=True, default=str).encode()).hexdigest()


def _unchanged_since_last_pull(store: Store, name: str, inputs: str) -> PullResult | None:
    """The last pull's outcome, if it read exactly these inputs into the latest version."""
    record, versions = store.last_pull(name), store.versions(name)
    if not record or record.get("inputs") != inputs or not versions or record.get("version") != versions[-1]:
        return None
    return PullResult(
        dataset=name, version=versions[-1], unchanged=True, quick=True,
        items=record["items"], boxes=record["boxes"], categories=record["categories"],
        skipped=record["skipped"], not_used=record["not_used"],
        notes=["the source's files are unchanged since the last pull, so they were not read again "
               "(--reread to read them anyway)"],
    )


def _read_and_publish(store: Store, source: Source, ctx: PullContext, options: dict[str, Any], name: str,
                      split_ratios: tuple[float, float, float], concurrency: int | None,
                      progress: Callable[[int], None] | None, limits: Limits) -> PullResult:
    """Read every item, fetch what the store lacks, and publish ``name@N+1`` if it differs.

    A failure writing the store (a full disk, no permission) ends the pull under every
    ``--on-error``: skipping would publish a version missing items that are fine.
    """
    fetcher = _Fetcher(store, source, limits)
    seen: set[str] = set()
    io_skipped = 0
    splits = SplitGrouper(split_ratios)
    with store.staging(name) as staging:
        store.clean_tmp()
        with _store_writes(staging):
            writer = ManifestWriter(staging)
        try:
            items = _unique(_from_source(source, ctx, options), seen, ctx)
            for result in fetcher.in_order(items, concurrency or source.concurrency):
                if isinstance(result, StoreWriteError):
                    raise result
                if isinstance(result, TlsyncError):
                    io_skipped += isinstance(result, FetchFailed) and result.io
                    ctx.bad(str(result))
                    continue
                _check_boxes(result, ctx)
                splits.assign(result)
                with _store_writes(staging):
                    writer.write(result)
                if progress:
                    progress(writer.items)
        finally:
            with _store_writes(staging):
                writer.close()
        if writer.items == 0:
            skipped_note = f" ({sum(ctx.skipped.values())} skipped)" if ctx.skipped else ""
            raise TlsyncError(f"source '{source.name}' gave no items{skipped_note}")
        if warning := splits.warning():
            ctx.note(warning)
        categories = list(ctx.categories or [])
        categories += sorted(writer.labels_seen - set(categories))
        content_hash = writer.content_hash(categories)
        versions = store.versions(name)
        skipped = _stored_counts(ctx.skipped)
        result_kwargs: dict[str, Any] = dict(
            dataset=name, items=writer.items, boxes=writer.boxes, categories=categories,
            skipped=skipped, not_used=ctx.not_used, notes=[for_storage(n) for n in ctx.notes],
            fetched=fetcher.fetched, cached=fetcher.cached, io_skipped=io_skipped,
        )
        if versions and store.open(f"{name}@{versions[-1]}").content_hash == content_hash:
            return PullResult(version=versions[-1], unchanged=True, **result_kwargs)
        new_version = (versions[-1] + 1) if versions else 1
        with _store_writes(staging):
            writer.sync()
            atomic_write_json(staging / INFO, {
                "name": name,
                "version": new_version,
                "categories": categories,
                "counts": writer.counts(),
                "source": {"name": source.name, "params": _redacted(source.recorded_params(options))},
                "split_ratios": list(split_ratios),
                "skipped": skipped,
                "not_used": ctx.not_used,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "content_hash": content_hash,
                "tlsync_version": __version__,
            })
        store.publish(name, staging, new_version)
        return PullResult(version=new_version, unchanged=False, **result_kwargs)


def _from_source(source: Source, ctx: PullContext, options: dict[str, Any]) -> Iterator[Item]:
    """The source's items, with anything it gets wrong blamed on it (and its plugin) by name.

    Third-party code runs here: an invalid box it constructs, a non-Item it yields or a
    bug that raises must end the pull with a message that says whose fault it was.
    """
    who = plugins.describe_source(source.name)
    try:
        for item in source.items(ctx, **options):
            if not isinstance(item, Item):
                raise PluginError(f"{who} yielded {type(item).__name__} {item!r:.80}, not a tlsync.format.Item")
            yield item
    except InvalidItem as e:
        raise InvalidItem(f"{who}: {e}") from e
    except TlsyncError:
        raise
    except Exception as e:
        raise PluginError(f"{who} failed: {type(e).__name__}: {e}") from e


def _unique(items: Iterable[Item], seen: set[str], ctx: PullContext) -> Iterator[Item]:
    for item in items:
        if item.id in seen:
            ctx.bad(f"item '{item.id}': duplicate item id")
            continue
        seen.add(item.id)
        yield item


def _redacted(params: dict[str, Any]) -> dict[str, Any]:
    return {k: redact(v) if isinstance(v, str) else v for k, v in params.items()}


def _stored_counts(counts: dict[str, int]) -> dict[str, int]:
    """Skip reasons as stored: keys redacted and URLs without their (signed) query string."""
    stored: dict[str, int] = {}
    for reason, n in counts.items():
        key = for_storage(reason)
        stored[key] = stored.get(key, 0) + n
    return stored


@contextmanager
def _store_writes(where: Any) -> Iterator[None]:
    """Turn an ``OSError`` from writing the version's own files into the fatal store error."""
    try:
        yield
    except OSError as e:
        raise store_write_error(e, where) from None
