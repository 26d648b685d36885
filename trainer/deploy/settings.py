"""What ``tlsync export-model`` is asked to do (``ExportConfig``), as ``TrainConfig`` is for ``train``.

The command reads its option defaults from here, so the defaults and the reasons for them
live in one place, and the work (``deploy.run.export_checked``) takes one object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tlsync.errors import TlsyncError

DEFAULT_OPSET = 17


@dataclass
class ExportConfig:
    """Export ``run`` (or re-check ``check_file``), then hold the file to the checkpoint's outputs."""

    run: Path | None = None  # the run to export; with check_file, where its checkpoint is (default: its run)
    check_file: Path | None = None  # re-run the parity check of this exported file instead of exporting
    fmt: str = "onnx"  # onnx | torchscript
    weights: str | None = None  # best | last; default best.pt, else last.pt
    img_size: int | None = None  # the resize baked into the graph; default: the run's
    opset: int = DEFAULT_OPSET
    quantize: str | None = None  # int8: also write model.int8.onnx
    check_images: int | None = None  # check on the first N val images only (default: all)
    max_map_drop: float = 0.01  # the val mAP50-95 an int8 file may lose against the checkpoint and still pass
    calibration_images: int = 32  # train images that calibrate int8 activations
    dataset: str | None = None  # NAME@VERSION for the check; default: the run's
    out: Path | None = None  # default: RUN/export
    exist_ok: bool = False  # replace exported files already in the folder

    def __post_init__(self) -> None:
        if (self.run is None) == (self.check_file is None):
            raise TlsyncError("give --run RUN to export, or --check FILE to check an exported file")
        if self.check_file is None and self.quantize and self.fmt != "onnx":
            raise TlsyncError("--quantize int8 writes an ONNX model; use it with --format onnx")
