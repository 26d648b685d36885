"""Running an exported model file (ONNX through onnxruntime, TorchScript through torch.jit).

An exported file never travels alone: ``model.json`` beside it says what the graph expects
(a 0..1 float RGB image, CHW, one at a time), what its outputs mean (class names in output
order, index 0 = background) and the sha256 of each file. Loading checks that hash, so a
file that was changed after export, or one without its ``model.json``, is refused with one
clear line instead of predicting silently with unknown weights or class names.

The ONNX path imports onnxruntime and torch only (torch for the tensors the shared
predict/eval code passes around), never torchvision: a deployment does not need the model
code. ``ExportedModel`` looks enough like a detector module (``eval``, ``train``, called on a
list of CHW tensors, returning torchvision-style dicts) that ``predict_items`` and
``evaluate_split`` run it unchanged.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlsync.errors import TlsyncError

EXTRA = "pip install 'tlsync[onnx]'"
SIDECAR = "model.json"
FORMAT = 1
ONNX_SUFFIX = ".onnx"
TORCHSCRIPT_SUFFIX = ".torchscript.pt"
# Graph optimisations onnxruntime applies on load; int8 graphs depend on them (QDQ pairs fuse into QLinearConv).
ORT_OPTIMISATION = "ORT_ENABLE_ALL"


def is_exported(path: str | Path) -> bool:
    name = Path(path).name
    return name.endswith(ONNX_SUFFIX) or name.endswith(TORCHSCRIPT_SUFFIX)


def file_format(path: str | Path) -> str:
    name = Path(path).name
    if name.endswith(ONNX_SUFFIX):
        return "onnx"
    if name.endswith(TORCHSCRIPT_SUFFIX):
        return "torchscript"
    raise TlsyncError(f"{path}: not an exported model (expected a {ONNX_SUFFIX} or {TORCHSCRIPT_SUFFIX} file)")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_sidecar_file(sidecar: Path) -> dict[str, Any]:
    """A ``model.json``: the one place it is parsed (loading, checking, and adding a file's entry all read it)."""
    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TlsyncError(f"{sidecar}: not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("tlsync_export") != FORMAT or not isinstance(meta.get("files"), dict):
        raise TlsyncError(f"{sidecar}: not a tlsync export description (format {FORMAT})")
    return meta


def read_sidecar(path: Path) -> dict[str, Any]:
    """``model.json`` beside ``path``, checked for an entry for this file."""
    sidecar = path.parent / SIDECAR
    if not sidecar.is_file():
        raise TlsyncError(f"{path}: no {SIDECAR} beside it; an exported model needs its {SIDECAR} (class names, "
                          "input rules, sha256): keep the two together as `tlsync export-model` wrote them")
    meta = read_sidecar_file(sidecar)
    if path.name not in meta["files"]:
        raise TlsyncError(f"{sidecar} describes {', '.join(sorted(meta['files'])) or 'no files'}, not {path.name}")
    classes = meta.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise TlsyncError(f"{sidecar}: 'classes' must list the background and at least one class name")
    return meta


def verify_hash(path: Path, meta: dict[str, Any]) -> None:
    expected = meta["files"][path.name].get("sha256")
    actual = sha256(path)
    if actual != expected:
        raise TlsyncError(f"{path}: sha256 {actual[:12]}... does not match {SIDECAR} ({str(expected)[:12]}...): "
                          "the file was changed after export; re-export it with `tlsync export-model`")


def ort_session(path: Path | bytes, threads: int | None = None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise TlsyncError(f"running an ONNX model needs onnxruntime: {EXTRA}") from None
    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_OPTIMISATION)
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # onnxruntime's per-node warnings are not the user's problem
    model = str(path) if isinstance(path, Path) else path
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


class ExportedModel:
    """An exported detector: called on a list of 0..1 float CHW tensors, returns torchvision-style dicts."""

    training = False

    def __init__(self, path: Path, meta: dict[str, Any], threads: int | None = None):
        self.path, self.meta = path, meta
        self.format = file_format(path)
        self.categories = list(meta["classes"][1:])  # label i is categories[i - 1], as for a run
        if self.format == "onnx":
            self.session = ort_session(path, threads)
            self.input_name = self.session.get_inputs()[0].name
        else:
            import torchvision  # noqa: F401  (registers torchvision::nms and roi_align, which the graph calls)

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)  # torch 2.9+ flags TorchScript as deprecated
                    self.module = torch.jit.load(str(path), map_location="cpu").eval()
            except RuntimeError as e:
                raise TlsyncError(f"{path}: not a loadable TorchScript file ({str(e).splitlines()[0]})") from None

    def eval(self) -> ExportedModel:
        return self

    def train(self, mode: bool = True) -> ExportedModel:
        return self

    def run_one(self, image: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(boxes xyxy, labels, scores)`` for one CHW image in input pixels."""
        image = image.detach().to("cpu", torch.float32).contiguous()
        if self.format == "onnx":
            boxes, labels, scores = self.session.run(None, {self.input_name: image.numpy()})
        else:
            with torch.inference_mode():
                boxes, labels, scores = (t.numpy() for t in self.module(image))
        return np.asarray(boxes, np.float32), np.asarray(labels, np.int64), np.asarray(scores, np.float32)

    def __call__(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:  # the exported graph takes one image (batch 1); see model.json "limits"
            boxes, labels, scores = self.run_one(image)
            out.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels),
                        "scores": torch.from_numpy(scores)})
        return out


def load_exported(path: str | Path, threads: int | None = None, check_hash: bool = True) -> ExportedModel:
    """An exported model with its ``model.json``; refuses a missing sidecar or a changed file."""
    path = Path(path)
    if not path.is_file():
        raise TlsyncError(f"{path}: no such exported model file")
    file_format(path)
    meta = read_sidecar(path)
    if check_hash:
        verify_hash(path, meta)
    return ExportedModel(path, meta, threads)
