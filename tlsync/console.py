"""Terminal output: one stderr console, progress bars, and the secret filter on everything.

rich is imported lazily so that ``tlsync --help`` stays fast.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from .secrets import redact


def console() -> Any:
    from rich.console import Console

    global _console
    if _console is None:
        _console = Console(stderr=True, highlight=False)
    return _console


_console = None


def info(message: str) -> None:
    """A status line on stderr (stdout is kept for results people pipe).

    Never wrapped: a line in a log or a captured stderr stays one line, whatever the width.
    """
    console().print(redact(message), markup=False, soft_wrap=True)


@contextmanager
def progress(description: str, total: float | None = None, unit: str = "items") -> Iterator[Callable[..., None]]:
    """A progress bar with a rate; yields ``update(completed, total=None, **fields)``.

    Quiet (no bar) when stderr is not a terminal, e.g. in CI logs.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console(), transient=False, disable=not console().is_terminal) as bar:
        task = bar.add_task(redact(description), total=total, rate="")

        def update(completed: float, total: float | None = None, **fields: Any) -> None:
            elapsed = bar.tasks[task].elapsed or 0.0
            rate = f"{completed / elapsed:,.1f} {unit}/s" if elapsed > 0 else ""
            bar.update(task, completed=completed, rate=rate, **({"total": total} if total is not None else {}), **fields)

        yield update
