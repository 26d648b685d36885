"""Shared by the benchmark scripts: machine facts and BENCHMARKS.md section updates.

Each script owns one section between ``<!-- bench:NAME -->`` markers, so scripts can be
re-run in any order without clobbering each other's figures.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import threading
from datetime import date
from pathlib import Path
from typing import Any

# The shared datasets as the roboflow source reads them (bccd's VOC folder one level down).
ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
SOURCES = {
    "thermal": {"path": SHARED / "thermal-dogs-people-yolo"},
    "bccd": {"path": SHARED / "bccd-voc" / "BCCD", "format": "voc"},
    "chess": {"path": SHARED / "chess-pieces-coco"},
}

BENCHMARKS_MD = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = ("# Benchmarks\n\nFigures printed and written by the scripts in `benchmarks/`; "
          "re-run one to refresh its section.\n")


def machine() -> str:
    """One line naming the machine, for the table's 'ran on' column."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, Python {platform.python_version()}"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def wait_measured(pid: int) -> tuple[int, Any, float]:
    """Wait for child ``pid``: its wait status, its rusage, and the peak RSS in MB of it and its own children.

    Not the rusage's ``ru_maxrss``: Linux carries a process's peak across ``execve``, so a child
    forked from a benchmark that holds a 300 MB fake server reports 300 MB whatever it used.
    ``VmHWM`` in ``/proc/PID/status`` is the peak of the child's own program; it is read until the
    child ends (a high-water mark, so only its last few milliseconds can be missed). A pull's
    fetch worker processes count too: the figure is the sum of every process's own peak, an upper
    bound of what they held together.
    """
    peaks: dict[int, float] = {}
    ended = threading.Event()

    def watch() -> None:  # on a thread, so that the wait below returns the moment the child ends
        tree, polls = [pid], 0
        while not ended.is_set():
            if polls % 25 == 0:  # new processes twice a second: walking every thread's children costs CPU
                tree = _tree(pid)
            polls += 1
            for each in tree:
                try:
                    for line in Path(f"/proc/{each}/status").read_text().splitlines():
                        if line.startswith("VmHWM:"):
                            peaks[each] = max(peaks.get(each, 0.0), int(line.split()[1]) / 1024)
                except (OSError, ValueError):
                    pass
            ended.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(pid, 0)
    ended.set()
    watcher.join()
    return status, usage, sum(peaks.values()) or usage.ru_maxrss / 1024  # no /proc: the rusage, caveat and all


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from ``/proc/PID/task/TID/children``."""
    found, todo = [], [pid]
    while todo:
        each = todo.pop()
        found.append(each)
        for children in Path(f"/proc/{each}/task").glob("*/children"):
            try:
                todo += [int(c) for c in children.read_text().split()]
            except (OSError, ValueError):
                pass
    return found


def update_section(name: str, title: str, body: str, command: str) -> None:
    """Replace (or append) this benchmark's section of BENCHMARKS.md."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    section = (f"<!-- bench:{name} -->\n## {title}\n\n`{command}` — {date.today().isoformat()}, {machine()}\n\n"
               f"{body.strip()}\n<!-- /bench:{name} -->")
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    tmp = BENCHMARKS_MD.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(BENCHMARKS_MD)


def publish(name: str, title: str, body: str, command: str, write: bool = True) -> None:
    """Print a benchmark's section and, unless ``write`` is off (``--no-write``), put it in BENCHMARKS.md."""
    print(body)
    if write:
        update_section(name, title, body, command)
