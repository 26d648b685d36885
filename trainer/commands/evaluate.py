"""``tlsync eval``, ``tlsync predict`` and ``tlsync compare``.

Loaded lazily by ``tlsync.cli`` (they import torch). Results go to stdout; progress bars
and notes go to stderr, so ``tlsync compare ... > table.txt`` captures just the table.
"""

from __future__ import annotations

from pathlib import Path

import click

from tlsync.console import echo, info, progress
from tlsync.errors import TlsyncError
from tlsync.format import SPLITS

from ..evaluation.summary import print_metrics
from ..training.device import resolve_device

DEVICE = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")


@click.command(name="eval")
@click.option("--run", "run", default=None, type=click.Path(path_type=Path), help="The run directory.")
@click.option("--model", "model_file", default=None, type=click.Path(path_type=Path),
              help="Evaluate an exported model file (tlsync export-model) instead of a run's checkpoint.")
@click.option("--dataset", default=None, help="Dataset (name or name@version) to evaluate on; default: the run's.")
@click.option("--split", type=click.Choice(SPLITS), default=None,
              help="Split to evaluate; default: test if the dataset has test items, else val.")
@click.option("--conf", type=click.FloatRange(0, 1), default=None,
              help="Also report precision, recall and F1 at this confidence.")
@click.option("--batch-size", type=click.IntRange(1, 256), default=4, show_default=True)
@click.option("--recompute-bn", is_flag=True,
              help="Recompute the batch-norm statistics over the run's train split first (for runs trained before "
                   "precise BN); writes weights/best-bn.pt beside best.pt and evaluates that.")
@DEVICE
def eval_command(run: Path | None, model_file: Path | None, dataset: str | None, split: str | None,
                 conf: float | None, batch_size: int, recompute_bn: bool, device: str) -> None:
    """Evaluate a run's best weights: mAP50-95, mAP50, per-class AP, P/R/F1; refresh its report."""
    from tlsync.duplicates import leak_warning
    from tlsync.store import Store

    if (run is None) == (model_file is None):
        raise TlsyncError("give --run RUN or --model FILE (an exported model)")
    if model_file is not None:
        from ..deploy.evaluate import eval_exported

        return eval_exported(model_file, dataset, split, conf, batch_size)
    assert run is not None

    from ..evaluation.evaluate import default_split, evaluate_split
    from ..evaluation.report import write_report
    from ..training.checkpoint import load_model, resolve_checkpoint
    from ..training.runs import existing_run_dir, read_config

    run = existing_run_dir(run)
    config = read_config(run)
    trained_on = config.get("dataset")  # "name@version"
    if not dataset and not trained_on:
        raise TlsyncError(f"{run}/config.json names no dataset; pass --dataset NAME@VERSION")
    version = Store().open(str(dataset or trained_on))
    usual = default_split(version)
    split = split or usual
    # The run's own data and default split is "the" evaluation, shown by the report; others sit beside it.
    is_default = version.ref == trained_on and split == usual
    out = run / "eval" if is_default else run / "eval" / f"{version.ref}-{split}"
    if warning := leak_warning(version, split):  # copies of train images make the score optimistic
        info(warning)

    dev = resolve_device(device)
    checkpoint = resolve_checkpoint(run)
    if recompute_bn:  # issue 12: an old run's stale batch-norm statistics, fixed in a new file beside it
        from ..training.precise_bn import fix_checkpoint

        checkpoint, layers, images = fix_checkpoint(checkpoint, Store(), dev)
        echo(f"recomputed the statistics of {layers} batch-norm layer(s) over {images} train image(s) "
             f"of {trained_on}: wrote {checkpoint}")
        out = out.with_name(out.name + "-recomputed-bn")
    model, categories, _ = load_model(checkpoint, device=dev)
    with progress(f"eval {checkpoint.name} on {version.ref} {split}", unit="images") as update:
        metrics = evaluate_split(model, version, split, categories, dev, out, conf=conf, progress=update,
                                 batch_size=batch_size, model_name=f"{checkpoint.parent.name}/{checkpoint.name}")
    print_metrics(metrics, f"{run} ({checkpoint.name})")
    echo(f"eval files: {out}")
    echo(f"report: {write_report(run)}")


@click.command()
@click.option("--run", "run", default=None, type=click.Path(path_type=Path),
              help="A run directory (uses weights/best.pt) or a checkpoint file.")
@click.option("--model", "model_file", default=None, type=click.Path(path_type=Path),
              help="An exported model file (tlsync export-model), run by onnxruntime or torch.jit.")
@click.argument("sources", nargs=-1, required=True)
@click.option("--conf", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="Keep boxes at least this confident.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("preds"), show_default=True,
              help="Folder for predictions.json, images.json and the drawn images.")
@DEVICE
def predict(run: Path | None, model_file: Path | None, sources: tuple[str, ...], conf: float, out: Path,
            device: str) -> None:
    """Run a trained model on images, folders or globs (SOURCES); write COCO JSON and drawn images."""
    from ..evaluation.predict import predict_run

    if (run is None) == (model_file is None):
        raise TlsyncError("give --run RUN or --model FILE (an exported model)")
    if model_file is not None:
        from ..deploy.runner import file_format

        file_format(model_file)  # a checkpoint given as --model is a mistake worth naming
    path = run or model_file
    assert path is not None
    if not path.exists():
        raise TlsyncError(f"{'run' if run else 'model file'} '{path}' not found")
    dev = "cpu" if model_file else resolve_device(device)  # exported files run on onnxruntime/torch.jit CPU
    with progress("predict", unit="images") as update:
        result = predict_run(path, list(sources), out, conf, dev, progress=update)
    for path, reason in result["skipped"].items():
        info(f"skipped {path}: {reason}")
    counts = ", ".join(f"{name} {n}" for name, n in result["per_class"].items()) or "none"
    echo(f"{result['images']} images, {result['boxes']} boxes at conf >= {conf:.2f} ({counts})")
    echo(f"predictions: {out / 'predictions.json'} (COCO results; images in {out / 'images.json'})")
    echo(f"drawn images: {out}")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("."), show_default=True,
              help="Folder for compare.png.")
def compare(runs: tuple[Path, ...], out: Path) -> None:
    """Compare runs (RUNS): how each started, how long it took, how accurate it ended."""
    from ..evaluation.compare import compare_runs, plot, table

    summaries = compare_runs(list(runs))
    echo(table(summaries))
    plot(summaries, out / "compare.png")
    echo(f"curves: {out / 'compare.png'}")
