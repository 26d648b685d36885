"""The contract kit: what a source plugin's tests use to prove it behaves like a tlsync source.

``check_source(MySource(), path=...)`` runs a real pull through the source into a
temporary store and asserts what every source promises: unique ids, boxes that lie inside
their images (as yielded, before the core clips anything), labels within the declared
categories, images stored readable under their recorded sha256 and size, the same output
on a second pull, and no secret in anything written. A broken promise raises
``ContractError`` (an ``AssertionError``, so pytest shows it as a failed check) whose
message names the source and the item.

``check_fingerprint`` checks a source's optional ``fingerprint``: an unchanged re-pull
skips reading, and an edit to the files is noticed.

``check_path_escapes`` proves a source that reads local files keeps to its export: given a
function that writes a one-image export naming its image however it is told, it plants a
symlink leading out, a ``..`` path and an absolute path, and fails the source unless each is
refused and the outside image's bytes never reach the store. ``check_source`` itself also
fails a source when an image it read resolves outside every folder its options name.

Friends: ``check_plugin`` (a plugin module registers valid, uniquely named sources),
``isolated_plugins`` (plugin-loader state of a test's own), ``run_cli`` (the ``tlsync``
command in-process), ``write_image`` (tiny test images), and the loopback HTTP server.
Pytest fixtures wrapping these live in ``tlsync.testing.fixtures``.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click

from .. import plugins, sources
from ..format import Box, Item
from ..manifest import INFO, ITEMS
from ..pull import PullResult, pull
from ..secrets import redact, remember
from ..sources import PullContext, Source
from ..store import DatasetVersion, Store, image_info
from .escapes import check_path_escapes, check_reads_inside
from .server import Faults, LoggedRequest, LoopbackServer, Request, Response
from .shared import ContractError, resolve_options, write_image

__all__ = [
    "OVERHANG_TOLERANCE", "ContractError", "SourceCheck", "check_source", "check_fingerprint", "check_plugin",
    "check_path_escapes",
    "resolve_options", "isolated_plugins", "run_cli", "write_image",
    "LoopbackServer", "Faults", "Request", "Response", "LoggedRequest",
]

# How far (in pixels) a yielded box may overhang its image before the kit calls it a bug.
# The core clips such boxes silently, which is right for a labeller's stray pixel but hides
# a source that mixes up coordinate conventions (corners for sizes, percent for pixels).
OVERHANG_TOLERANCE = 1.0

# Option names that hold credentials (api_key, auth_token, password...), not ones like image_key.
_SECRET_LOOKING = re.compile(r"(^|_)(api_?key|access_?key|secret(_?key)?|token|password|passwd)$|^key$", re.IGNORECASE)
_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_counter = itertools.count(1)


@dataclass
class SourceCheck:
    """What a passing ``check_source`` pulled, for the test's own assertions."""

    dataset: DatasetVersion
    result: PullResult
    items: list[Item]

    def by_id(self) -> dict[str, Item]:
        return {item.id: item for item in self.items}


class _Recorder(Source):
    """Stands in for the source during a check and remembers what ``items`` yielded.

    The core clips and fills in what it pulls, so only the raw stream shows whether the
    source itself got boxes, categories and order right.
    """

    def __init__(self, inner: Source):
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self.concurrency = inner.concurrency
        self.secret_options = inner.secret_options  # type: ignore[misc]
        self.raw: list[tuple[str, str | None, str, list[Box]]] = []
        self.declared: list[str] | None = None
        self.read: list[tuple[str, str]] = []  # (item id, local path) of every image fetched

    def items(self, ctx: PullContext, **options: Any) -> Iterator[Item]:
        self.raw = []
        for item in self.inner.items(ctx, **options):
            if isinstance(item, Item):  # anything else is refused by the core, naming the source
                self.raw.append((item.id, item.split, item.group, list(item.annotations)))
            yield item
        self.declared = ctx.categories

    def fetch(self, item: Item, out: Any) -> None:
        path = sources.local_path(item.image.uri)
        if path is not None:
            self.read.append((item.id, str(path)))
        self.inner.fetch(item, out)

    def recorded_params(self, options: dict[str, Any]) -> dict[str, Any]:
        return self.inner.recorded_params(options)


def check_source(source: Source, *, store: Store | None = None, **options: Any) -> SourceCheck:
    """Pull ``source`` twice with ``options`` (as ``items`` receives them) and check the contract.

    Options not given take their click defaults (environment variables included), exactly
    as ``tlsync pull`` would pass them. ``store`` defaults to a fresh temporary store. A
    ``TlsyncError`` from the pull itself propagates unchanged.
    """
    who = f"source '{getattr(source, 'name', '?')}'"
    _check_declaration(source, who)
    values = resolve_options(source, options)
    store = store or _temp_store()
    dataset = f"check-{next(_counter)}"
    recorder = _Recorder(source)
    first = pull(store, recorder, values, dataset)
    version = store.open(first.ref)
    stored = list(version.items())
    first_raw = recorder.raw

    _check_ids(stored, who)
    _check_labels(recorder.declared, first_raw, version.categories, who)
    _check_overhang(first_raw, {item.id: item for item in stored}, who)
    _check_images(version, stored, who)
    _check_secrets(source, values, version, who)
    check_reads_inside(recorder.read, values, store, who)

    second = pull(store, recorder, values, dataset)
    if not second.unchanged:
        raise ContractError(f"{who}: a second pull gave different data: {_difference(first_raw, recorder.raw)}")
    return SourceCheck(version, first, stored)


def check_fingerprint(source: Source, change: Callable[[], None], *, store: Store | None = None,
                      **options: Any) -> None:
    """Pull, re-pull (which must skip reading), run ``change``, pull (which must read it).

    ``change`` edits the source's files so the data differs (moves a box, adds an image).
    Real pulls never trust files written in the last ``RACY_SECONDS``; the check lifts that
    window while it runs, so a test need not sleep.
    """
    who = f"source '{getattr(source, 'name', '?')}'"
    values = resolve_options(source, options)
    store = store or _temp_store()
    dataset = f"check-{next(_counter)}"
    racy, sources.RACY_SECONDS = sources.RACY_SECONDS, 0.0
    try:
        pull(store, source, values, dataset)
        if not pull(store, source, values, dataset).quick:
            raise ContractError(f"{who}: fingerprint() gave None or a new value for unchanged files, "
                                f"so every re-pull reads everything again")
        change()
        changed = pull(store, source, values, dataset)
    finally:
        sources.RACY_SECONDS = racy
    if changed.quick:
        raise ContractError(f"{who}: fingerprint() did not change when the files did, so the edit was never pulled")
    if changed.unchanged:
        raise ContractError(f"{who}: the data is the same after change(); make it move a box or add an image")


def _check_declaration(source: Source, who: str) -> None:
    """What ``tlsync sources`` and ``tlsync pull`` need before any item is read."""
    from ..plugin_options import option_clash

    if not isinstance(source, Source):
        raise ContractError(f"{source!r} is not a tlsync.sources.Source")
    if not isinstance(getattr(source, "name", None), str) or not _SOURCE_NAME.match(source.name):
        raise ContractError(f"{who}: name must be lower-case letters, digits, '.', '_' or '-'")
    if not source.description:
        raise ContractError(f"{who}: give it a description (shown by `tlsync sources`)")
    names = set()
    for opt in source.options:
        if not isinstance(opt, click.Option):
            raise ContractError(f"{who}: options must be click.Option objects (got {opt!r})")
        names.add(opt.name)
    clash = option_clash(source, "source")  # the rule registration applies: the kit fails what tlsync refuses
    if clash:
        raise ContractError(f"{who}: {clash}")
    for secret in source.secret_options:
        if secret not in names:
            raise ContractError(f"{who}: secret_options names '{secret}', which is not one of its options")
    for name in names:
        if name and _SECRET_LOOKING.search(name) and name not in source.secret_options:
            raise ContractError(f"{who}: option '{name}' looks like a secret; list it in secret_options "
                                f"so that it is never recorded")


def _check_ids(stored: list[Item], who: str) -> None:
    seen: set[str] = set()
    for item in stored:
        if item.id in seen:
            raise ContractError(f"{who}: item id '{item.id}' appears twice")
        seen.add(item.id)


def _check_labels(declared: list[str] | None, raw: list, categories: list[str], who: str) -> None:
    if declared is not None and len(set(declared)) != len(declared):
        raise ContractError(f"{who}: ctx.set_categories got a name twice: {declared}")
    allowed = set(declared if declared is not None else categories)
    for item_id, _, _, boxes in raw:
        for box in boxes:
            if box.label not in allowed:
                raise ContractError(f"{who}: item '{item_id}': label '{box.label}' is not among the categories "
                                    f"it declared with ctx.set_categories ({', '.join(sorted(allowed))})")


def _check_overhang(raw: list, stored: dict[str, Item], who: str) -> None:
    for item_id, _, _, boxes in raw:
        item = stored.get(item_id)
        if item is None:
            continue
        width, height = item.image.width or 0, item.image.height or 0
        for i, box in enumerate(boxes):
            over = max(-box.x, -box.y, box.x + box.width - width, box.y + box.height - height)
            if over > OVERHANG_TOLERANCE:
                raise ContractError(
                    f"{who}: item '{item_id}': box {i} '{box.label}' at ({box.x:g},{box.y:g},{box.width:g},"
                    f"{box.height:g}) overhangs its {width}x{height} image by {over:g} px; boxes are "
                    f"x,y,width,height in absolute pixels from the top-left corner")


def _check_images(version: DatasetVersion, stored: list[Item], who: str) -> None:
    from PIL import Image

    for item in stored:
        path = version.image_path(item)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != item.image.sha256:
            raise ContractError(f"{who}: item '{item.id}': stored image {path} does not match its recorded sha256")
        width, height, _ = image_info(path)
        if (width, height) != (item.image.width, item.image.height):
            raise ContractError(f"{who}: item '{item.id}': image is {width}x{height}, recorded "
                                f"{item.image.width}x{item.image.height}")
        with Image.open(path) as im:
            im.load()  # a truncated download decodes its header fine and fails here


def _check_secrets(source: Source, values: dict[str, Any], version: DatasetVersion, who: str) -> None:
    for name in source.secret_options:
        if values.get(name):
            remember(str(values[name]))
    for name in (INFO, ITEMS):
        text = (version.folder / name).read_text(encoding="utf-8")
        if redact(text) != text:
            raise ContractError(f"{who}: {name} contains a secret (an API key or token); "
                                f"keep it in secret_options and out of URIs and metadata")


def _difference(first: list, second: list) -> str:
    for position, (a, b) in enumerate(zip(first, second, strict=False)):
        if a[0] != b[0]:
            return f"position {position} held item '{a[0]}', then '{b[0]}' (yield items in a stable order)"
        if a[1:3] != b[1:3]:
            return f"item '{a[0]}' changed split or group"
        if [_box_key(x) for x in a[3]] != [_box_key(x) for x in b[3]]:
            return f"item '{a[0]}' has different boxes"
    if len(first) != len(second):
        return f"{len(first)} items, then {len(second)}"
    return "same items and boxes, different image bytes or categories"


def _box_key(box: Box) -> tuple:
    return (box.label, round(box.x, 3), round(box.y, 3), round(box.width, 3), round(box.height, 3))


def _temp_store() -> Store:
    home = tempfile.mkdtemp(prefix="tlsync-check-")
    atexit.register(shutil.rmtree, home, True)
    return Store(home)


def check_plugin(plugin: Any, name: str | None = None) -> dict[str, Source]:
    """Load ``plugin`` (a module or object with hook functions) beside the built-ins; return its sources.

    Fails when its hook raises, a source is invalid or its name is already taken.
    """
    given = name or str(getattr(plugin, "__name__", type(plugin).__name__))
    with isolated_plugins(**{given: plugin}):
        name = plugins.pm.get_name(plugin)  # its entry-point name when it is also installed
        registered = plugins.get_sources()
        if name in plugins.broken:
            raise ContractError(f"plugin '{name}' is broken: {plugins.broken[name]}")
        sources = {n: s for n, s in registered.items()
                   if (info := plugins.source_plugin(n)) is not None and info.name == name}
    if not sources:
        raise ContractError(f"plugin '{name}' registered no source")
    for source in sources.values():
        _check_declaration(source, f"source '{source.name}'")
    return sources


@contextmanager
def isolated_plugins(*objects: Any, **named: Any) -> Iterator[Callable[..., None]]:
    """Plugin-loader state of its own: built-ins, installed plugins allowed by
    ``TLSYNC_LOAD_PLUGINS``, plus ``objects`` (named by ``__name__``) and ``named``.

    Yields ``register(*objects, **named)`` for adding more; everything is forgotten on exit.
    """

    def register(*objects: Any, **named: Any) -> None:
        manager = plugins.load_plugins()
        for obj in objects:
            named[getattr(obj, "__name__", type(obj).__name__)] = obj
        for plugin_name, obj in named.items():
            if not manager.is_registered(obj):  # already loaded from its entry point
                manager.register(obj, name=plugin_name)

    plugins.reset()
    try:
        if objects or named:  # else loading waits for first use, after the test's own set-up
            register(*objects, **named)
        yield register
    finally:
        plugins.reset()


def run_cli(*args: Any, input: str | None = None) -> click.testing.Result:
    """Run ``tlsync ARGS`` in-process as a user would: returns ``exit_code``, ``stdout``, ``stderr``."""
    from click.testing import CliRunner

    from .. import cli

    class Entry:  # CliRunner calls .main(); route through tlsync.cli.main for its one-line errors
        name = "tlsync"

        def main(self, args: list[str], prog_name: str | None = None, **_: Any) -> None:
            cli.main(list(args))

    return CliRunner().invoke(Entry(), [str(a) for a in args], input=input, catch_exceptions=False)  # type: ignore[arg-type]
