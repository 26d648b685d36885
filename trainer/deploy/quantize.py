"""``--quantize int8``: a second, smaller ONNX file from onnxruntime's quantization tooling.

Static quantization (QDQ, weights per channel, activations calibrated on train images) is
tried first: onnxruntime fuses its QuantizeLinear/DequantizeLinear pairs into QLinearConv /
QGemm kernels at load time (graph optimisation level ORT_ENABLE_ALL), which is where the
speed comes from. Only the convolutions and the box head's matrix products are quantized;
the class/box predictors and everything after them (box decoding, NMS) stay float, so
the boxes keep their precision. Where calibration cannot run the graph, dynamic quantization
(weights only, MatMul/Gemm) is the fallback, and ``model.json`` says which was used.

This CPU has no VNNI instructions, so weights use a reduced 7-bit range: full-range u8 x s8
products can saturate the AVX2 int16 accumulators and cost accuracy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from tlsync.atomic import atomic_write_file
from tlsync.errors import TlsyncError
from tlsync.format import Item
from tlsync.store import DatasetVersion

from .runner import EXTRA

OPS = ["Conv", "Gemm", "MatMul"]
KEEP_FLOAT = ("box_predictor", "rpn/head/cls_logits", "rpn/head/bbox_pred", "cls_logits", "bbox_reg",
              "regression_head", "classification_head")


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over train images (decoded one at a time)."""

    def __init__(self, images: Iterator[np.ndarray]):
        self.images = images

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self.images, None)
        return None if image is None else {"image": image}

    def rewind(self) -> None:  # some onnxruntime versions call it; one pass is all calibration needs
        pass


def calibration_set(version: DatasetVersion, count: int) -> tuple[str, list[Item]]:
    """Up to ``count`` train images (val ones when train has none), and the split they are from:
    a dataset with fewer images than asked calibrates with what it has, and says so."""
    for split in ("train", "val"):
        items = list(islice(version.items(split), count))
        if items:
            return split, items
    raise TlsyncError(f"dataset {version.ref} has no train or val images to calibrate int8 with")


def calibration_images(version: DatasetVersion, items: list[Item]) -> Iterator[np.ndarray]:
    from ..evaluation.predict import image_tensor, load_image

    for item in items:
        yield image_tensor(load_image(version.image_path(item))).numpy()


def quantize(source: Path, target: Path, version: DatasetVersion, calibration: int = 32) -> dict[str, Any]:
    """Write ``target`` (temp name, then renamed); returns how it was quantized, for model.json
    (``calibration_images``: how many were used, which may be fewer than ``calibration``)."""
    try:
        import onnx
        from onnxruntime import quantization as q
    except ImportError:
        raise TlsyncError(f"--quantize int8 needs onnx and onnxruntime: {EXTRA}") from None
    graph = onnx.load(str(source))
    keep = [n.name for n in graph.graph.node if n.op_type in OPS and any(k in n.name for k in KEEP_FLOAT)]
    split, items = calibration_set(version, calibration)
    how: dict[str, Any] = {}

    def write(tmp: str) -> None:
        try:
            q.quantize_static(str(source), tmp, _Calibration(calibration_images(version, items)),
                              quant_format=q.QuantFormat.QDQ, op_types_to_quantize=OPS, per_channel=True,
                              reduce_range=True, activation_type=q.QuantType.QUInt8,
                              weight_type=q.QuantType.QInt8, nodes_to_exclude=keep,
                              calibrate_method=q.CalibrationMethod.MinMax)
            how.update(method="static", format="QDQ", calibration=f"{len(items)} {split} images, MinMax",
                       calibration_images=len(items), calibration_split=split)
        except Exception as e:  # calibration that cannot run the graph -> weights only
            q.quantize_dynamic(str(source), tmp, op_types_to_quantize=["MatMul", "Gemm"],
                               weight_type=q.QuantType.QInt8, nodes_to_exclude=keep)
            how.update(method="dynamic", why_not_static=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the tooling logs advice on the root logger at WARNING for every call
    try:
        atomic_write_file(target, write)
    finally:
        root.setLevel(level)
    how.update(quantized_ops=OPS, kept_float=sorted(keep), weights="int8 per channel, 7-bit range",
               activations="uint8")
    return how
