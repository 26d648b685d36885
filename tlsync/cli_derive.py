"""``tlsync datasets derive``: the command around ``derive.py`` (options, the summary a person reads)."""

from __future__ import annotations

import click

from .class_rules import format_map, parse_class_map
from .console import echo, info
from .derive import DeriveResult, DeriveSpec, derive
from .store import Store


@click.command(name="derive")
@click.argument("new")
@click.option("--from", "sources", multiple=True, required=True, metavar="NAME[@N]",
              help="A dataset version to take items from (repeat for several; latest version without @N).")
@click.option("--class-map", "class_map", metavar="MAP",
              help="Rename or merge classes: old=new,old2=new (two olds to one new merge), or a .yaml/.json "
                   "file of old: new. A name no source has is an error; classes left out stay as they are.")
@click.option("--drop-class", "drop", multiple=True, metavar="NAME",
              help="Remove this class and its boxes (a name after --class-map; repeatable). Images stay.")
@click.option("--keep-class", "keep", multiple=True, metavar="NAME",
              help="Keep only these classes (names after --class-map; repeatable); other boxes are removed.")
@click.option("--strict", is_flag=True, help="Drop every class --class-map leaves out, instead of keeping it.")
@click.option("--split-from", metavar="NAME",
              help="When one picture is in two sources with different splits, this source's split wins "
                   "(otherwise that is an error: the same pixels would be in train and test).")
@click.option("--dedupe", is_flag=True,
              help="One item per picture (same sha256): the copies' boxes unioned, disagreeing labels reported.")
def derive_command(new: str, sources: tuple[str, ...], class_map: str | None, drop: tuple[str, ...],
                   keep: tuple[str, ...], strict: bool, split_from: str | None, dedupe: bool) -> None:
    """Make a dataset version from others: classes renamed, merged or dropped; images shared, not copied."""
    spec = DeriveSpec(sources, parse_class_map(class_map) if class_map else {}, drop, keep, strict, split_from,
                      dedupe)
    result = derive(Store(), new, spec)
    for line in summary(result):
        echo(line)


def summary(result: DeriveResult) -> list[str]:
    """What a person checks after a derive: what went in, what the rules did, what came out."""
    p = result.provenance
    lines = [f"from {', '.join(s['ref'] for s in p['sources'])}"]
    if p["classes_merged"]:
        merged = p["classes_merged"].items()
        lines.append("classes: " + "; ".join(f"{' + '.join(olds)} -> {new}" for new, olds in merged))
    if p["boxes_dropped"]:
        lines.append("boxes dropped: " + ", ".join(f"{n} {label}" for label, n in p["boxes_dropped"].items()))
    if p["dedupe"]:
        lines.append(f"duplicates merged: {p['items_merged']} item(s), {p['boxes_merged']} box(es); "
                     f"{p['conflicts']} conflicting label(s)")
        lines += [f"  conflict: {c}" for c in p["conflict_examples"][:5]]
    if p["splits_changed"]:
        lines.append(f"splits taken from {p['split_from']}: {p['splits_changed']} item(s) moved")
    if result.near_duplicates:
        info(f"warning: classes differ only in case or spacing: "
             f"{', '.join(f'{a} / {b}' for a, b in result.near_duplicates.items())}; "
             f"merge them with --class-map '{format_map(result.near_duplicates)}'")
    state = "unchanged" if result.unchanged else "new version"
    lines.append(f"{result.ref} ({state}): {result.items} items, {result.boxes} boxes, "
                 f"{len(result.categories)} classes: {', '.join(result.categories)}")
    return lines
