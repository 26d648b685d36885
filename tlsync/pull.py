"""``tlsync pull``: source items -> cached images -> a new (or unchanged) dataset version.

The source yields items; worker threads fetch their images into the content-addressed
store (skipping any the fetch cache already has); the core validates boxes against the
real image size, assigns missing splits, and streams the result into a staging folder
that becomes ``name@N+1`` only when it differs from ``name@N``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__, plugins
from .errors import InvalidItem, PluginError, TlsyncError
from .fetch_procs import FetchProcesses
from .fetcher import Fetcher, FetchFailed, Limits
from .format import Item
from .manifest import INFO, ManifestWriter, VersionResult, atomic_write_json
from .secrets import for_storage, redact
from .sink import StoreWriteError, store_write_error
from .sources import PullContext, Source
from .splits import DEFAULT_RATIOS, SplitGrouper
from .store import Store, parse_ref


@dataclass
class PullResult(VersionResult):
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
    try:
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
    finally:
        store.cache_close()  # see FetchCache.close: never leave it to the garbage collector


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
    fetcher = Fetcher(store, source, limits)
    with store.staging(name) as staging:
        store.clean_tmp()
        writer, io_skipped = _write_items(staging, fetcher, source, ctx, options, split_ratios, concurrency,
                                          progress)
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
        store.sync_images()  # every image this version names is on disk before it can be published
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


def _write_items(staging: Path, fetcher: Fetcher, source: Source, ctx: PullContext, options: dict[str, Any],
                 split_ratios: tuple[float, float, float], concurrency: int | None,
                 progress: Callable[[int], None] | None) -> tuple[ManifestWriter, int]:
    """Stream the source's items, images fetched, boxes checked and splits assigned, into the
    staging manifest; returns the writer and how many items were skipped for I/O reasons."""
    io_skipped = 0
    splits = SplitGrouper(split_ratios)
    with _store_writes(staging):
        writer = ManifestWriter(staging)
    try:
        items = _unique(_from_source(source, ctx, options), set(), ctx)
        for result in fetcher.in_order(items, concurrency or source.concurrency, FetchProcesses):
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
    return writer, io_skipped


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
