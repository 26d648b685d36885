"""Terminal output: one stderr console, progress, and the secret and control-character filters.

rich is imported lazily, so that ``tlsync --help`` stays fast, and not at all for progress
on a stderr that is not a terminal (a CI log, a benchmark's pipe): there is no bar to draw,
and importing rich would be a tenth of a quick pull's start-up.

Class names, ids, file names and server messages come from data tlsync does not control;
an escape sequence in one (``\x1b]0;...``, ``\x1b[2J``, a right-to-left override) would
retitle, clear or rewrite the user's terminal. ``printable`` shows such characters as
``\x1b``-style escapes. It is applied where a message is formatted (``echo``, ``info``, a
progress description, the CLI's error line), and, as a backstop for text printed any other
way (a plugin's ``print``), ``printable_output`` applies it to plain writes to stdout and
stderr. It is never applied to what rich renders: the console writes beneath that backstop,
so a progress bar's own control codes reach the terminal as codes, and draw a bar.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, cast

from .errors import TlsyncError
from .secrets import redact

# C0 controls but tab and newline, DEL, C1 controls, and the bidirectional-text overrides.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
PROGRESS_EVERY_ENV = "TLSYNC_PROGRESS_EVERY"
DEFAULT_PROGRESS_EVERY = 30.0  # seconds between plain progress lines: a line a minute is too quiet for CI


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every terminal control character shown as an escape instead of obeyed."""
    return _CONTROL.sub(_escape, text)


def echo(message: str, *, err: bool = False) -> None:
    """A line for stdout (results people pipe) or, with ``err``, stderr: secrets redacted,
    control characters from data escaped. Every CLI line that may quote data goes through here."""
    import click

    click.echo(printable(redact(message)), err=err)


class EscapedStream(io.TextIOBase):
    """A text stream that passes writes through ``printable``, for text printed without ``echo``.

    ``rich_proxied_file`` is how rich finds the stream under a proxy; ``console`` follows it
    through every layer, so the bar's own codes reach the terminal unfiltered.
    """

    def __init__(self, inner: Any):
        self.rich_proxied_file = inner

    def write(self, text: str) -> int:
        self.rich_proxied_file.write(printable(text))
        return len(text)

    def flush(self) -> None:
        self.rich_proxied_file.flush()

    def isatty(self) -> bool:
        return bool(self.rich_proxied_file.isatty())

    def fileno(self) -> int:
        return int(self.rich_proxied_file.fileno())

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.rich_proxied_file, "encoding", "utf-8")

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.rich_proxied_file, "errors", None)


def escaped(stream: Any) -> IO[str]:
    """``stream`` behind ``printable``, typed as the file object ``click`` and ``print`` take."""
    return cast(IO[str], EscapedStream(stream))


@contextmanager
def printable_output() -> Iterator[None]:
    """Route ``sys.stdout`` and ``sys.stderr`` through ``printable`` for the duration."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = EscapedStream(sys.stdout), EscapedStream(sys.stderr)
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = saved


def _innermost(stream: Any) -> Any:
    """The real stream under rich's ``FileProxy`` (a live bar's) and ``EscapedStream``."""
    while (inner := getattr(stream, "rich_proxied_file", None)) is not None:
        stream = inner
    return stream


def console() -> Any:
    """The one rich console: stderr, never highlighting (data must not look like markup)."""
    global _console
    if _console is None:
        from rich.console import Console

        class StderrConsole(Console):
            """rich's console, writing to the real stderr whatever wraps ``sys.stderr`` now."""

            @property
            def file(self) -> Any:
                return _innermost(sys.stderr)

            @file.setter
            def file(self, new_file: Any) -> None:
                self._file = new_file

        _console = StderrConsole(stderr=True, highlight=False)
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
    ``TTY_COMPATIBLE`` can make a pipe count as a terminal); anything less clear-cut
    is left to rich.
    """
    if "FORCE_COLOR" in os.environ or os.environ.get("TTY_COMPATIBLE") == "1":
        return False
    try:
        return not sys.stderr.isatty()
    except (AttributeError, ValueError):  # no stderr, or a closed one
        return False


def _draws_a_bar() -> bool:
    """Whether progress is a bar (a terminal) or plain lines (a log, a pipe, a notebook cell)."""
    if _console is not None:
        return bool(_console.is_terminal)
    return not _surely_not_a_terminal() and bool(console().is_terminal)


def progress_every() -> float:
    """Seconds between plain progress lines: ``$TLSYNC_PROGRESS_EVERY``, else 30."""
    env = os.environ.get(PROGRESS_EVERY_ENV)
    if not env:
        return DEFAULT_PROGRESS_EVERY
    try:
        seconds = float(env)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < float("inf"):
        raise TlsyncError(f"{PROGRESS_EVERY_ENV}={env!r}: give the seconds between progress lines, such as 30")
    return seconds


def clock(seconds: float) -> str:
    """``0:05:07``: the form rich's bar shows elapsed and remaining time in."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class PlainProgress:
    """Progress as plain lines on stderr, at most one per ``every`` seconds.

    Where nobody watches a terminal (CI, nohup, a log file) a bar is nothing, and a line per
    step would drown the log; a line every half minute with the count, the rate and the time
    left says the work is alive and when it will end, as a training log's readers expect.
    """

    def __init__(self, description: str, total: float | None, unit: str, every: float):
        self.description, self.total, self.unit, self.every = description, total, unit, every
        self.steps: tuple[int, int] | None = None
        self.started = self.last = time.monotonic()

    def __call__(self, completed: float, total: float | None = None, description: str | None = None,
                 steps: tuple[int, int] | None = None, **_fields: Any) -> None:
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        self.steps = steps
        now = time.monotonic()
        if now - self.last < self.every or (_console is not None and _console.quiet):
            return
        self.last = now
        sys.stderr.write(self.line(completed, now - self.started) + "\n")
        sys.stderr.flush()

    def line(self, completed: float, elapsed: float) -> str:
        rate = completed / elapsed if elapsed > 0 else 0.0
        done = f"{completed:,.0f}/{self.total:,.0f}" if self.total else f"{completed:,.0f}"
        step = f"step {self.steps[0]}/{self.steps[1]}, " if self.steps else ""
        text = f"{self.description}: {step}{done} {self.unit}, {rate:,.1f} {self.unit}/s, elapsed {clock(elapsed)}"
        if self.total and rate > 0:
            text += f", ETA {clock(max(0.0, self.total - completed) / rate)}"
        return printable(redact(text))


@contextmanager
def progress(description: str, total: float | None = None, unit: str = "items") -> Iterator[Callable[..., None]]:
    """Progress of one phase; yields ``update(completed, total=None, description=None, steps=None)``.

    ``steps`` is ``(k, n)`` where the work goes in steps (a training epoch): the plain lines
    show it; the bar already shows the count it is drawn from.

    A rich bar with a rate on a terminal; without one, ``PlainProgress`` lines (never rich,
    which a pull without a terminal does not even import).
    """
    if not _draws_a_bar():
        yield PlainProgress(description, total, unit, progress_every())
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
    # While the bar is live rich routes plain writes through its own proxy, which would pass some
    # characters it does not decode (a right-to-left override); they are escaped before it.
    with Progress(*columns, console=console(), transient=False) as bar, printable_output():
        task = bar.add_task(printable(redact(description)), total=total, rate="")

        def update(completed: float, total: float | None = None, description: str | None = None,
                   steps: tuple[int, int] | None = None, **fields: Any) -> None:
            elapsed = bar.tasks[task].elapsed or 0.0
            rate = f"{completed / elapsed:,.1f} {unit}/s" if elapsed > 0 else ""
            extra: dict[str, Any] = {"total": total} if total is not None else {}
            if description is not None:
                extra["description"] = printable(redact(description))
            bar.update(task, completed=completed, rate=rate, **extra, **fields)

        yield update
