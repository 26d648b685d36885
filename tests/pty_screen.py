"""Run ``tlsync`` under a real pseudo-terminal and read the screen it leaves, as a person would.

A pipe (subprocess's ``capture_output``, click's ``CliRunner``) is not a terminal: rich draws
no bar there, so no test of that kind can see what a bar does to a screen. Here the command's
stdin, stdout and stderr are the slave end of a pty, and what it writes is fed to pyte, a
VT100 emulator, so a test asserts on the characters a person sees (and on the window title an
escape sequence might have changed) rather than on bytes.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import pyte

COLUMNS, LINES = 120, 60


@dataclass
class Screen:
    exit_code: int
    lines: list[str]  # the screen, trailing blanks removed
    title: str  # the window title, as an OSC sequence would have set it
    raw: bytes  # every byte the command wrote

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def run_on_terminal(*args: str | Path, home: Path, cwd: Path | None = None, timeout: float = 240,
                    env: dict[str, str] | None = None) -> Screen:
    """``tlsync ARGS`` in a fresh interpreter on a COLUMNS x LINES terminal; its screen when it exits."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", LINES, COLUMNS, 0, 0))
    clean = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE",
                                                              "COLUMNS", "LINES", "CI")}
    environment = {**clean, "TERM": "xterm-256color", "TLSYNC_HOME": str(home), "TLSYNC_LOAD_PLUGINS": "",
                   **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "tlsync", *map(str, args)], stdin=slave, stdout=slave,
                            stderr=slave, cwd=cwd, env=environment, start_new_session=True)
    os.close(slave)
    raw = _read_until_closed(master, proc, timeout)
    screen = pyte.Screen(COLUMNS, LINES)
    pyte.ByteStream(screen).feed(raw)
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return Screen(proc.wait(), lines, screen.title, raw)


def _read_until_closed(master: int, proc: subprocess.Popen[bytes], timeout: float) -> bytes:
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command and every child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        else:
            proc.kill()
            raise TimeoutError(f"tlsync still running after {timeout}s; it wrote: {b''.join(chunks)[-2000:]!r}")
    finally:
        os.close(master)
    return b"".join(chunks)
