"""``tlsync datasets list|show|rm`` and ``tlsync export``: the local store, for people."""

from __future__ import annotations

from pathlib import Path

import click

from .cli_derive import derive_command
from .console import echo
from .errors import TlsyncError
from .store import Store


@click.group()
def datasets() -> None:
    """List, show, verify, derive and remove local datasets."""


datasets.add_command(derive_command)


@datasets.command(name="list")
def list_datasets() -> None:
    """Name, latest version, items, boxes, classes, source and creation time of each dataset."""
    store = Store()
    rows = [("NAME", "LATEST", "ITEMS", "BOXES", "CLASSES", "SOURCE", "CREATED")]
    unreadable: list[str] = []
    for name in store.dataset_names():
        try:
            rows.append(_row(store, name))
        except (TlsyncError, KeyError, TypeError, AttributeError) as e:
            # One broken dataset.json (a power cut, a bad copy) must not hide the others.
            latest = store.versions(name)[-1]
            why = str(e) if isinstance(e, TlsyncError) else f"{store.datasets_dir / name / str(latest)}: " \
                f"dataset.json lacks {type(e).__name__}: {e}"
            rows.append((name, f"@{latest}", "?", "?", "?", "UNREADABLE", ""))
            unreadable.append(why)
    if len(rows) == 1:
        echo(f"no datasets in {store.datasets_dir} yet: tlsync pull --source ... --dataset NAME")
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for why in unreadable:
        echo(f"warning: unreadable: {why}", err=True)


def _row(store: Store, name: str) -> tuple[str, str, str, str, str, str, str]:
    info = store.open(name).info
    counts = info["counts"]
    return (name, f"@{info['version']}", str(counts["items"]), str(counts["boxes"]),
            str(len(info["categories"])), str(info["source"]["name"]), str(info["created"]))


@datasets.command()
@click.argument("ref")
def verify(ref: str) -> None:
    """Check NAME or NAME@N against its own records: every image's sha256, the manifest, the counts."""
    from .verify import MAX_SHOWN
    from .verify import verify as verify_version

    report = verify_version(Store(), ref)
    for problem in report.problems[:MAX_SHOWN]:
        echo(problem, err=True)
    if len(report.problems) > MAX_SHOWN:
        echo(f"... and {len(report.problems) - MAX_SHOWN} more", err=True)
    checked = f"{report.ref}: {report.items} items, {report.images} images checked"
    if report.problems:
        raise TlsyncError(f"{checked}: {len(report.problems)} problem(s); pull the dataset again to restore it")
    echo(f"{checked}: OK")


@datasets.command()
@click.argument("ref")
def show(ref: str) -> None:
    """Per-split and per-class counts of NAME or NAME@N."""
    ds = Store().open(ref)
    info = ds.info
    echo(f"{ds.ref}  ({info['source']['name']}, created {info['created']})")
    echo(f"content hash {info['content_hash']}")
    params = ", ".join(f"{k}={v}" for k, v in info["source"]["params"].items())
    if params:
        echo(f"source params: {params}")
    counts = info["counts"]
    echo(f"{counts['items']} items ({counts['negatives']} without boxes), {counts['boxes']} boxes")
    for split, c in counts["splits"].items():
        echo(f"  {split:<6} {c['items']:>7} items {c['boxes']:>8} boxes")
    echo(f"{len(info['categories'])} classes:")
    for name in info["categories"]:
        echo(f"  {name:<24} {counts['classes'].get(name, 0):>8} boxes")
    for what in ("skipped", "not_used"):
        for reason, n in info.get(what, {}).items():
            echo(f"{what.replace('_', ' ')}: {n} x {reason}")


@datasets.command()
@click.argument("ref")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def rm(ref: str, yes: bool) -> None:
    """Remove NAME@N, or every version of NAME (cached images stay, shared)."""
    store = Store()
    store.open(ref)  # a clear error if it does not exist
    if not yes and not click.confirm(f"remove {ref}?"):
        echo(f"kept {ref}: nothing removed")  # declining is an answer, not an error: exit 0
        return
    for removed in store.remove(ref):
        echo(f"removed {removed}")


@datasets.command()
@click.argument("ref")
@click.option("--threshold", type=click.IntRange(0, 64), default=None,
              help="Near duplicates: at most this many of the 64 perceptual-hash bits differ "
                   "[default: 6; resized or re-encoded copies measure 0-4, unrelated images ~32].")
@click.option("--json", "json_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the full report (every group and its items) to this JSON file.")
@click.option("--show", type=click.IntRange(0), default=10, show_default=True, help="Groups listed per kind.")
def check(ref: str, threshold: int | None, json_out: Path | None, show: int) -> None:
    """Exact (sha256) and near (perceptual hash) duplicate images of NAME or NAME@N, and which cross splits."""
    from .atomic import atomic_write_json
    from .console import info
    from .duplicates import DEFAULT_THRESHOLD
    from .duplicates import check as find_duplicates

    ds = Store().open(ref)
    report = find_duplicates(ds, DEFAULT_THRESHOLD if threshold is None else threshold)
    for kind, groups in (("exact", report.exact), (f"near (<= {report.threshold} bits)", report.near)):
        echo(f"{kind} duplicates: {len(groups)} group(s), {sum(g.crosses for g in groups)} crossing splits")
        for group in sorted(groups, key=lambda g: not g.crosses)[:show]:
            mark = "CROSSES " + "/".join(group.splits) if group.crosses else group.splits[0]
            copies = ", ".join(f"{c.item_id} ({c.split})" for c in group.copies)
            echo(f"  [{mark}] {copies}" + (f"  distance {group.distance}" if group.distance else ""))
        if len(groups) > show:
            echo(f"  ... {len(groups) - show} more (--show N, or --json FILE for all)")
    for line in report.unreadable[:5]:
        info(f"not hashed, unreadable: {line}")
    if json_out:
        atomic_write_json(json_out, report.to_dict())
        echo(f"report: {json_out}")
    crossing = sum(g.crosses for g in [*report.exact, *report.near])
    echo(f"{ds.ref}: {report.items} items, {len(report.exact)} exact and {len(report.near)} near duplicate "
               f"group(s); {crossing} cross splits" + (" (test scores may be optimistic)" if crossing else ""))


@click.command()
@click.option("--dataset", "ref", required=True, help="NAME or NAME@N.")
@click.option("--format", "fmt", type=click.Choice(["coco"]), default="coco", show_default=True)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Folder to create.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), help="Export one split only.")
def export(ref: str, fmt: str, out: Path, split: str | None) -> None:
    """Write a dataset version out as COCO JSON + images (readable by --source coco)."""
    from .export import export_coco

    ds = Store().open(ref)
    counts = export_coco(ds, out, split)
    echo(f"exported {ds.ref}: {counts['images']} images, {counts['annotations']} boxes, "
               f"{counts['categories']} classes -> {out / 'annotations.json'}")
