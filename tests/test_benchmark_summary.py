"""The table at the top of BENCHMARKS.md: a reader trusts it to show every missed target."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

SECTION = """<!-- bench:pull -->
## Nucleus pull: cold, warm (and 100k)

`python benchmarks/x.py` — 2026-12-06, 2 cores

The pull is 15x faster (target p90 >= 10x: met).

| store on | items/s | peak RSS |
|---|---|---|
| /work | **917** (NOT met) | 166 MB (met) |
<!-- /bench:pull -->
"""


@pytest.fixture
def summary(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import summary

    return summary


def test_a_target_missed_in_a_table_shows_in_the_summary(summary) -> None:
    row = summary.table(SECTION).splitlines()[-1]
    assert "target p90 >= 10x: met" in row
    assert "in its tables: 1 met, 1 NOT met" in row  # the sentence alone would read as all met


def test_summary_links_go_to_the_headings_github_makes(summary) -> None:
    row = summary.table(SECTION).splitlines()[-1]
    assert "(#nucleus-pull-cold-warm-and-100k)" in row
    text = (BENCHMARKS.parent / "BENCHMARKS.md").read_text()
    headings = {summary.anchor(h) for h in re.findall(r"^## (.+)$", text, re.M)}
    links = re.findall(r"\]\(#([^)]+)\)", text.split("<!-- /summary -->")[0])
    assert links and set(links) <= headings
