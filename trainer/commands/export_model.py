"""``tlsync export-model``: export a run, check the file against the checkpoint, optionally int8.

Loaded lazily by ``tlsync.cli``. Every export is followed by the parity check; a file that
fails it is kept (the user may still want to inspect it) but ``model.json`` records
``verified: false`` with the reason, and the command exits non-zero, so a deployment
script never ships an unchecked model by accident. ``--check FILE`` re-runs the check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch

from tlsync.console import info, progress
from tlsync.errors import TlsyncError

from ..deploy import parity
from ..deploy.export import (
    DEFAULT_OPSET,
    claim,
    describe,
    export_file,
    file_entry,
    file_name,
    update_entry,
    write_sidecar,
)
from ..deploy.runner import load_exported, read_sidecar, sha256


@click.command(name="export-model")
@click.option("--run", "run", type=click.Path(path_type=Path), help="The run directory to export.")
@click.option("--check", "check_file", type=click.Path(path_type=Path),
              help="Re-run the parity check of an exported FILE (needs its run's checkpoint and dataset).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True)
@click.option("--weights", type=click.Choice(["best", "last"]), default=None,
              help="Which checkpoint; default best.pt, else last.pt.")
@click.option("--img-size", type=click.IntRange(32), default=None, help="Default: the run's.")
@click.option("--opset", type=click.IntRange(11, 23), default=DEFAULT_OPSET, show_default=True, help="ONNX opset.")
@click.option("--quantize", type=click.Choice(["int8"]), default=None,
              help="Also write model.int8.onnx (onnxruntime quantization; ONNX only).")
@click.option("--check-images", type=click.IntRange(1), default=None, help="Check on the first N val images only.")
@click.option("--max-map-drop", type=click.FloatRange(0, 1), default=0.01, show_default=True,
              help="The val mAP50-95 the int8 model may lose.")
@click.option("--calibration-images", type=click.IntRange(1, 10_000), default=32, show_default=True,
              help="Train images that calibrate int8 activations.")
@click.option("--dataset", default=None, help="Dataset NAME@VERSION for the check; default: the run's.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None, help="Default: RUN/export.")
@click.option("--exist-ok", is_flag=True, help="Replace existing exported files in the folder.")
def export_model(run: Path | None, check_file: Path | None, fmt: str, weights: str | None, img_size: int | None,
                 opset: int, quantize: str | None, check_images: int | None, max_map_drop: float,
                 calibration_images: int, dataset: str | None, out: Path | None, exist_ok: bool) -> None:
    """Export a run to ONNX or TorchScript and verify it against the checkpoint (or --check a file)."""
    if (run is None) == (check_file is None):
        raise TlsyncError("give --run RUN to export, or --check FILE to check an exported file")
    if check_file is not None:
        checked = [recheck(check_file, run, dataset, check_images, max_map_drop)]
    else:
        assert run is not None
        if quantize and fmt != "onnx":
            raise TlsyncError("--quantize int8 writes an ONNX model; use it with --format onnx")
        checked = export_run(run, fmt, weights, img_size, opset, quantize, check_images, max_map_drop,
                             calibration_images, dataset, out, exist_ok)
    failed = [(path, why) for path, ok, why in checked if not ok]
    click.echo(f"model.json: {checked[0][0].parent / 'model.json'}")
    if failed:
        raise TlsyncError("; ".join(f"{p} is UNVERIFIED ({why}); kept, and model.json says so" for p, why in failed))


def export_run(run: Path, fmt: str, weights: str | None, img_size: int | None, opset: int, quantize: str | None,
               check_images: int | None, max_map_drop: float, calibration: int, dataset: str | None,
               out: Path | None, exist_ok: bool) -> list[tuple[Path, bool, str]]:
    from tlsync.store import Store

    from .evaluate import run_dir

    checkpoint = pick_checkpoint(run_dir(run), weights)
    model, categories, config = load_for_export(checkpoint, img_size)
    version = Store().open(dataset or _dataset(config, run))
    folder = out or run / "export"
    target = folder / file_name(fmt)
    int8 = folder / file_name(fmt, quantized=True) if quantize else None
    for path in (target, int8):
        if path is not None:
            claim(path, exist_ok)
    meta = describe(model, categories, config, checkpoint)
    _same_source(folder, meta, exist_ok)
    example = _first_image(version)
    with progress(f"export {meta['model']} to {fmt}", unit="steps") as update:
        update(0, total=1)
        export_file(model, fmt, example, target, opset)
        update(1, total=1)
    write_sidecar(folder, meta, target.name, file_entry(target, fmt, opset if fmt == "onnx" else None, "fp32"))
    click.echo(f"exported: {target} ({target.stat().st_size / 1e6:.1f} MB)")
    original = cached(parity.torch_outputs(model))
    candidates = parity.torch_candidates(model)
    results = [check(target, original, version, categories, check_images, max_map_drop, candidates)]
    if int8 is not None:
        from ..deploy.quantize import quantize as run_quantize

        info(f"quantizing to int8 with {calibration} calibration images")
        how = run_quantize(target, int8, version, calibration)
        write_sidecar(folder, meta, int8.name, {**file_entry(int8, "onnx", opset, "int8"), "quantization": how})
        click.echo(f"exported: {int8} ({int8.stat().st_size / 1e6:.1f} MB, {how['method']} int8; "
                   f"{target.stat().st_size / int8.stat().st_size:.1f}x smaller)")
        results.append(check(int8, original, version, categories, check_images, max_map_drop, candidates))
    return results


def pick_checkpoint(run: Path, weights: str | None) -> Path:
    names = [f"{weights}.pt"] if weights else ["best.pt", "last.pt"]
    for name in names:
        if (run / "weights" / name).is_file():
            return run / "weights" / name
    raise TlsyncError(f"{run}: no weights/{' or weights/'.join(names)} (is it a finished tlsync run?)")


def load_for_export(checkpoint: Path, img_size: int | None) -> tuple[torch.nn.Module, list[str], dict[str, Any]]:
    """The checkpoint's model in eval mode, rebuilt at ``img_size`` when given (the resize is in the graph)."""
    from ..training.checkpoint import load_checkpoint, rebuild_model

    data = load_checkpoint(checkpoint)
    model = rebuild_model(data, img_size=img_size)
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as e:
        raise TlsyncError(f"{checkpoint}: weights do not fit the model ({str(e).splitlines()[0]})") from None
    return model.eval(), list(data["categories"]), dict(data["config"])


def _dataset(config: dict[str, Any], run: Path) -> str:
    if not config.get("dataset"):
        raise TlsyncError(f"{run}: the checkpoint names no dataset; pass --dataset NAME@VERSION for the check")
    return str(config["dataset"])


def _same_source(folder: Path, meta: dict[str, Any], exist_ok: bool) -> None:
    """One model.json describes one checkpoint: refuse to mix exports of two checkpoints in one folder."""
    sidecar = folder / "model.json"
    if sidecar.is_file() and not exist_ok:
        try:
            old = read_sidecar_any(sidecar)
        except TlsyncError:
            return
        others = any((folder / f).is_file() for f in old["files"])
        if old.get("checkpoint_sha256") != meta["checkpoint_sha256"] and others:
            raise TlsyncError(f"{folder} holds exports of another checkpoint; use --out another folder or --exist-ok")


def read_sidecar_any(sidecar: Path) -> dict[str, Any]:
    import json

    try:
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise TlsyncError(f"{sidecar}: unreadable") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("files"), dict):
        raise TlsyncError(f"{sidecar}: not a tlsync export description")
    return meta


def _first_image(version: Any) -> torch.Tensor:
    """A real val image to trace with: a random one may produce no boxes and trace a degenerate graph."""
    from ..evaluation.evaluate import split_items
    from ..evaluation.predict import image_tensor, load_image

    return image_tensor(load_image(version.image_path(split_items(version, "val")[0])))


def cached(run: Callable[[torch.Tensor], parity.Outputs]) -> Callable[[torch.Tensor], parity.Outputs]:
    """The original's outputs per image content, so an fp32 and an int8 check share one torch pass."""
    seen: dict[bytes, parity.Outputs] = {}

    def call(image: torch.Tensor) -> parity.Outputs:
        key = hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest() + bytes(str(image.shape), "ascii")
        if key not in seen:
            seen[key] = run(image)
        return seen[key]

    return call


def check(path: Path, original: Callable[[torch.Tensor], parity.Outputs], version: Any, categories: list[str],
          limit: int | None, max_map_drop: float,
          candidates: parity.Candidates) -> tuple[Path, bool, str]:
    """Run the parity check of ``path`` and record the outcome in its model.json entry.

    ``candidates`` (the original with NMS and caps lifted) prove tie swaps in an fp32 file; an
    int8 file is held to its mAP cost, so no tie is looked for there.
    """
    exported = load_exported(path)
    quantized = exported.meta["files"][path.name].get("precision") == "int8"
    ties = None if quantized else candidates
    with progress(f"parity check {path.name}", unit="images") as update:
        result = parity.compare(original, exported.run_one, version, parity.check_split(version), categories,
                                limit, progress=update, candidates=ties)
    limits = parity.probe_shapes(original, exported.run_one, result.pop("probe_image"), quantized, ties)
    verified, why = parity.verdict(result, quantized, max_map_drop)
    if quantized:
        result["max_map_drop"] = max_map_drop
    update_entry(path, verified=verified, why=why, parity=result, limits=limits)
    click.echo(parity.summary_line(path, result, verified, why))
    shapes = ", ".join("x".join(map(str, s["shape"])) for s in limits["input_shapes_ok"])
    click.echo(f"limits: batch 1 (one CHW image per call); input shapes that match the original: {shapes or 'none'}"
               + (f"; failing: {len(limits['input_shapes_failed'])}" if limits["input_shapes_failed"] else ""))
    return path, verified, why


def recheck(path: Path, run: Path | None, dataset: str | None, limit: int | None,
            max_map_drop: float) -> tuple[Path, bool, str]:
    """``--check FILE``: find the checkpoint the file came from (its hash must still match) and check again."""
    from tlsync.store import Store

    meta = read_sidecar(path)
    run = run or path.resolve().parent.parent
    checkpoint = run / "weights" / meta["checkpoint"]
    if not checkpoint.is_file():
        raise TlsyncError(f"{path}: its checkpoint {checkpoint} is not there; pass --run RUN (the run it came from)")
    if sha256(checkpoint) != meta["checkpoint_sha256"]:
        raise TlsyncError(f"{checkpoint} changed since {path.name} was exported (sha256 differs); re-export instead")
    model, categories, config = load_for_export(checkpoint, meta["input"]["img_size"])
    version = Store().open(dataset or meta.get("dataset") or _dataset(config, run))
    return check(path, cached(parity.torch_outputs(model)), version, categories, limit, max_map_drop,
                 parity.torch_candidates(model))
