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


def verdicts(body: str) -> str:
    """The sentences of a section that state a target and whether it was met."""
    found = [" ".join(v.split()) for v in VERDICT.findall(body)]
    return "; ".join(found) or "(figures only, no target)"


def table(text: str) -> str:
    rows = ["| benchmark | targets | reproduce with | ran on | date |", "|---|---|---|---|---|"]
    for m in SECTION.finditer(text):
        rows.append(f"| [{m['title']}](#{m['name']}) | {verdicts(m['body'])} | `{m['command']}` | "
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
