"""Loads plugins: the built-in connectors first, then installed ``tlsync`` entry points.

Each plugin is imported, and each hook called, on its own: one broken plugin is recorded
in ``broken`` (shown by ``tlsync sources`` and ``tlsync plugins``) and never stops the
others or the CLI. ``TLSYNC_LOAD_PLUGINS`` (a comma list of entry-point or distribution
names) restricts which installed plugins load; set it empty to load none.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable

import pluggy

from . import hookspecs
from .errors import PluginError

DEFAULT_PLUGINS = (
    "tlsync.connectors.coco",
    "tlsync.connectors.synthetic",
    "tlsync.connectors.roboflow",
    "tlsync.connectors.nucleus",
    "tlsync.trainer.zoo",
)


@dataclass
class PluginInfo:
    name: str
    version: str | None = None
    builtin: bool = False
    hooks: list[str] = field(default_factory=list)
    error: str | None = None


pm = pluggy.PluginManager("tlsync")
pm.add_hookspecs(hookspecs)
broken: dict[str, str] = {}
_info: dict[str, PluginInfo] = {}
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


def collect(hook_name: str, kind: str, check: Callable[[Any, str], Any]) -> dict[str, tuple[Any, str]]:
    """Call one registration hook plugin by plugin: ``{name: (object, plugin name)}``.

    A plugin whose hook raises, or that registers something invalid or a name already
    taken, is recorded in ``broken`` and skipped; the first registration of a name wins
    (built-ins are registered first).
    """
    load_plugins()
    found: dict[str, tuple[Any, str]] = {}
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
            if obj.name in found:
                first = found[obj.name][1]
                _record_broken(plugin, f"{kind} '{obj.name}' is already registered by plugin '{first}'; "
                                       f"the one from '{plugin}' is ignored")
            else:
                found[obj.name] = (obj, plugin)
    return found


def plugin_infos() -> list[PluginInfo]:
    """Every plugin seen, with the hooks it implements and its error if broken."""
    load_plugins()
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        info = _info.setdefault(name, PluginInfo(name))
        info.hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or [])
    return sorted(_info.values(), key=lambda i: (not i.builtin, i.name))


def get_sources() -> dict[str, Any]:
    from .sources import check_source

    return {name: obj for name, (obj, _) in collect("tlsync_register_sources", "source", check_source).items()}


def get_source(name: str) -> Any:
    sources = get_sources()
    if name in sources:
        return sources[name]
    hint = next((f" (plugin '{p}' is broken: {err})" for p, err in broken.items() if name in p), "")
    raise PluginError(f"unknown source '{name}'{hint}; available: {', '.join(sorted(sources)) or 'none'}")
