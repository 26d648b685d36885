"""Third-party plugins cannot break tlsync: each failure mode has one documented outcome.

Installed plugins are simulated with a ``*.dist-info`` folder on ``sys.path`` (what pip
writes), so entry-point discovery, versions and ``TLSYNC_LOAD_PLUGINS`` run for real.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from tlsync import plugins
from tlsync.errors import PluginError
from tlsync.format import Box, ImageRef, Item
from tlsync.hookspecs import hookimpl
from tlsync.models import ModelSpec
from tlsync.plugins import get_models
from tlsync.sources import Source
from tlsync.targets import Target
from tlsync.testing import ContractError, check_source, isolated_plugins, write_image

_unique = itertools.count()

PLUGIN_MODULE = '''
from tlsync.format import Box, ImageRef, Item
from tlsync.hookspecs import hookimpl
from tlsync.sources import Source


class Fake(Source):
    name = {source!r}
    description = "a fake source for plugin tests"

    def items(self, ctx, **options):
        yield Item("one", ImageRef({image!r}), [Box("cat", 1, 1, 5, 5)])


@hookimpl
def tlsync_register_sources(register):
    register(Fake())
'''


@pytest.fixture
def image(tmp_path: Path) -> str:
    return str(write_image(tmp_path / "one.png", 64, 48))


@pytest.fixture
def fresh_plugins() -> Iterator[Any]:
    """The loader forgets everything before and after, so each test loads what it set up."""
    with isolated_plugins() as register:
        yield register


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_plugins: Any):
    """``install(dist, entry, code)``: a fake pip-installed plugin distribution."""
    folder = tmp_path / "site-packages"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    modules: list[str] = []

    def install(dist: str, entry: str, code: str, version: str = "1.0") -> None:
        module = f"fake_tlsync_plugin_{next(_unique)}"
        modules.append(module)
        (folder / f"{module}.py").write_text(code)
        info = folder / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[tlsync]\n{entry} = {module}\n")

    yield install
    for module in modules:
        sys.modules.pop(module, None)


def plugin(name: str, **hooks: Any) -> Any:
    """A plugin object named ``name`` whose attributes are hook implementations, as a module's are."""
    return type(name, (), {hook: staticmethod(hookimpl(fn)) for hook, fn in hooks.items()})()


def source_plugin(name: str, source: Source) -> Any:
    return plugin(name, tlsync_register_sources=lambda register: register(source))


class OneItem(Source):
    """Yields whatever item (or non-item) the test hands it."""

    description = "yields one item the test chose"

    def __init__(self, name: str, make: Any):
        self.name, self.make = name, make  # type: ignore[misc]

    def items(self, ctx: Any, **options: Any) -> Iterator[Any]:
        yield self.make()


def test_import_error_is_listed_as_broken_and_everything_else_works(site, monkeypatch, run_cli, image):
    site("tlsync-broken", "broken", "import a_dependency_that_is_not_installed\n", "2.1")
    site("tlsync-good", "good", PLUGIN_MODULE.format(source="good", image=image), "0.3")
    monkeypatch.setenv("TLSYNC_LOAD_PLUGINS", "broken,good")
    listed = run_cli("plugins")
    assert listed.exit_code == 0
    assert ("broken (2.1): BROKEN: failed to import: ModuleNotFoundError: "
            "No module named 'a_dependency_that_is_not_installed'") in listed.stdout
    assert "good (0.3): tlsync_register_sources" in listed.stdout
    sources = run_cli("sources")
    assert sources.exit_code == 0
    assert "good: a fake source for plugin tests (plugin good 0.3)" in sources.stdout
    assert "BROKEN broken: failed to import" in sources.stdout
    pulled = run_cli("pull", "--source", "good", "--dataset", "d")
    assert pulled.exit_code == 0 and "new version d@1" in pulled.stdout


def test_a_hook_that_raises_is_broken_and_nothing_it_registered_is_used(fresh_plugins, run_cli, image):
    def register_then_raise(register: Any) -> None:
        register(OneItem("half", lambda: None))
        raise RuntimeError("config file missing")

    fresh_plugins(plugin("raiser", tlsync_register_sources=register_then_raise),
                  source_plugin("fine", OneItem("fine", lambda: Item("a", ImageRef(image), [Box("cat", 1, 1, 5, 5)]))))
    listed = run_cli("plugins")
    assert "raiser (?): BROKEN: tlsync_register_sources raised RuntimeError: config file missing" in listed.stdout
    sources = run_cli("sources")
    assert "half:" not in sources.stdout and "fine:" in sources.stdout
    unknown = run_cli("pull", "--source", "half", "--dataset", "d")
    assert unknown.exit_code == 1 and "unknown source 'half'" in unknown.stderr
    assert run_cli("pull", "--source", "fine", "--dataset", "d").exit_code == 0


def test_duplicate_source_names_keep_the_first_and_name_both_plugins(fresh_plugins, run_cli, image):
    first = OneItem("shapes", lambda: Item("a", ImageRef(image), [Box("cat", 1, 1, 5, 5)]))
    fresh_plugins(source_plugin("first_plugin", first), source_plugin("second_plugin", OneItem("shapes", list)),
                  source_plugin("hijacker", OneItem("synthetic", list)))
    sources = run_cli("sources")
    assert ("BROKEN second_plugin: source 'shapes' is already registered by plugin 'first_plugin'; "
            "the one from 'second_plugin' is ignored") in sources.stdout
    assert ("BROKEN hijacker: source 'synthetic' is already registered by plugin 'tlsync.connectors.synthetic'"
            in sources.stdout)  # built-ins load first: a plugin cannot take over their names
    assert plugins.get_source("shapes") is first


def bad_box_outside(image: str) -> Item:
    return Item("one", ImageRef(image), [Box("cat", 500, 1, 5, 5)])


@pytest.mark.parametrize("make, message", [
    (bad_box_outside, "source 'bad' (plugin 'bad_plugin'): item 'one': box 0 'cat' at (500,1,5,5) "
                      "lies entirely outside the 64x48 image"),
    (lambda image: Item("one", ImageRef(image), [Box("cat", 1, 1, -5, 5)]),
     "source 'bad' (plugin 'bad_plugin'): box 'cat': width and height must be > 0 (got -5x5)"),
    (lambda image: {"id": "one", "image": image}, "source 'bad' (plugin 'bad_plugin') yielded dict"),
    (lambda image: {}["missing"], "source 'bad' (plugin 'bad_plugin') failed: KeyError: 'missing'"),
])
def test_invalid_items_end_the_pull_with_the_source_and_plugin_named(fresh_plugins, run_cli, store, image,
                                                                      make, message):
    fresh_plugins(source_plugin("bad_plugin", OneItem("bad", lambda: make(image))))
    result = run_cli("pull", "--source", "bad", "--dataset", "d")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.startswith("Error: " + message) and "Traceback" not in result.stderr
    assert store.versions("d") == []  # nothing half-written


@pytest.mark.parametrize("fingerprint, message", [
    (lambda: {}["missing"], "source 'bad' (plugin 'bad_plugin') fingerprint raised KeyError: 'missing'"),
    (lambda: 42, "source 'bad' (plugin 'bad_plugin') fingerprint returned int, not a string or None"),
])
def test_a_broken_fingerprint_ends_the_pull_with_the_plugin_named(fresh_plugins, run_cli, store, image,
                                                                  fingerprint, message):
    source = OneItem("bad", lambda: Item("one", ImageRef(image)))
    source.fingerprint = lambda ctx, **options: fingerprint()
    fresh_plugins(source_plugin("bad_plugin", source))
    result = run_cli("pull", "--source", "bad", "--dataset", "d")
    assert result.exit_code == 1 and result.stderr.startswith("Error: " + message)
    assert store.versions("d") == []


def test_a_box_outside_its_image_is_skipped_and_counted_under_on_error_skip(fresh_plugins, run_cli, image):
    fresh_plugins(source_plugin("bad_plugin", OneItem("bad", lambda: bad_box_outside(image))))
    result = run_cli("pull", "--source", "bad", "--dataset", "d", "--on-error", "skip")
    assert result.exit_code == 0 and "1 items, 0 boxes" in result.stdout
    assert "1 x box outside its image (first: item 'one': box 0 'cat'" in result.stdout


def test_debug_shows_the_plugin_s_own_traceback(fresh_plugins, run_cli, monkeypatch, image):
    monkeypatch.setenv("TLSYNC_DEBUG", "")  # restored after the test; --debug sets it
    fresh_plugins(source_plugin("bad_plugin", OneItem("bad", lambda: {}["missing"])))
    with pytest.raises(PluginError) as raised:
        run_cli("--debug", "pull", "--source", "bad", "--dataset", "d")
    assert isinstance(raised.value.__cause__, KeyError)


def test_load_plugins_allow_list_takes_entry_point_or_distribution_names(site, monkeypatch, image):
    site("tlsync-alpha", "alpha", PLUGIN_MODULE.format(source="alpha", image=image))
    site("tlsync-beta", "beta", PLUGIN_MODULE.format(source="beta", image=image))
    for allow, expected in [("alpha", {"alpha"}), ("tlsync-beta", {"beta"}), (" alpha , beta ", {"alpha", "beta"}),
                            ("", set()), (None, {"alpha", "beta"})]:
        if allow is None:
            monkeypatch.delenv("TLSYNC_LOAD_PLUGINS")
        else:
            monkeypatch.setenv("TLSYNC_LOAD_PLUGINS", allow)
        plugins.reset()
        third_party = {name for name in plugins.get_sources() if not plugins.source_plugin(name).builtin}
        assert expected <= third_party and not ({"alpha", "beta"} - expected) & third_party, allow


def test_a_plugin_registered_in_process_is_listed_and_pulls(fresh_plugins, run_cli, store, image):
    fresh_plugins(source_plugin("my_plugin",
                                OneItem("mine", lambda: Item("a", ImageRef(image), [Box("cat", 1, 2, 3, 4)]))))
    assert "my_plugin (?): tlsync_register_sources" in run_cli("plugins").stdout
    assert "mine: yields one item the test chose (plugin my_plugin ?)" in run_cli("sources").stdout
    pulled = run_cli("pull", "--source", "mine", "--dataset", "d")
    assert pulled.exit_code == 0, pulled.stderr
    version = store.open("d")
    assert [b.to_dict() for item in version.items() for b in item.annotations] == [
        {"label": "cat", "x": 1.0, "y": 2.0, "width": 3.0, "height": 4.0}]
    assert json.loads((version.folder / "dataset.json").read_text())["source"]["name"] == "mine"


class Recorder(Target):
    name = "recorder"
    description = "keeps what it is sent"

    def push(self, predictions: Iterator[Item], run: dict[str, Any], **options: Any) -> dict[str, Any]:
        return {"items": sum(1 for _ in predictions)}


def test_model_and_target_hooks_register_and_their_failures_are_listed(fresh_plugins, run_cli):
    spec = ModelSpec("tiny_detector", build=lambda num_classes, weights, img_size: None, description="a test model")
    fresh_plugins(plugin("extras", tlsync_register_models=lambda register: register(spec),
                         tlsync_register_targets=lambda register: register(Recorder())),
                  plugin("bad_models", tlsync_register_models=lambda register: register("not a spec")))
    assert get_models()["tiny_detector"] is spec
    assert plugins.get_target("recorder").push(iter([]), {}) == {"items": 0}
    listed = run_cli("plugins").stdout
    assert "extras (?): tlsync_register_models, tlsync_register_targets" in listed
    assert "bad_models (?): BROKEN: tlsync_register_models raised TlsyncError: plugin 'bad_models' registered " \
           "'not a spec', which is not a tlsync.models.ModelSpec" in listed


# -- the contract kit (tlsync.testing) catches what the core lets through ------------------------


class KitSource(Source):
    """A source whose items and declarations each test bends in one way."""

    name = "kit"
    description = "contract-kit test source"
    options = [click.Option(["--image"], required=True)]

    def __init__(self, boxes: Any = (("cat", 1, 1, 5, 5),), declare: Any = None, ids: Any = None,
                 metadata: Any = None):
        self.boxes, self.declare, self.ids, self.metadata = boxes, declare, ids, metadata or {}

    def items(self, ctx: Any, image: str, **_: Any) -> Iterator[Item]:
        if self.declare is not None:
            ctx.set_categories(self.declare)
        ids = self.ids() if callable(self.ids) else ["a", "b"]
        for item_id in ids:
            yield Item(item_id, ImageRef(image), [Box(*b) for b in self.boxes], metadata=self.metadata)


def shuffled_ids() -> Any:
    order = itertools.cycle([["a", "b"], ["b", "a"]])
    return lambda: next(order)


@pytest.mark.parametrize("source, message", [
    (KitSource(boxes=[("cat", 10, 10, 60, 40)]),  # corners read as sizes: overhangs, the core would clip it
     "source 'kit': item 'a': box 0 'cat' at (10,10,60,40) overhangs its 64x48 image by 6 px"),
    (KitSource(declare=["dog"]), "item 'a': label 'cat' is not among the categories it declared"),
    (KitSource(ids=shuffled_ids()), "a second pull gave different data: position 0 held item 'a', then 'b'"),
    (KitSource(metadata={"url": "https://x.example/a.png?token=s3cr3t-value"}), "items.jsonl contains a secret"),
])
def test_check_source_fails_a_source_that_breaks_the_contract(image, source, message):
    with pytest.raises(ContractError, match=re.escape(message)):
        check_source(source, image=image)


class Declared(KitSource):
    def __init__(self, options: list, secret_options: tuple = ()):
        super().__init__()
        self.options, self.secret_options = options, secret_options  # type: ignore[misc]


@pytest.mark.parametrize("source, message", [
    (Declared([click.Option(["--image"]), click.Option(["--api-key"])]),
     "option 'api_key' looks like a secret; list it in secret_options"),
    (Declared([click.Option(["--image"])], secret_options=("token",)), "secret_options names 'token'"),
    (Declared([click.Option(["--image"]), click.Option(["--dataset"])]),
     "option --dataset clashes with `tlsync pull`'s own"),
])
def test_check_source_fails_declarations_the_cli_cannot_use_safely(image, source, message):
    with pytest.raises(ContractError, match=re.escape(message)):
        check_source(source, image=image)


def test_check_source_passes_options_as_the_cli_would_and_returns_what_it_pulled(image, monkeypatch, store):
    with pytest.raises(TypeError, match="source 'kit' has no option 'imag'; its options: image"):
        check_source(KitSource(), imag=image)
    with pytest.raises(click.MissingParameter, match="image"):
        check_source(KitSource())
    checked = check_source(KitSource(), store=store, image=image)
    assert [item.id for item in checked.items] == ["a", "b"] and checked.result.boxes == 2
    assert checked.dataset.info["source"]["params"] == {"image": image}
    assert store.open(checked.dataset.ref).ref == checked.dataset.ref  # in the store the test gave
