"""``tlsync export-model``'s work: export a run's checkpoint, check the file against it, optionally int8.

Every export is followed by the parity check; a file that fails it is kept (the user may
still want to inspect it) but ``model.json`` records ``verified: false`` with the reason, and
the command exits non-zero, so a deployment script never ships an unchecked model by
accident. ``--check FILE`` re-runs the check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tlsync.console import echo, info, progress
from tlsync.errors import TlsyncError
from tlsync.store import Store

from ..evaluation.evaluate import split_items
from ..evaluation.predict import image_tensor, load_image
from ..training.checkpoint import load_checkpoint, rebuild_model, resolve_checkpoint
from ..training.runs import existing_run_dir
from .export import claim, describe, export_file, file_entry, file_name, update_entry, write_sidecar
from .parity import (
    Candidates,
    Outputs,
    check_split,
    compare,
    probe_shapes,
    summary_line,
    torch_candidates,
    torch_outputs,
    verdict,
)
from .runner import SIDECAR, load_exported, read_sidecar, read_sidecar_file, sha256
from .settings import ExportConfig

Checked = tuple[Path, bool, str]  # an exported file, whether it passed the check, and why not


def export_checked(cfg: ExportConfig) -> list[Checked]:
    """``--run``: export, check, and (with ``--quantize``) quantize and check again; one result per file."""
    if cfg.check_file is not None:
        return [recheck(cfg.check_file, cfg.run, cfg.dataset, cfg.check_images, cfg.max_map_drop)]
    assert cfg.run is not None  # ExportConfig refuses neither/both
    run = existing_run_dir(cfg.run)
    checkpoint = resolve_checkpoint(run, cfg.weights)
    model, categories, config = load_for_export(checkpoint, cfg.img_size)
    version = Store().open(cfg.dataset or _dataset(config, run))
    folder = cfg.out or run / "export"
    fmt, opset, check_images, max_map_drop, calibration = (cfg.fmt, cfg.opset, cfg.check_images, cfg.max_map_drop,
                                                          cfg.calibration_images)
    target = folder / file_name(fmt)
    int8 = folder / file_name(fmt, quantized=True) if cfg.quantize else None
    for path in (target, int8):
        if path is not None:
            claim(path, cfg.exist_ok)
    meta = describe(model, categories, config, checkpoint)
    _same_source(folder, meta, cfg.exist_ok)
    example = _first_image(version)
    with progress(f"export {meta['model']} to {fmt}", unit="steps") as update:
        update(0, total=1)
        export_file(model, fmt, example, target, opset)
        update(1, total=1)
    write_sidecar(folder, meta, target.name, file_entry(target, fmt, opset if fmt == "onnx" else None, "fp32"))
    echo(f"exported: {target} ({target.stat().st_size / 1e6:.1f} MB)")
    original = cached(torch_outputs(model))
    candidates = torch_candidates(model)
    results = [check(target, original, version, categories, check_images, max_map_drop, candidates)]
    if int8 is not None:
        from .quantize import calibration_set
        from .quantize import quantize as run_quantize

        split, items = calibration_set(version, calibration)
        info(f"quantizing to int8 with {len(items)} {split} calibration images"
             + (f" (all there are; --calibration-images asked for {calibration})" if len(items) < calibration else ""))
        how = run_quantize(target, int8, version, calibration)
        write_sidecar(folder, meta, int8.name, {**file_entry(int8, "onnx", opset, "int8"), "quantization": how})
        echo(f"exported: {int8} ({int8.stat().st_size / 1e6:.1f} MB, {how['method']} int8; "
             f"{target.stat().st_size / int8.stat().st_size:.1f}x smaller)")
        results.append(check(int8, original, version, categories, check_images, max_map_drop, candidates))
    return results


def load_for_export(checkpoint: Path, img_size: int | None) -> tuple[torch.nn.Module, list[str], dict[str, Any]]:
    """The checkpoint's model in eval mode, rebuilt at ``img_size`` when given (the resize is in the graph)."""
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
    sidecar = folder / SIDECAR
    if sidecar.is_file() and not exist_ok:
        try:
            old = read_sidecar_file(sidecar)
        except TlsyncError:
            return
        others = any((folder / f).is_file() for f in old["files"])
        if old.get("checkpoint_sha256") != meta["checkpoint_sha256"] and others:
            raise TlsyncError(f"{folder} holds exports of another checkpoint; use --out another folder or --exist-ok")


def _first_image(version: Any) -> torch.Tensor:
    """A real val image to trace with: a random one may produce no boxes and trace a degenerate graph."""
    return image_tensor(load_image(version.image_path(split_items(version, "val")[0])))


def cached(run: Callable[[torch.Tensor], Outputs]) -> Callable[[torch.Tensor], Outputs]:
    """The original's outputs per image content, so an fp32 and an int8 check share one torch pass."""
    seen: dict[bytes, Outputs] = {}

    def call(image: torch.Tensor) -> Outputs:
        key = hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest() + bytes(str(image.shape), "ascii")
        if key not in seen:
            seen[key] = run(image)
        return seen[key]

    return call


def check(path: Path, original: Callable[[torch.Tensor], Outputs], version: Any, categories: list[str],
          limit: int | None, max_map_drop: float,
          candidates: Candidates) -> Checked:
    """Run the parity check of ``path`` and record the outcome in its model.json entry.

    ``candidates`` (the original with NMS and caps lifted) prove tie swaps in an fp32 file; an
    int8 file is held to its mAP cost, so no tie is looked for there.
    """
    exported = load_exported(path)
    quantized = exported.meta["files"][path.name].get("precision") == "int8"
    ties = None if quantized else candidates
    with progress(f"parity check {path.name}", unit="images") as update:
        result = compare(original, exported.run_one, version, check_split(version), categories,
                         limit, progress=update, candidates=ties)
    limits = probe_shapes(original, exported.run_one, result.pop("probe_image"), quantized, ties)
    verified, why = verdict(result, quantized, max_map_drop)
    if quantized:
        result["max_map_drop"] = max_map_drop
    update_entry(path, verified=verified, why=why, parity=result, limits=limits)
    echo(summary_line(path, result, verified, why))
    shapes = ", ".join("x".join(map(str, s["shape"])) for s in limits["input_shapes_ok"])
    echo(f"limits: batch 1 (one CHW image per call); input shapes that match the original: {shapes or 'none'}"
         + (f"; failing: {len(limits['input_shapes_failed'])}" if limits["input_shapes_failed"] else ""))
    return path, verified, why


def recheck(path: Path, run: Path | None, dataset: str | None, limit: int | None,
            max_map_drop: float) -> Checked:
    """``--check FILE``: find the checkpoint the file came from (its hash must still match) and check again."""
    meta = read_sidecar(path)
    run = run or path.resolve().parent.parent
    checkpoint = run / "weights" / meta["checkpoint"]
    if not checkpoint.is_file():
        raise TlsyncError(f"{path}: its checkpoint {checkpoint} is not there; pass --run RUN (the run it came from)")
    if sha256(checkpoint) != meta["checkpoint_sha256"]:
        raise TlsyncError(f"{checkpoint} changed since {path.name} was exported (sha256 differs); re-export instead")
    model, categories, config = load_for_export(checkpoint, meta["input"]["img_size"])
    version = Store().open(dataset or meta.get("dataset") or _dataset(config, run))
    return check(path, cached(torch_outputs(model)), version, categories, limit, max_map_drop,
                 torch_candidates(model))
