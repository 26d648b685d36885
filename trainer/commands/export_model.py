"""``tlsync export-model``: export a run, check the file against the checkpoint, optionally int8.

Loaded lazily by ``tlsync.cli``. The options are an ``ExportConfig`` (``deploy/settings.py``,
where the defaults live); ``deploy/run.py`` does the work. A file that fails its check is kept
and marked UNVERIFIED in ``model.json``, and the command exits non-zero.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from tlsync.console import echo
from tlsync.errors import TlsyncError

from ..deploy.settings import ExportConfig

DEFAULTS = {f.name: f.default for f in dataclasses.fields(ExportConfig)}


@click.command(name="export-model")
@click.option("--run", "run", type=click.Path(path_type=Path), help="The run directory to export.")
@click.option("--check", "check_file", type=click.Path(path_type=Path),
              help="Re-run the parity check of an exported FILE (needs its run's checkpoint and dataset).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default=DEFAULTS["fmt"], show_default=True)
@click.option("--weights", type=click.Choice(["best", "last"]), default=None,
              help="Which checkpoint; default best.pt, else last.pt.")
@click.option("--img-size", type=click.IntRange(32), default=None, help="Default: the run's.")
@click.option("--opset", type=click.IntRange(11, 23), default=DEFAULTS["opset"], show_default=True, help="ONNX opset.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Also write model.int8.onnx (onnxruntime quantization; ONNX only).")
@click.option("--check-images", type=click.IntRange(1), default=None, help="Check on the first N val images only.")
@click.option("--max-map-drop", type=click.FloatRange(0, 1), default=DEFAULTS["max_map_drop"], show_default=True,
              help="The val mAP50-95 the int8 model may lose.")
@click.option("--calibration-images", type=click.IntRange(1, 10_000), default=DEFAULTS["calibration_images"],
              show_default=True, help="Train images that calibrate int8 activations.")
@click.option("--dataset", default=None, help="Dataset NAME@VERSION for the check; default: the run's.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None, help="Default: RUN/export.")
@click.option("--exist-ok", is_flag=True, help="Replace existing exported files in the folder.")
def export_model(**options: Any) -> None:
    """Export a run to ONNX or TorchScript and verify it against the checkpoint (or --check a file)."""
    from ..deploy.run import export_checked

    checked = export_checked(ExportConfig(**options))
    failed = [(path, why) for path, ok, why in checked if not ok]
    echo(f"model.json: {checked[0][0].parent / 'model.json'}")
    if failed:
        raise TlsyncError("; ".join(f"{p} is UNVERIFIED ({why}); kept, and model.json says so" for p, why in failed))
