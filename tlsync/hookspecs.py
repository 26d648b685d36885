"""The plugin API. These docstrings are the reference; docs/plugins.md quotes them.

A plugin is a module (or object) with functions of these names decorated with
``@tlsync.hookimpl`` (the same marker as ``tlsync.hookspecs.hookimpl``), installed under
the ``tlsync`` entry-point group. ``register`` is typed so that a type checker catches a
plugin registering the wrong kind of object (the annotations are real objects, not strings,
so the signatures docs/plugins.md quotes read as the classes' full names).
"""

from collections.abc import Callable

from pluggy import HookimplMarker, HookspecMarker

from .models import ModelSpec
from .sources import Source
from .targets import Target

hookspec = HookspecMarker("tlsync")
hookimpl = HookimplMarker("tlsync")


@hookspec
def tlsync_register_sources(register: Callable[[Source], None]) -> None:
    """Register data sources that ``tlsync pull --source NAME`` can read.

    Call ``register(source)`` once for each ``tlsync.sources.Source`` instance the plugin
    provides. The source's ``name`` must be unique among installed plugins; a duplicate is
    reported as broken (naming both plugins) and ignored.
    """


@hookspec
def tlsync_register_models(register: Callable[[ModelSpec], None]) -> None:
    """Register detector architectures that ``tlsync train --model NAME`` can build.

    Call ``register(spec)`` with a ``tlsync.models.ModelSpec``: a name, a description
    and a ``build(num_classes, weights, img_size)`` callable returning a torchvision-style
    detection model (images + targets in, a loss dict out in training mode; a list of
    ``{"boxes", "labels", "scores"}`` out in eval mode). Import torch inside ``build``,
    not at module level, so that ``tlsync --help`` stays fast.
    """


@hookspec
def tlsync_register_targets(register: Callable[[Target], None]) -> None:
    """Register destinations that ``tlsync push --target NAME`` can send predictions to.

    Call ``register(target)`` with a ``tlsync.targets.Target`` instance; its ``push``
    receives the run's categories and config and an iterator of predicted ``Item``s.
    """
