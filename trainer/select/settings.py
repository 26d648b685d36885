"""What ``tlsync select`` is asked to do (``SelectConfig``), as ``TrainConfig`` is for ``train``.

The command reads its option defaults from here and hands the work (``select.run.run_selection``)
one object; the benchmark builds the same object.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tlsync.errors import TlsyncError

# The best mean test mAP50-95 in benchmarks/select_vs_random.py (BENCHMARKS.md): random, 0.109 vs
# uncertainty 0.108; no strategy beat random by more than random's spread there.
DEFAULT_STRATEGY = "random"


@dataclass
class SelectConfig:
    """Rank ``pool`` (or the images of ``pool_path``) by what labelling them should do for ``run``'s model."""

    run: Path
    budget: int  # how many images to select
    pool: str | None = None  # a dataset NAME[@VERSION] to choose from
    pool_path: Path | None = None  # or a folder of images, pulled into the dataset pool-<folder> first
    exclude: tuple[str, ...] = ()  # datasets whose images are left out too (the run's own always are)
    strategy: str = DEFAULT_STRATEGY  # uncertainty | diversity | hybrid | random (select/strategies.py)
    seed: int = 0  # for random and ties: same seed, same selection
    conf: float = 0.25  # predicted boxes kept in the selection, the contact sheet and what targets receive
    name: str | None = None  # selection folder name; default <pool>-N
    project: Path = Path("selections")
    batch_size: int = 4  # images per forward pass
    workers: int | None = None  # image-decoding processes; default min(4, CPUs - 1)
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        if (self.pool is None) == (self.pool_path is None):
            raise TlsyncError("give the pool: --pool DATASET[@VERSION] or --pool-path FOLDER (one of them)")
        if self.budget <= 0:
            raise TlsyncError(f"--budget {self.budget}: nothing to select; give how many images to label next (>= 1)")
