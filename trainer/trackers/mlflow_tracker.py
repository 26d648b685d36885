"""``--log mlflow``: an MLflow run per tlsync run, in an experiment per dataset.

Where: ``MLFLOW_TRACKING_URI``, else MLflow's own default for the current folder (what
``mlflow ui`` started there reads: ``sqlite:///mlflow.db`` with recent MLflow 3,
``./mlruns`` with older versions; 3.17 refuses a file store unless
``MLFLOW_ALLOW_FILE_STORE=true``). The client API (``MlflowClient``) is used rather than ``mlflow.start_run`` so that
nothing depends on, or disturbs, a run the user's own code has active.

What: every resolved setting as a param (secrets already removed by the dispatcher);
per-epoch metrics at step = epoch; tags for the dataset, content hash, model, weights source
and, for a run continued from another (``--weights RUN``), that run; at the end the final
evaluation's metrics, ``best.pt``, ``report.html``, ``metrics.csv``, the eval's
``metrics.json`` and the report PNGs as artifacts (the val image grid, which shows the data
itself, only with ``--log-images``). The MLflow run id is kept in ``RUN/mlflow.json``, so
``--resume`` appends to the same MLflow run.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tlsync.atomic import atomic_write_json
from tlsync.events import EpochEnd, EvalEnd, RunEnd, RunStart, TrainingCallback
from tlsync.models import WEIGHTS

RUN_FILE = "mlflow.json"
MAX_PARAM_LENGTH = 6000  # MLflow refuses longer param values
BATCH = 100  # MLflow's limit of params per log_batch call
ARTIFACTS = ("report.html", "metrics.csv", "config.json", "training.png", "pr_curve.png", "per_class_ap.png",
             "confusion_matrix.png", "eval/metrics.json", "weights/best.pt")
FINAL_METRICS = ("map50_95", "map50", "precision", "recall", "f1")


def tracking_uri() -> str:
    import mlflow

    return os.environ.get("MLFLOW_TRACKING_URI") or mlflow.get_tracking_uri()


def without_credentials(uri: str) -> str:
    """The URI with any ``user:password@`` removed: it is stored in the run dir and compared on resume.

    Only the user part is cut out of the text: a split-and-rejoin round trip rewrites other
    URIs (``sqlite:////tmp/mlflow.db`` comes back as ``sqlite://tmp/mlflow.db``, which MLflow
    cannot open), and the stored URI must open the same store.
    """
    scheme, sep, rest = uri.partition("://")
    authority, slash, path = rest.partition("/")
    if not sep or "@" not in authority:
        return uri
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested settings as ``a.b`` params with string values (lists as JSON), cut to MLflow's limit."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            out[name] = text[:MAX_PARAM_LENGTH]
    return out


def parent_run(weights: str) -> Path | None:
    """The run folder a ``--weights PATH`` start came from (a run folder or its weights/*.pt)."""
    if not weights or weights in WEIGHTS:
        return None
    path = Path(weights)
    if path.suffix == ".pt":
        path = path.parent.parent if path.parent.name == "weights" else path.parent
    return path if (path / "config.json").exists() else None


class MlflowLogger(TrainingCallback):
    def __init__(self, experiment: str | None = None, images: bool = False):
        self.experiment, self.images = experiment, images
        self.client: Any = None
        self.run_id = ""
        self.final: dict[str, float] = {}

    def on_run_start(self, event: RunStart) -> None:
        from mlflow import MlflowClient

        uri = tracking_uri()
        self.client = MlflowClient(tracking_uri=uri)
        stored = _read(event.run_dir / RUN_FILE)
        if event.resumed and stored.get("tracking_uri") == without_credentials(uri):
            self.run_id = stored["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment_id = self._experiment(self.experiment or event.dataset_name)
        run = self.client.create_run(experiment_id, run_name=event.run_dir.name, tags=self._tags(event, uri))
        self.run_id = run.info.run_id
        atomic_write_json(event.run_dir / RUN_FILE, {"run_id": self.run_id, "experiment_id": experiment_id,
                                                     "tracking_uri": without_credentials(uri)})
        self._log_params(event.config)

    def start_hint(self, error: Exception) -> str:
        """What to set when the store would not open (shown in the one-line refusal)."""
        uri = without_credentials(tracking_uri())
        if "MLFLOW_ALLOW_FILE_STORE" in str(error) or uri.startswith("file:") or "://" not in uri:
            return (f"MLflow refuses the file store {uri}: set MLFLOW_TRACKING_URI=sqlite:///mlflow.db "
                    f"(a database store), or MLFLOW_ALLOW_FILE_STORE=true to keep using the file store")
        return f"check MLFLOW_TRACKING_URI (now {uri}) and that the server answers"

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name))
        except Exception:  # another run created it in between
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def _tags(self, event: RunStart, uri: str) -> dict[str, str]:
        config = event.config
        tags = {"tlsync.dataset": event.dataset, "tlsync.content_hash": event.content_hash,
                "tlsync.model": str(config.get("model")), "tlsync.weights_source": str(config.get("weights_source")),
                "tlsync.run_dir": str(event.run_dir.resolve())}
        parent = parent_run(str(config.get("weights", "")))
        if parent is not None:
            tags["tlsync.parent_run"] = str(parent.resolve())
            stored = _read(parent / RUN_FILE)
            if stored.get("tracking_uri") == without_credentials(uri):
                tags["tlsync.parent_mlflow_run_id"] = stored["run_id"]
                tags["mlflow.parentRunId"] = stored["run_id"]  # MLflow nests it under the run it continues
        return tags

    def _log_params(self, config: dict[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flatten(config).items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[start:start + BATCH])

    def on_epoch_end(self, event: EpochEnd) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, event.epoch)
                                                    for k, v in event.scalars().items()])

    def on_eval_end(self, event: EvalEnd) -> None:
        self.final = {f"final/{k}": float(event.metrics[k]) for k in FINAL_METRICS
                      if isinstance(event.metrics.get(k), (int, float))}

    def on_run_end(self, event: RunEnd) -> None:
        if self.client is None or not self.run_id:
            return
        failed = event.summary.get("status") != "finished"
        if not failed:
            from mlflow.entities import Metric

            step = int(event.summary.get("best_epoch") or event.summary.get("epoch") or 0)
            now = int(time.time() * 1000)
            if self.final:
                self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in self.final.items()])
            for name in (*ARTIFACTS, *(("val_images.png",) if self.images else ())):
                path = event.run_dir / name
                if path.is_file():
                    self.client.log_artifact(self.run_id, str(path), str(Path(name).parent) if "/" in name else None)
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("run_id"), str) else {}
