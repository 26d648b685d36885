"""``tlsync eval --model FILE``: score an exported model exactly as ``eval --run`` scores a checkpoint.

Same predict loop, same metrics, same files (ground_truth.json, predictions.json,
metrics.json). When the file sits in its run's ``export/`` folder the results go beside the
run's other evaluations (``RUN/eval/<file>-<dataset>-<split>/``) and the run's report lists
them; a file copied elsewhere gets ``<its folder>/eval/<file>-<dataset>-<split>/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from tlsync.console import echo, progress


def eval_exported(model_file: Path, dataset: str | None, split: str | None, conf: float | None,
                  batch_size: int) -> None:
    from tlsync.errors import TlsyncError
    from tlsync.store import Store

    from ..evaluation.evaluate import default_split, evaluate_split
    from ..evaluation.report import write_report
    from ..evaluation.summary import print_metrics
    from .runner import file_format, load_exported

    file_format(model_file)
    model = load_exported(model_file)  # quacks like a detector module: eval(), train(), called on a list
    ref = dataset or model.meta.get("dataset")
    if not ref:
        raise TlsyncError(f"{model_file.parent / 'model.json'} names no dataset; pass --dataset NAME@VERSION")
    version = Store().open(ref)
    split = split or default_split(version)
    run = model_file.resolve().parent.parent
    in_run = (run / "config.json").is_file() and (run / "weights").is_dir()
    out = (run / "eval" if in_run else model_file.parent / "eval") / f"{model_file.name}-{version.ref}-{split}"
    scored = f"{model_file.parent.name}/{model_file.name}" if in_run else model_file.name  # as the report names it
    with progress(f"eval {model_file.name} on {version.ref} {split}", unit="images") as update:
        metrics = evaluate_split(cast(Any, model), version, split, model.categories, "cpu", out, conf=conf,
                                 progress=update, batch_size=batch_size, model_name=scored)
    print_metrics(metrics, f"{model_file} ({model.format}, {model.meta['files'][model_file.name]['precision']})")
    echo(f"eval files: {out}")
    if in_run:
        echo(f"report: {write_report(run)}")
