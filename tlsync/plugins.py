"""Loads plugins: the built-in connectors first, then installed ``tlsync`` entry points.

Each plugin is imported, and each hook called, on its own: one broken plugin is recorded
in ``broken`` (shown by ``tlsync sources`` and ``tlsync plugins``) and never stops the
others or the CLI. ``TLSYNC_LOAD_PLUGINS`` (a comma list of entry-point or distribution
names) restricts which installed plugins load; set it empty to load none.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from . import hookspecs
from .errors import PluginError, TlsyncError

if TYPE_CHECKING:
    from .models import ModelSpec
    from .sources import Source
    from .targets import Target

T = TypeVar("T")

DEFAULT_PLUGINS = (
    "tlsync.connectors.coco",
    "tlsync.connectors.synthetic",
    "tlsync.connectors.roboflow",
    "tlsync.connectors.nucleus",
    "tlsync.connectors.images",
    "tlsync.trainer.models.zoo",
    "tlsync.trainer.trackers.builtin",
)


@dataclass
class PluginInfo:
    name: str
    version: str | None = None
    builtin: bool = False
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager("tlsync")
    manager.add_hookspecs(hookspecs)
    return manager


pm = _new_manager()
broken: dict[str, str] = {}
_info: dict[str, PluginInfo] = {}
_source_plugins: dict[str, str] = {}
_loaded = False


def reset() -> None:
    """Forget every loaded plugin, so the next call loads afresh.

    For tests (``tlsync.testing.isolated_plugins``) and for a changed
    ``TLSYNC_LOAD_PLUGINS``; a normal run loads once and never needs it.
    """
    global pm, _loaded
    pm = _new_manager()
    broken.clear()
    _info.clear()
    _source_plugins.clear()
    _loaded = False


def _allowed() -> set[str] | None:
    env = os.environ.get("TLSYNC_LOAD_PLUGINS")
    if env is None:
        return None
    return {name.strip() for name in env.split(",") if name.strip()}


def load_plugins() -> pluggy.PluginManager:
    """Import every plugin once (later calls are free)."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    for module_name in DEFAULT_PLUGINS:
        try:
            pm.register(importlib.import_module(module_name), name=module_name)
            _info[module_name] = PluginInfo(module_name, builtin=True)
        except Exception as e:  # a broken built-in must not take the CLI down either
            _record_broken(module_name, f"failed to import: {type(e).__name__}: {e}")
    allowed = _allowed()
    if allowed is not None and not allowed:
        return pm  # none wanted: no need to read every installed distribution's entry points
    from importlib.metadata import entry_points  # not cheap to import, and only needed here

    for ep in entry_points(group="tlsync"):
        dist = ep.dist.name if ep.dist else None
        if allowed is not None and ep.name not in allowed and dist not in allowed:
            continue
        version = ep.dist.version if ep.dist else None
        try:
            pm.register(ep.load(), name=ep.name)
            _info[ep.name] = PluginInfo(ep.name, version)
        except Exception as e:
            _record_broken(ep.name, f"failed to import: {type(e).__name__}: {e}", version)
    return pm


def _record_broken(plugin: str, error: str, version: str | None = None) -> None:
    broken[plugin] = error
    info = _info.setdefault(plugin, PluginInfo(plugin, version))
    info.error = error


def collect(hook_name: str, kind: str, check: Callable[[Any, str], T]) -> dict[str, tuple[T, str]]:
    """Call one registration hook plugin by plugin: ``{name: (object, plugin name)}``.

    A plugin whose hook raises, or that registers something invalid or a name already
    taken, is recorded in ``broken`` and skipped; the first registration of a name wins
    (built-ins are registered first).
    """
    load_plugins()
    found: dict[str, tuple[T, str]] = {}
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        plugin = impl.plugin_name
        registered: list[Any] = []
        try:
            impl.function(register=registered.append)
            objects = [check(obj, plugin) for obj in registered]
        except Exception as e:
            _record_broken(plugin, f"{hook_name} raised {type(e).__name__}: {e}")
            continue
        for obj in objects:
            name: str = obj.name  # type: ignore[attr-defined]  # every checked object has one
            if name in found:
                first = found[name][1]
                _record_broken(plugin, f"{kind} '{name}' is already registered by plugin '{first}'; "
                                       f"the one from '{plugin}' is ignored")
            else:
                found[name] = (obj, plugin)
    return found


# Registration hooks and how their objects are checked, so that ``tlsync plugins`` can
# call every hook and report one that raises even when no command has used it yet.
REGISTRIES = {
    "tlsync_register_sources": ("source", "tlsync.sources:check_source"),
    "tlsync_register_targets": ("target", "tlsync.targets:check_target"),
    "tlsync_register_models": ("model", "tlsync.models:check_model"),
}


def _collect_registry(hook_name: str) -> dict[str, tuple[Any, str]]:
    kind, checker = REGISTRIES[hook_name]
    module, _, attr = checker.partition(":")
    try:
        check = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return {}  # that part of tlsync is not installed: nothing can use the hook
    return collect(hook_name, kind, check)


def plugin_infos() -> list[PluginInfo]:
    """Every plugin seen, with the hooks it implements and its error if broken."""
    load_plugins()
    for hook_name in REGISTRIES:
        _collect_registry(hook_name)
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        if name is None:  # unregistered meanwhile
            continue
        info = _info.setdefault(name, PluginInfo(name))
        info.hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
    return sorted(_info.values(), key=lambda i: (not i.builtin, i.name))


def get_sources() -> dict[str, Source]:
    from .sources import check_source

    found = collect("tlsync_register_sources", "source", check_source)
    _source_plugins.update({name: plugin for name, (_, plugin) in found.items()})
    return {name: obj for name, (obj, _) in found.items()}


def source_plugin(source_name: str) -> PluginInfo | None:
    """The plugin that registered a source (after ``get_sources``), for messages and listings."""
    plugin = _source_plugins.get(source_name)
    return (_info.get(plugin) or PluginInfo(plugin)) if plugin else None


def describe_source(source_name: str) -> str:
    """``source 'x' (plugin 'tlsync-x' 1.2)``: how errors blame a source and its plugin."""
    info = source_plugin(source_name)
    if info is None or info.builtin:
        return f"source '{source_name}'"
    version = f" {info.version}" if info.version else ""
    return f"source '{source_name}' (plugin '{info.name}'{version})"


def lookup(kind: str, registered: dict[str, T], name: str) -> T:
    """One registered object by name, or an error listing the others (and a broken suspect)."""
    if name in registered:
        return registered[name]
    hint = next((f" (plugin '{p}' is broken: {err})" for p, err in broken.items() if name in p), "")
    raise PluginError(f"unknown {kind} '{name}'{hint}; available: {', '.join(sorted(registered)) or 'none'}")


def get_source(name: str) -> Source:
    return lookup("source", get_sources(), name)


def get_targets() -> dict[str, Target]:
    """Every registered ``tlsync push`` target by name (mirrors ``get_sources``)."""
    from .targets import check_target

    return {name: obj for name, (obj, _) in collect("tlsync_register_targets", "target", check_target).items()}


def get_target(name: str) -> Target:
    return lookup("target", get_targets(), name)


def get_models() -> dict[str, ModelSpec]:
    """Every registered model by name: the built-ins first, then plugins'."""
    from .models import check_model

    return {name: spec for name, (spec, _) in collect("tlsync_register_models", "model", check_model).items()}


def get_model(name: str) -> ModelSpec:
    """The model called ``name``, or an error listing the ones there are."""
    return lookup("model", get_models(), name)


def collect_callbacks(config: dict[str, Any]) -> list[tuple[Any, str]]:
    """``[(callback, plugin name)]`` from every plugin's ``tlsync_register_callbacks``.

    Each plugin is asked on its own with the hook arguments it declares. A ``TlsyncError``
    (a refusal the user must act on, such as a tracker that was asked for but is not
    installed) stops the run before it trains; anything else disables that plugin only.
    """
    from .console import info
    from .events import check_callback

    found: list[tuple[Any, str]] = []
    for impl in load_plugins().hook.tlsync_register_callbacks.get_hookimpls():
        registered: list[Any] = []
        given = {"register": registered.append, "config": config}
        try:
            impl.function(**{name: given[name] for name in impl.argnames})
        except TlsyncError:
            raise
        except Exception as e:
            info(f"warning: plugin '{impl.plugin_name}': tlsync_register_callbacks raised "
                 f"{type(e).__name__}: {e}; its training callbacks are off for this run")
            continue
        for obj in registered:
            try:
                found.append((check_callback(obj, impl.plugin_name), impl.plugin_name))
            except TlsyncError as e:
                info(f"warning: {e}; it is ignored")
    return found
