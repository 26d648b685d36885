"""Run directories: where a training run keeps its config, metrics, weights and report.

Layout of ``<project>/<name>/`` (``project`` defaults to ``runs`` in the current folder)::

    config.json        every setting, the dataset name@version and content hash, versions
    metrics.csv        one row per finished epoch: epoch, seconds (the epoch's wall time),
                       train_seconds (of which training, the rest is val eval), lr, losses, val metrics
    weights/last.pt    the latest finished epoch (what --resume continues from; a run stopped
                       before it exists is trained again from epoch 1 by --resume)
    weights/best.pt    the epoch with the best val mAP50-95
    eval/              COCO ground truth and predictions of best.pt on val, metrics.json
    report.html        plots of the above

A run directory is never overwritten unless asked (``--exist-ok``): unnamed runs are
numbered ``<dataset>-1``, ``<dataset>-2``... and a named run that exists is refused.
Every file is written to a temp name and renamed, so a killed run leaves whole files.
"""

from __future__ import annotations

import csv
import io
import json
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tlsync.atomic import atomic_write_json, atomic_write_text
from tlsync.console import info
from tlsync.errors import TlsyncError

CONFIG = "config.json"
METRICS = "metrics.csv"
LAST = Path("weights") / "last.pt"


def create_run_dir(project: Path, name: str | None, dataset: str, exist_ok: bool = False) -> Path:
    """Make and return a new run directory; ``mkdir`` claims the name, so concurrent runs never share one."""
    folder = project / name if name else None
    if folder is not None and not exist_ok and (folder / CONFIG).is_file() and not (folder / LAST).is_file():
        raise TlsyncError(f"run directory {folder} already exists and stopped before its first checkpoint; "
                          f"tlsync train --resume {folder} trains it again there, or choose another --name")
    return claim_folder(project, name, dataset, exist_ok,
                        taken="run directory {} already exists; choose another --name or pass --exist-ok "
                              "to write into it")


def claim_folder(project: Path, name: str | None, stem: str, exist_ok: bool = False,
                 taken: str = "{} already exists; choose another --name") -> Path:
    """``project/name``, else the first free ``project/stem-N``: output folders are never overwritten.

    ``taken`` is the error for a ``--name`` already in use (``{}`` is the folder).
    """
    project.mkdir(parents=True, exist_ok=True)
    if name:
        if "/" in name or name in (".", ".."):
            raise TlsyncError(f"--name {name!r}: give a plain folder name (use --project for the parent folder)")
        folder = project / name
        try:
            folder.mkdir(exist_ok=exist_ok)
        except FileExistsError:
            raise TlsyncError(taken.format(folder)) from None
        return folder
    n = 1
    while True:
        folder = project / f"{stem}-{n}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            n += 1


@contextmanager
def says_where_it_stopped(run: Path) -> Iterator[None]:
    """On Ctrl-C, say what the run keeps and how to carry on, before the CLI's "Interrupted."

    Stopped before its first checkpoint a run folder holds only ``config.json``; without a
    word it looks like a name used up, when ``--resume`` can train it again right there.
    """
    try:
        yield
    except KeyboardInterrupt:
        if (run / LAST).is_file():
            info(f"stopped: {run / LAST} keeps the last finished epoch; tlsync train --resume {run} continues")
        else:
            info(f"stopped before the first checkpoint: {run} holds no weights yet; "
                 f"tlsync train --resume {run} trains it again there from epoch 1")
        raise


def existing_run_dir(path: Path) -> Path:
    """``--run PATH`` of the commands that read a run (eval, select, export-model): a folder that is there."""
    if not path.exists():
        raise TlsyncError(f"run '{path}' not found")
    if not path.is_dir():
        raise TlsyncError(f"--run {path}: give the run directory (e.g. runs/chess-1), not a file")
    return path


def environment() -> dict[str, str]:
    """Versions (and the CPU thread count, which changes float sums) that decide whether a run reproduces."""
    import torch
    import torchvision

    from tlsync import __version__

    return {"tlsync": __version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__),
            "python": platform.python_version(), "platform": platform.platform(),
            "torch_threads": str(torch.get_num_threads())}


def write_config(run: Path, config: dict[str, Any]) -> None:
    atomic_write_json(run / CONFIG, config)


def read_config(run: Path) -> dict[str, Any]:
    if not (run / CONFIG).is_file():
        raise TlsyncError(f"{run} is not a tlsync run directory (no {CONFIG})")
    config: dict[str, Any] = read_json(run / CONFIG)
    return config


def read_json(path: Path) -> Any:
    """A JSON file of a run (config, metrics, predictions), or one line naming it if it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TlsyncError(f"{path}: not valid JSON ({e.msg})") from None


def read_metrics_csv(path: Path) -> list[dict[str, float]]:
    """Rows of ``metrics.csv`` as floats (blank cells dropped); ``[]`` when there is none yet."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = []
        for n, row in enumerate(csv.DictReader(f), 2):
            try:
                rows.append({k: float(v) for k, v in row.items() if k and v not in (None, "")})
            except ValueError:
                raise TlsyncError(f"{path}: line {n} has a value that is not a number") from None
    return rows


class MetricsLog:
    """``metrics.csv``, rewritten whole (temp file + rename) for each new row.

    Rewriting a file of a few hundred rows costs nothing and means a crash can never leave
    a half-written line. Columns are fixed by the first row written.
    """

    def __init__(self, run: Path):
        self.path = run / METRICS

    def rows(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def append(self, row: dict[str, Any]) -> None:
        rows = self.rows()
        columns = list(rows[0]) if rows else list(row)
        self._write(columns, [*rows, {k: _cell(row.get(k, "")) for k in columns}])

    def truncate(self, last_epoch: int) -> None:
        """Drop rows after ``last_epoch`` (written by an epoch whose checkpoint was lost in a crash)."""
        rows = self.rows()
        kept = [r for r in rows if int(r["epoch"]) <= last_epoch]
        if len(kept) != len(rows):
            self._write(list(rows[0]), kept)

    def _write(self, columns: list[str], rows: list[dict[str, Any]]) -> None:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, out.getvalue())


def _cell(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
