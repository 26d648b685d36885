"""The matplotlib helpers every tlsync figure is drawn with (report, compare, curve).

Figures are matplotlib ``Figure`` objects on the Agg canvas, never pyplot: no global state,
so a figure can be drawn from any thread or process without a display. Each PNG is written
atomically, like every other file tlsync writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlsync.atomic import atomic_write_file


def figure(width: float = 6.4, height: float = 4.0) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def save_figure(fig: Any, path: Path) -> None:
    fig.tight_layout()
    atomic_write_file(path, lambda tmp: fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".")))


def whole_epochs(*axes: Any) -> None:
    """Epoch axes tick at whole numbers only (a 3-epoch run otherwise shows epoch 1.5)."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plain(text: str) -> str:
    """A label from the data as matplotlib must get it to draw it as is.

    A class named ``$\\undefinedmacro$`` is otherwise parsed as mathtext and fails the whole
    report; ``\\$`` is a literal dollar. A leading ``_`` would hide the legend entry.
    """
    text = str(text).replace("$", r"\$")
    return " " + text if text.startswith("_") else text
