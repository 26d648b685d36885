"""Pretrained weights, offline: the torch hub cache, never a download.

torchvision's builders fetch weights with ``torch.hub.load_state_dict_from_url``, which
downloads whatever is missing and unpickles with ``weights_only=False``. tlsync builds
every torchvision model inside ``hub_weights()``, which routes those fetches through
``load_cached``: the file must already be in ``$TORCH_HOME/hub/checkpoints`` (else a
one-line error says which file, from where, and where to put it) and is read with
``torch.load(weights_only=True)``.

Rebuilding a trained model (``load_model``, ``--resume``, ``--weights RUN``) needs the
architecture its pretrained start implied (frozen batch norm, SSDLite's tail) but none of
the pretrained tensors, which the checkpoint replaces anyway: inside
``architecture_only()`` fetches return a freshly initialised state dict of the right
shapes instead, so no pretrained file is needed on the machine that predicts.
"""

from __future__ import annotations

import inspect
import pickle
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from tlsync.errors import TlsyncError
from tlsync.models import WeightsFile

_state = threading.local()
_patch_lock = threading.RLock()


def checkpoints_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``, where torch hub (and so tlsync) looks for weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_path(url: str) -> Path:
    return checkpoints_dir() / Path(urlparse(url).path).name


def architecture_only_active() -> bool:
    return getattr(_state, "architecture_only", False)


@contextmanager
def architecture_only() -> Iterator[None]:
    """Build models with their pretrained architecture but without reading any weights file."""
    previous = architecture_only_active()
    _state.architecture_only = True
    try:
        yield
    finally:
        _state.architecture_only = previous


def load_state_file(path: Path, what: str) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with one-line errors naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        reason = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else type(e).__name__)
        raise TlsyncError(f"{path}: refused to load {what}: it needs unsafe unpickling ({reason})") from None
    except Exception as e:  # torch raises KeyError, RuntimeError, EOFError... for damaged files
        raise TlsyncError(f"{path}: cannot read {what}: not a complete torch file "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None


def missing_file_error(what: str, url: str, path: Path) -> TlsyncError:
    return TlsyncError(f"{what} weights not found: put {path.name} (from {url}) in {path.parent}/ "
                       "(tlsync never downloads weights; `tlsync weights where MODEL` lists them)")


def load_cached(url: str, what: str = "pretrained") -> dict[str, Any]:
    """The state dict at ``url``, read from the torch hub cache only."""
    path = cache_path(url)
    if not path.is_file():
        raise missing_file_error(what, url, path)
    return load_state_file(path, f"{what} weights")


def _builder_for(enum: WeightsEnum) -> Callable[..., nn.Module]:
    for name in torchvision.models.list_models():
        if torchvision.models.get_model_weights(name) is type(enum):
            return torchvision.models.get_model_builder(name)
    raise TlsyncError(f"no torchvision builder uses {enum}")


def _fresh_state_dict(enum: WeightsEnum) -> dict[str, Any]:
    """A randomly initialised state dict shaped like ``enum``'s file (its builder, no weights)."""
    builder = _builder_for(enum)
    no_weights = {p: None for p in ("weights", "weights_backbone") if p in inspect.signature(builder).parameters}
    return builder(**no_weights).state_dict()


def _fetch(enum: WeightsEnum, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Stands in for ``WeightsEnum.get_state_dict`` while tlsync builds a model."""
    if architecture_only_active():
        return _fresh_state_dict(enum)
    return load_cached(enum.url, str(enum))


@contextmanager
def hub_weights() -> Iterator[None]:
    """Within this block torchvision reads pretrained weights through ``load_cached``."""
    with _patch_lock:
        original = WeightsEnum.get_state_dict
        WeightsEnum.get_state_dict = _fetch
        try:
            yield
        finally:
            WeightsEnum.get_state_dict = original


def torchvision_weights(builder_name: str, weights: str) -> dict[str, WeightsEnum | None]:
    """The ``weights=``/``weights_backbone=`` arguments for a torchvision builder (``none``: neither)."""
    if weights == "coco":
        return {"weights": torchvision.models.get_model_weights(builder_name).DEFAULT, "weights_backbone": None}
    if weights == "imagenet":
        return {"weights": None, "weights_backbone": backbone_weights(builder_name)}
    return {"weights": None, "weights_backbone": None}


def backbone_weights(builder_name: str) -> WeightsEnum:
    """The ImageNet backbone torchvision pairs with this detector (its builder's default).

    The v2 builders (both ResNet-50) name no default, their COCO weights having been
    trained from scratch; they get the same ResNet-50 as v1.
    """
    builder = torchvision.models.get_model_builder(builder_name)
    default = inspect.signature(builder).parameters["weights_backbone"].default
    return default if default is not None else torchvision.models.ResNet50_Weights.IMAGENET1K_V1


def torchvision_where(builder_name: str) -> list[WeightsFile]:
    files = []
    for what, enum in (("coco", torchvision.models.get_model_weights(builder_name).DEFAULT),
                       ("imagenet", backbone_weights(builder_name))):
        path = cache_path(enum.url)
        files.append(WeightsFile(what, enum.url, path, path.is_file()))
    return files


def weights_where(model: str) -> list[WeightsFile]:
    """Which pretrained files ``model`` can start from, where they go, and whether they are there."""
    from tlsync.plugins import get_model

    spec = get_model(model)
    return spec.where() if spec.where else []
