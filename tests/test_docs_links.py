"""Every relative link in the README, CONTRIBUTING, docs/ and the plugins' READMEs leads somewhere.

The README is a landing page that sends readers to task pages in docs/, and the pages send them
to each other's sections: a renamed heading or a moved page must fail here, not on a reader.
A link is checked when it is relative (no scheme): its file must exist, and its ``#anchor`` must
be one GitHub would make from a heading of that file (or an explicit ``<a id=...>``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")
FENCE = re.compile(r"^\s*(```|~~~)")


def doc_pages() -> list[Path]:
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "plugins").glob("*/README.md"))]
    return [p for p in pages if p.exists()]


def prose_lines(text: str, blank_code: bool = True) -> list[str]:
    """The lines outside fenced code blocks, inline code spans blanked (links there are examples)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "``", line) if blank_code else line)
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: formatting and punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its words
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every ``#anchor`` a link into ``page`` may use; repeated headings get -1, -2... as on GitHub."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in prose_lines(page.read_text(encoding="utf-8"), blank_code=False):
        found.update(HTML_ANCHOR.findall(line))
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = github_slug(heading.group(1))
            found.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return found


def relative_links(page: Path) -> list[str]:
    text = "\n".join(prose_lines(page.read_text(encoding="utf-8")))
    links = [*LINK.findall(text), *REFERENCE.findall(text)]
    return [link for link in links if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", link)]


def broken_links(page: Path) -> list[str]:
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target} "
                          "does not exist")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no heading in {target.name} has the anchor #{anchor}")
    return broken


@pytest.mark.parametrize("page", doc_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: " + "; ".join(broken_links(page))


def test_the_checker_sees_links_and_anchors(tmp_path: Path):
    """The check itself can fail: a missing file and a missing anchor are reported, good ones are not."""
    (tmp_path / "other.md").write_text("# Other page\n\n## Set up `tlsync` (fast!)\n\n## Set up `tlsync` (fast!)\n")
    page = tmp_path / "page.md"
    page.write_text("See [ok](other.md#set-up-tlsync-fast), [second](other.md#set-up-tlsync-fast-1),\n"
                    "[here](#top), [gone](missing.md), [bad](other.md#nope), [web](https://example.com/x#y)\n"
                    "`[not a link](nowhere.md)`\n\n```\n[in code](nowhere.md)\n```\n\n# Top\n")
    assert broken_links(page) == ["missing.md: " + str(tmp_path / "missing.md") + " does not exist",
                                  "other.md#nope: no heading in other.md has the anchor #nope"]
