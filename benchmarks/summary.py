"""Collect every benchmark section of BENCHMARKS.md into one table at its top.

    python benchmarks/summary.py

Each script writes its own section (figures, the command that reproduces them, the machine
and the date); this reads them back and lists, per benchmark, its target verdicts, command,
machine and date, so a reader sees the state of every target at a glance.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import BENCHMARKS_MD, HEADER  # noqa: E402

SECTION = re.compile(r"<!-- bench:(?P<name>[\w-]+) -->\n## (?P<title>[^\n]+)\n\n`(?P<command>[^`]+)` — "
                     r"(?P<date>\d{4}-\d\d-\d\d), (?P<machine>[^\n]+)\n(?P<body>.*?)<!-- /bench:(?P=name) -->", re.S)
VERDICT = re.compile(r"target[^:\n]*?: (?:NOT met|met)", re.I)
SUMMARY_START, SUMMARY_END = "<!-- summary -->", "<!-- /summary -->"


CELL = re.compile(r"\| [^|\n]*?\((NOT met|met)\) ")


def verdicts(body: str) -> str:
    """The sentences of a section that state a target and whether it was met, and the table
    cells that do (``| 917 (NOT met) |``): a missed target in a table must show here too."""
    found = [" ".join(v.split()) for v in VERDICT.findall(body)]
    cells = CELL.findall(body)
    if cells:
        found.append(f"in its tables: {cells.count('met')} met, {cells.count('NOT met')} NOT met")
    return "; ".join(found) or "(figures only, no target)"


def anchor(title: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def table(text: str) -> str:
    rows = ["| benchmark | targets | reproduce with | ran on | date |", "|---|---|---|---|---|"]
    for m in SECTION.finditer(text):
        rows.append(f"| [{m['title']}](#{anchor(m['title'])}) | {verdicts(m['body'])} | `{m['command']}` | "
                    f"{m['machine']} | {m['date']} |")
    return "\n".join(rows)


def main() -> None:
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else HEADER
    text = re.sub(rf"{SUMMARY_START}.*?{SUMMARY_END}\n*", "", text, flags=re.S)
    summary = f"{SUMMARY_START}\n## All benchmarks at a glance\n\n{table(text)}\n{SUMMARY_END}\n\n"
    head, sep, rest = text.partition("<!-- bench:")
    text = head.rstrip() + "\n\n" + summary + sep + rest
    BENCHMARKS_MD.write_text(text)
    print(table(text))


if __name__ == "__main__":
    main()
