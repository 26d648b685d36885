"""``tlsync export-model``: a run's checkpoint as an ONNX or TorchScript file plus ``model.json``.

Both formats trace the same wrapper: one 0..1 float RGB CHW image in, ``(boxes, labels,
scores)`` out, with torchvision's own resize, normalisation and post-processing (score
threshold, NMS, detections per image) inside the graph. Tracing is what torchvision's
detection models are written to support for ONNX (their resize and anchor code switch to
shape-generic ops while tracing), and EfficientNet-Lite0 cannot be scripted, so TorchScript
is traced too: one code path, one set of limits, both measured by the parity check
(``trainer/deploy/parity.py``) rather than assumed.

The export goes to a temp name and is renamed into place only when it loads back; an
existing file is never replaced unless ``exist_ok``. ``model.json`` holds one entry per
file in the folder, so ``model.onnx``, ``model.int8.onnx`` and ``model.torchscript.pt`` of one
run share one description.
"""

from __future__ import annotations

import warnings
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from tlsync.atomic import atomic_write_file, atomic_write_json
from tlsync.errors import TlsyncError

from .runner import (
    EXTRA,
    FORMAT,
    ONNX_SUFFIX,
    ORT_OPTIMISATION,
    SIDECAR,
    TORCHSCRIPT_SUFFIX,
    read_sidecar_file,
    sha256,
)
from .settings import DEFAULT_OPSET


class SingleImage(nn.Module):
    """The detector as a function of one CHW image: tensors out, not a list of dicts, so it traces."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model([image])[0]
        return out["boxes"], out["labels"], out["scores"]


def traceable(model: nn.Module) -> nn.Module:
    """The model, or a copy of it whose input-size arithmetic the tracer records instead of freezing.

    EfficientNet-Lite's TensorFlow-style "same" padding computes ``math.ceil(height / stride)``
    in Python: traced, that part becomes a constant while ``- height`` stays live, so an image
    of another shape is padded by tens of pixels (measured: every box lost at 128x96 after a
    128x128 trace). The copy's convolutions use the same formula in integer arithmetic, which
    traces. The original model is left alone: it is what the parity check compares against.
    """
    try:
        from efficientnet_lite_pytorch.utils import Conv2dDynamicSamePadding
    except ImportError:
        return model
    if not any(type(m) is Conv2dDynamicSamePadding for m in model.modules()):
        return model

    class TracedSamePadding(Conv2dDynamicSamePadding):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            pads = []
            for i, k, s, d in ((x.shape[-1], self.weight.shape[-1], self.stride[1], self.dilation[1]),
                               (x.shape[-2], self.weight.shape[-2], self.stride[0], self.dilation[0])):
                pad = ((i + s - 1) // s - 1) * s + (k - 1) * d + 1 - i  # never negative when (k - 1) d + 1 >= s
                pads += [pad // 2, pad - pad // 2]
            return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, self.padding, self.dilation,
                            self.groups)

    copy = deepcopy(model)
    for module in copy.modules():
        if type(module) is not Conv2dDynamicSamePadding:
            continue
        conv: Any = module
        if all((k - 1) * d + 1 >= s for k, s, d in zip(conv.kernel_size, conv.stride, conv.dilation, strict=True)):
            module.__class__ = TracedSamePadding
    return copy


def file_name(fmt: str, quantized: bool = False) -> str:
    return "model" + (".int8" if quantized else "") + (ONNX_SUFFIX if fmt == "onnx" else TORCHSCRIPT_SUFFIX)


def claim(path: Path, exist_ok: bool) -> None:
    """Refuse to replace an earlier export unless asked: a verified file must not change under its users."""
    if path.exists() and not exist_ok:
        raise TlsyncError(f"{path} already exists; pass --exist-ok to replace it, or --out another folder")


def export_file(model: nn.Module, fmt: str, example: torch.Tensor, path: Path, opset: int = DEFAULT_OPSET) -> None:
    """Trace ``model`` on ``example`` and write the file atomically; a one-line error names what failed."""
    name = getattr(model, "tlsync_build", {}).get("model", type(model).__name__)
    wrapper = SingleImage(traceable(model)).eval()

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer warns about every Python int it freezes
            if fmt == "onnx":
                _onnx_export(wrapper, example, tmp, opset)
            else:
                torch.jit.save(torch.jit.trace(wrapper, (example,), check_trace=False, strict=False), tmp)

    try:
        atomic_write_file(path, write)
    except TlsyncError:
        raise
    except Exception as e:  # the exporters raise many types; the user needs the model and the first line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise TlsyncError(f"model '{name}' cannot be exported to {fmt}: {type(e).__name__}: {first}") from None


def _onnx_export(wrapper: nn.Module, example: torch.Tensor, path: str, opset: int) -> None:
    try:
        import onnx
    except ImportError:
        raise TlsyncError(f"ONNX export needs onnx and onnxruntime: {EXTRA}") from None
    # The TorchScript-based exporter: torch.export (dynamo=True) cannot capture torchvision's
    # data-dependent post-processing (NMS output sizes) without rewriting the models.
    torch.onnx.export(wrapper, (example,), path, opset_version=opset, dynamo=False,
                      input_names=["image"], output_names=["boxes", "labels", "scores"],
                      dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                                    "labels": {0: "detections"}, "scores": {0: "detections"}})
    onnx.checker.check_model(path)


def describe(model: nn.Module, categories: list[str], config: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """What a consumer needs to feed the graph and read its outputs, taken from the model itself.

    Only torchvision-style detectors qualify: the graph must carry the model's own resize and
    normalisation (``GeneralizedRCNNTransform``) and its score threshold, or model.json could
    not say what to feed it.
    """
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    build: dict[str, Any] = getattr(model, "tlsync_build", {})
    name = build.get("model", type(model).__name__)
    transform = getattr(model, "transform", None)
    head: Any = getattr(model, "roi_heads", model)
    if not isinstance(transform, GeneralizedRCNNTransform) or not hasattr(head, "score_thresh"):
        raise TlsyncError(f"model '{name}' cannot be exported: it is a {type(model).__name__}, not a torchvision-style "
                          "detector with a GeneralizedRCNNTransform (.transform) and a score threshold for the graph")
    fixed = getattr(transform, "fixed_size", None)
    mean, std = [float(v) for v in transform.image_mean], [float(v) for v in transform.image_std]
    if fixed:
        size_rule = f"any height and width; the graph resizes to {fixed[0]}x{fixed[1]} (aspect not kept)"
    else:
        size_rule = (f"any height and width; the graph scales the image so its short side is {transform.min_size[0]} "
                     f"px, capped so its long side is at most {transform.max_size} px (aspect kept)")
    lite = [round(m * 255, 3) for m in mean] == [127.0] * 3 and [round(s * 255, 3) for s in std] == [128.0] * 3
    return {
        "tlsync_export": FORMAT,
        "model": name,
        "dataset": config.get("dataset"),
        "checkpoint": checkpoint.name,
        "checkpoint_sha256": sha256(checkpoint),
        "classes": ["__background__", *categories],
        "background_index": 0,
        "input": {"name": "image", "layout": "CHW", "dtype": "float32", "range": [0.0, 1.0], "channels": "RGB",
                  "batch": 1, "img_size": build.get("img_size"), "size_rule": size_rule},
        "normalisation": {"inside_graph": True, "mean": mean, "std": std,
                          "formula": "(pixel - 127) / 128 on 0..255 pixels (EfficientNet-Lite0)" if lite
                          else "(x - mean) / std on 0..1 pixels (ImageNet statistics)"},
        "outputs": {"boxes": "float32 [N, 4], x0 y0 x1 y1 in input-image pixels",
                    "labels": "int64 [N], index into classes (never 0)",
                    "scores": "float32 [N], descending"},
        "score_threshold": float(head.score_thresh),
        "nms_iou_threshold": float(head.nms_thresh),
        "detections_per_image": int(head.detections_per_img),
        "versions": versions(),
        "files": {},
    }


def versions() -> dict[str, str]:
    import torchvision

    from tlsync import __version__

    found = {"tlsync": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}
    for package in ("onnx", "onnxruntime"):
        try:
            found[package] = str(__import__(package).__version__)
        except ImportError:
            pass
    return found


def file_entry(path: Path, fmt: str, opset: int | None, precision: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"format": fmt, "precision": precision, "bytes": path.stat().st_size,
                             "sha256": sha256(path), "verified": False, "why": "parity check not run yet"}
    if fmt == "onnx":
        entry.update(opset=opset, runtime="onnxruntime CPUExecutionProvider",
                     graph_optimisation=f"{ORT_OPTIMISATION} (applied when the session loads)")
    else:
        entry.update(runtime="torch.jit.load (needs torch and torchvision for its nms/roi_align ops)")
    return entry


def write_sidecar(folder: Path, meta: dict[str, Any], name: str, entry: dict[str, Any]) -> Path:
    """Add or replace one file's entry in ``model.json``, keeping the other files' entries."""
    sidecar = folder / SIDECAR
    files: dict[str, Any] = {}
    if sidecar.is_file():
        try:
            old = read_sidecar_file(sidecar)
        except TlsyncError:  # not ours, or broken: written afresh
            old = {}
        same_source = old.get("checkpoint_sha256") == meta["checkpoint_sha256"]
        files = {k: v for k, v in old.get("files", {}).items() if same_source and (folder / k).is_file()}
    files[name] = entry
    atomic_write_json(sidecar, {**meta, "files": files})
    return sidecar


def update_entry(path: Path, **fields: Any) -> None:
    sidecar = path.parent / SIDECAR
    meta = read_sidecar_file(sidecar)
    meta["files"][path.name].update(fields)
    atomic_write_json(sidecar, meta)
