"""The plugin API. These docstrings are the reference; docs/plugins.md quotes them.

A plugin is a module (or object) with functions of these names decorated with
``@tlsync.hookimpl`` (the same marker as ``tlsync.hookspecs.hookimpl``), installed under
the ``tlsync`` entry-point group. ``register`` is typed so that a type checker catches a
plugin registering the wrong kind of object (the annotations are real objects, not strings,
so the signatures docs/plugins.md quotes read as the classes' full names).
"""

from collections.abc import Callable
from typing import Any

from pluggy import HookimplMarker, HookspecMarker

from .events import TrainingCallback
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
    A target that also overrides ``send_selection(selection, run, **options)`` can
    receive ``tlsync select --target NAME``: a ``tlsync.targets.Selection`` of the
    images picked for labelling (best first, with the run's predicted boxes), with
    the target's ``selection_options`` as keyword arguments. The same method receives
    ``tlsync audit --target NAME``: a ``Selection`` of the images whose labels look
    wrong (``strategy`` ``"audit"``), the suggested labelling as each item's boxes and
    the current labels in ``selection.labels``, for a reviewer to compare. It must send
    only what the platform lacks, so a re-run after a failure completes the job.
    """


@hookspec
def tlsync_register_callbacks(register: Callable[[TrainingCallback], None], config: dict[str, Any]) -> None:
    """Register objects that receive a training run's events (trackers, notifiers).

    Called once per run, on rank 0 only, before the first epoch (and again for ``--resume``
    and for each ``tlsync curve`` point, which are runs too). ``config`` is the run's
    resolved settings with secrets removed, including ``log`` (the ``--log`` tracker names)
    and ``dataset`` (name@version); register nothing to stay out of this run. Call
    ``register(callback)`` with a ``tlsync.events.TrainingCallback`` whose methods
    ``on_run_start``, ``on_epoch_end``, ``on_eval_end``, ``on_checkpoint_saved`` and
    ``on_run_end`` each receive one event dataclass of plain data (see ``tlsync.events``).
    A callback that raises is reported once, as a warning naming the plugin, and training
    goes on; it cannot change what is trained. Raise ``tlsync.errors.TlsyncError`` from
    this hook only to refuse the run (say, a tracker that was asked for is not installed).
    """
