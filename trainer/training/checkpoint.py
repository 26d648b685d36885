"""tlsync checkpoints: plain tensors and Python values, loadable with ``weights_only=True``.

A checkpoint is a dict: ``tlsync_checkpoint`` (format version), ``model`` (the state dict
of the unwrapped model), ``categories`` (label i+1 is ``categories[i]``), ``config`` (the
run's config), ``build`` (model name, pretrained start and image size: what rebuilds
the same architecture) and whatever training state the caller adds (optimizer,
scheduler, scaler, epoch, rng, best metric). Keep that state to tensors, numbers,
strings, lists and dicts: anything else would need unsafe unpickling to read back, and
``load_checkpoint`` refuses that.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from tlsync.atomic import atomic_write
from tlsync.errors import TlsyncError

from ..models.heads import remap_rows
from ..models.weights import architecture_only, load_state_file
from ..models.zoo import build_model

FORMAT = 1


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel/DistributedDataParallel or torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def save_checkpoint(path: str | os.PathLike, model: nn.Module, categories: list[str], config: dict[str, Any],
                    **state: Any) -> Path:
    """Write atomically (temp file + fsync + rename): a crash leaves the previous file intact."""
    path = Path(path)
    bare = unwrap(model)
    build = getattr(bare, "tlsync_build", None) or {
        "model": config.get("model"), "weights": "none", "img_size": config.get("img_size", 640)}
    payload = _plain({"tlsync_checkpoint": FORMAT, "categories": list(categories), "config": dict(config),
                      "build": dict(build), **state}, "checkpoint")
    payload["model"] = cpu_state_dict(bare)
    atomic_write(path, lambda f: torch.save(payload, f))
    return path


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with every tensor on the CPU (and its ``_metadata``, which batch norm's loading reads).

    A checkpoint of CUDA tensors cannot be read by a plain ``torch.load`` on a machine
    without a GPU (the CPU server a model is deployed to, a laptop looking at results).
    """
    state = model.state_dict()
    cpu = type(state)((key, tensor.detach().cpu()) for key, tensor in state.items())
    if hasattr(state, "_metadata"):
        cpu._metadata = state._metadata  # type: ignore[attr-defined]
    return cpu


def _plain(value: Any, where: str) -> Any:
    """``value`` as the built-in types ``weights_only`` loading accepts, or an error at save time.

    Failing here beats failing at load time after hours of training; subclasses of str,
    int and float (``torch.__version__`` is one) become the plain type, and tensors (the
    optimiser's state) move to the CPU, as ``cpu_state_dict`` explains.
    """
    if isinstance(value, dict):
        return {_plain(k, f"{where} key {k!r}"): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base in (bool, str, int, float):
        if isinstance(value, base):
            return base(value)
    raise TlsyncError(f"{where} is a {type(value).__module__}.{type(value).__name__}; checkpoints hold only "
                      "tensors, numbers, strings, lists and dicts (so that they load with weights_only=True)")


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``; refuse anything else."""
    path = Path(path)
    if not path.is_file():
        raise TlsyncError(f"{path}: no such checkpoint file")
    data = load_state_file(path, "checkpoint")
    if not isinstance(data, dict) or "tlsync_checkpoint" not in data:
        raise TlsyncError(f"{path}: not a tlsync checkpoint (expected weights/best.pt or last.pt of a tlsync run)")
    if data["tlsync_checkpoint"] > FORMAT:
        raise TlsyncError(f"{path}: checkpoint format {data['tlsync_checkpoint']} is newer than this tlsync "
                          f"reads ({FORMAT}); upgrade tlsync")
    for key in ("model", "categories", "config"):
        if key not in data:
            raise TlsyncError(f"{path}: tlsync checkpoint is missing its '{key}' entry")
    return data


def resolve_checkpoint(path: str | os.PathLike, weights: str | None = None) -> Path:
    """A run directory means its ``weights/best.pt`` (else ``last.pt``), or ``weights/<weights>.pt`` when named;
    a file is itself. Every command that takes ``--run`` finds its checkpoint here."""
    path = Path(path)
    if path.is_dir():
        names = [f"{weights}.pt"] if weights else ["best.pt", "last.pt"]
        for name in names:
            if (path / "weights" / name).is_file():
                return path / "weights" / name
        raise TlsyncError(f"{path}: no weights/{' or weights/'.join(names)} (is it a tlsync run directory?)")
    if not path.is_file():
        raise TlsyncError(f"{path}: no such run directory or checkpoint file")
    return path


def rebuild_model(checkpoint: dict[str, Any], num_classes: int | None = None,
                  img_size: int | None = None) -> nn.Module:
    """The checkpoint's architecture, freshly initialised, without reading any pretrained file.

    ``num_classes``/``img_size`` default to the checkpoint's; pass new ones to continue
    training on another class list (then ``transfer_weights``) or image size.
    """
    build = checkpoint.get("build") or {}
    config = checkpoint["config"]
    name = build.get("model") or config.get("model")
    if not name:
        raise TlsyncError("checkpoint names no model architecture (no build.model or config.model)")
    with architecture_only():
        return build_model(name, num_classes or len(checkpoint["categories"]), build.get("weights", "none"),
                           img_size or build.get("img_size") or config.get("img_size", 640))


def load_model(run_or_file: str | os.PathLike, device: str | torch.device = "cpu",
               ) -> tuple[nn.Module, list[str], dict[str, Any]]:
    """A trained model in eval mode on ``device``, its categories and its run config."""
    path = resolve_checkpoint(run_or_file)
    checkpoint = load_checkpoint(path)
    model = rebuild_model(checkpoint)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as e:
        build = cast(dict[str, Any], model.tlsync_build)  # a plain dict that build_model sets
        raise TlsyncError(f"{path}: weights do not fit model '{build['model']}' "
                          f"({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), list(checkpoint["categories"]), dict(checkpoint["config"])


def transfer_weights(model: nn.Module, checkpoint: dict[str, Any] | str | os.PathLike,
                     new_categories: list[str], class_map: dict[str, str] | None = None) -> dict[str, list[str]]:
    """Load a checkpoint into ``model`` (built for ``new_categories``), matching classes by name.

    Shared classes keep their head rows exactly, new classes keep the model's fresh
    initialisation, dropped classes are removed. ``class_map`` (parent name -> child name,
    ``--class-map``) lets a parent class seed a child class spelled otherwise: the parent's
    ``Car`` row becomes the child's ``car``. Every other tensor must fit as is (build
    ``model`` with ``rebuild_model(checkpoint, len(new_categories))``). Returns
    ``{"kept": [...], "mapped": ["Car -> car", ...], "new": [...], "dropped": [...]}`` for the user.
    """
    if not isinstance(checkpoint, dict):
        checkpoint = load_checkpoint(resolve_checkpoint(checkpoint))
    old_categories = list(checkpoint["categories"])
    seed = {c: c for c in new_categories if c in old_categories}  # child class -> the parent row it starts from
    for parent, child in reversed((class_map or {}).items()):  # the map wins over a same-named row; first entry wins
        if parent in old_categories and child in new_categories:
            seed[child] = parent
    mapping = {"kept": [c for c in new_categories if seed.get(c) == c],
               "mapped": [f"{seed[c]} -> {c}" for c in new_categories if seed.get(c, c) != c],
               "new": [c for c in new_categories if c not in seed],
               "dropped": [c for c in old_categories if c not in seed.values()]}
    bare = unwrap(model)
    layers = getattr(bare, "tlsync_class_layers", None) if old_categories != list(new_categories) else {}
    if layers is None:
        raise TlsyncError(f"cannot remap classes for a {type(bare).__name__}: its builder does not list its "
                          "class-dependent layers (tlsync_class_layers)")
    # new row j (0 = background) comes from old row rows[j], or keeps its fresh init when None
    rows = [0] + [old_categories.index(seed[c]) + 1 if c in seed else None for c in new_categories]
    old_state, merged = checkpoint["model"], {}
    for key, current in bare.state_dict().items():
        if key not in old_state:
            raise TlsyncError(f"checkpoint has no '{key}': the model was built with another architecture "
                              "(build it with rebuild_model(checkpoint, num_classes), "
                              "which keeps e.g. frozen batch norm)")
        layout = layers.get(key.rpartition(".")[0])
        merged[key] = remap_rows(old_state[key], current, rows, layout) if layout else old_state[key]
    unexpected = set(old_state) - set(merged)
    if unexpected:
        raise TlsyncError(f"checkpoint has tensors this model lacks (e.g. '{sorted(unexpected)[0]}'): "
                          "it was trained with another architecture")
    try:
        bare.load_state_dict(merged)
    except RuntimeError as e:
        raise TlsyncError(f"checkpoint weights do not fit the model ({str(e).splitlines()[0]})") from None
    return mapping
