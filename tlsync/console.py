"""Terminal output: one stderr console, progress bars, and the secret and control-character filters.

rich is imported lazily, so that ``tlsync --help`` stays fast, and not at all for a
progress bar on a stderr that is not a terminal (a CI log, a benchmark's pipe): there is
nothing to draw, and importing rich would be a tenth of a quick pull's start-up.

Class names, ids, file names and server messages come from data tlsync does not control;
an escape sequence in one (``\x1b]0;...``, ``\x1b[2J``, a right-to-left override) would
retitle, clear or rewrite the user's terminal. ``printable`` shows such characters as
``\x1b``-style escapes, and ``printable_output`` applies it to everything the command
writes to stdout and stderr, whichever module prints.
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .secrets import redact

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional-text overrides.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every terminal control character shown as an escape instead of obeyed."""
    return _CONTROL.sub(_escape, text)


class _PrintableStream(io.TextIOBase):
    """A text stream that passes writes through ``printable``; everything else is the inner stream's.

    ``rich_proxied_file`` is how rich unwraps a proxy: its progress bars keep their own
    escape codes, and what tlsync passes to rich is cleaned by ``info``/``progress``.
    """

    def __init__(self, inner: Any):
        self.rich_proxied_file = inner

    def write(self, text: str) -> int:
        self.rich_proxied_file.write(printable(text))
        return len(text)

    def flush(self) -> None:
        self.rich_proxied_file.flush()

    def isatty(self) -> bool:
        return self.rich_proxied_file.isatty()

    def fileno(self) -> int:
        return self.rich_proxied_file.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.rich_proxied_file, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.rich_proxied_file, "errors", None)


@contextmanager
def printable_output() -> Iterator[None]:
    """Route ``sys.stdout`` and ``sys.stderr`` through ``printable`` for the duration."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _PrintableStream(sys.stdout), _PrintableStream(sys.stderr)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = saved


def console() -> Any:
    from rich.console import Console

    global _console
    if _console is None:
        _console = Console(stderr=True, highlight=False)
    return _console


_console: Any = None


def info(message: str) -> None:
    """A status line on stderr (stdout is kept for results people pipe).

    Never wrapped: a line in a log or a captured stderr stays one line, whatever the width.
    """
    console().print(printable(redact(message)), markup=False, soft_wrap=True)


def _surely_not_a_terminal() -> bool:
    """True where rich would certainly draw nothing: stderr is no tty and no variable forces one.

    A subset of rich's own ``Console.is_terminal`` rule (``FORCE_COLOR`` and
    ``TTY_COMPATIBLE`` can make a pipe count as a terminal); anything less clear-cut,
    or a console already made, is left to rich.
    """
    if _console is not None or "FORCE_COLOR" in os.environ or os.environ.get("TTY_COMPATIBLE") == "1":
        return False
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def _no_bar(completed: float, total: float | None = None, **fields: Any) -> None:
    """``update`` when no bar is drawn."""


@contextmanager
def progress(description: str, total: float | None = None, unit: str = "items") -> Iterator[Callable[..., None]]:
    """A progress bar with a rate; yields ``update(completed, total=None, **fields)``.

    Quiet (no bar) when stderr is not a terminal, e.g. in CI logs.
    """
    if _surely_not_a_terminal():
        yield _no_bar
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console(), transient=False, disable=not console().is_terminal) as bar:
        task = bar.add_task(printable(redact(description)), total=total, rate="")

        def update(completed: float, total: float | None = None, **fields: Any) -> None:
            elapsed = bar.tasks[task].elapsed or 0.0
            rate = f"{completed / elapsed:,.1f} {unit}/s" if elapsed > 0 else ""
            extra: dict[str, Any] = {"total": total} if total is not None else {}
            bar.update(task, completed=completed, rate=rate, **extra, **fields)

        yield update
