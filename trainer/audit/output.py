"""What ``tlsync audit`` leaves in ``audits/<name>/`` besides the fold runs.

    suspects.jsonl   one line per suspect, most suspect first: rank, item, kind, score, the label
                     (class, box), the suggestion (class, box, confidence), evidence, fold run
    audit.json       the settings, the dataset version read, fold runs, counts per kind and
                     class, timings, and the ranks the contact sheet shows (audit.png's numbers)
    audit.png        a contact sheet of the top suspects: the label solid cyan, the suggestion
                     dashed magenta, each tile cropped around the two
    audit.html       every top suspect with its thumbnail (thumbs/), for review in a browser

Files are written to temp names and renamed; a failure while writing removes the outputs it
wrote, so a folder never holds a half audit (the fold runs stay: they are what ``--resume``
keeps).
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tlsync.atomic import atomic_write_file, atomic_write_json, atomic_write_text
from tlsync.format import Item

SHEET_TILES = 24
SHEET_COLUMNS = 6
THUMB = 192
PAGE_ROWS = 200  # suspects with a thumbnail on the HTML page; suspects.jsonl has them all
LABEL_STYLE = (0, 230, 255)  # cyan, solid; both on a dark outline so they show on any colour
SUGGESTION_STYLE = (255, 0, 200)  # magenta, dashed
OUTPUTS = ("suspects.jsonl", "audit.png", "audit.html", "thumbs")


def write_outputs(folder: Path, rows: list[dict[str, Any]], summary: dict[str, Any], items: dict[str, Item],
                  image_path: Callable[[Item], Path]) -> None:
    """suspects.jsonl, the thumbnails, audit.png, audit.html, then audit.json (which marks the audit finished)."""
    try:
        atomic_write_text(folder / "suspects.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        thumbs = write_thumbnails(folder / "thumbs", rows[:PAGE_ROWS], items, image_path)
        summary["contact_sheet"] = contact_sheet(folder / "audit.png", rows, thumbs)
        atomic_write_text(folder / "audit.html", page(rows[:PAGE_ROWS], thumbs, summary))
        atomic_write_json(folder / "audit.json", summary)
    except BaseException:
        for name in OUTPUTS:
            path = folder / name
            if path.is_dir():
                for child in path.iterdir():
                    child.unlink(missing_ok=True)
                path.rmdir()
            else:
                path.unlink(missing_ok=True)
        raise


def write_thumbnails(folder: Path, rows: list[dict[str, Any]], items: dict[str, Item],
                     image_path: Callable[[Item], Path]) -> dict[int, Path]:
    """One tile per row (by rank); an image that no longer decodes gets none and is skipped."""
    from PIL import Image, ImageOps

    folder.mkdir(exist_ok=True)
    out: dict[int, Path] = {}
    pictures: dict[str, Any] = {}
    for row in rows:
        item = items[row["item"]]
        if item.id not in pictures:
            try:
                with Image.open(image_path(item)) as im:
                    pictures = {item.id: ImageOps.exif_transpose(im).convert("RGB")}  # keep one decoded image
            except OSError:
                continue
        path = folder / f"{row['rank']:05d}.png"
        _save_png(path, render_tile(pictures[item.id], row))
        out[row["rank"]] = path
    return out


def _save_png(path: Path, picture: Any) -> None:
    atomic_write_file(path, lambda tmp: picture.save(tmp, format="PNG"))


def render_tile(picture: Any, row: dict[str, Any]) -> Any:
    """A THUMB-sized crop around the label and the suggestion, both drawn, captioned with rank and kind."""
    from PIL import ImageDraw

    boxes = [b["box"] for b in (row["label"], row["suggestion"]) if b]
    x0 = min(b[0] for b in boxes)
    y0 = min(b[1] for b in boxes)
    x1 = max(b[0] + b[2] for b in boxes)
    y1 = max(b[1] + b[3] for b in boxes)
    side = max(x1 - x0, y1 - y0, 32.0) * 2.0  # the boxes fill half the tile: enough context to judge them
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = max(0.0, min(cx - side / 2, picture.width - side))
    top = max(0.0, min(cy - side / 2, picture.height - side))
    crop = picture.crop((round(left), round(top), round(left + side), round(top + side)))
    scale = THUMB / max(1, max(crop.size))
    tile = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
    draw = ImageDraw.Draw(tile)
    for spec, dashed, colour in ((row["label"], False, LABEL_STYLE), (row["suggestion"], True, SUGGESTION_STYLE)):
        if spec:
            x, y, w, h = spec["box"]
            rect = ((x - left) * scale, (y - top) * scale, (x - left + w) * scale, (y - top + h) * scale)
            (_dashed_rectangle if dashed else _solid_rectangle)(draw, rect, colour)
    draw.rectangle((0, tile.height - 14, tile.width, tile.height), fill=(0, 0, 0))
    draw.text((3, tile.height - 13), f"#{row['rank']} {row['kind']} {row['score']:.2f}", fill=(255, 255, 0))
    return tile


def _solid_rectangle(draw: Any, rect: tuple[float, ...], colour: tuple[int, int, int]) -> None:
    draw.rectangle(rect, outline=(0, 0, 0), width=4)
    draw.rectangle(rect, outline=colour, width=2)


def _dashed_rectangle(draw: Any, rect: tuple[float, ...], colour: tuple[int, int, int], dash: float = 6.0) -> None:
    x0, y0, x1, y1 = rect
    for (ax, ay), (bx, by) in (((x0, y0), (x1, y0)), ((x1, y0), (x1, y1)), ((x1, y1), (x0, y1)), ((x0, y1), (x0, y0))):
        length = max(abs(bx - ax), abs(by - ay))
        steps = max(1, int(length // dash))
        for s in range(0, steps, 2):
            t0, t1 = s / steps, min(1.0, (s + 1) / steps)
            segment = (ax + (bx - ax) * t0, ay + (by - ay) * t0, ax + (bx - ax) * t1, ay + (by - ay) * t1)
            draw.line(segment, fill=(0, 0, 0), width=4)
            draw.line(segment, fill=colour, width=2)


def contact_sheet(path: Path, rows: list[dict[str, Any]], thumbs: dict[int, Path]) -> list[int]:
    """The first ``SHEET_TILES`` suspects with a tile, in rank order; returns the ranks shown."""
    from PIL import Image

    shown = [row["rank"] for row in rows if row["rank"] in thumbs][:SHEET_TILES]
    cols = max(1, min(SHEET_COLUMNS, len(shown)))
    lines = max(1, (len(shown) + cols - 1) // cols)
    sheet = Image.new("RGB", (cols * (THUMB + 4), lines * (THUMB + 4)), (255, 255, 255))
    for i, rank in enumerate(shown):
        with Image.open(thumbs[rank]) as tile:
            sheet.paste(tile, ((i % cols) * (THUMB + 4), (i // cols) * (THUMB + 4)))
    atomic_write_file(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return shown


def page(rows: list[dict[str, Any]], thumbs: dict[int, Path], summary: dict[str, Any]) -> str:
    """audit.html: a table of suspects with thumbnails; every data-borne string is escaped."""
    e = html.escape
    body = []
    for row in rows:
        image = (f'<img src="thumbs/{thumbs[row["rank"]].name}" width="{THUMB}" alt="suspect {row["rank"]}">'
                 if row["rank"] in thumbs else "(image unreadable)")
        label = f'{e(row["label"]["class"])} {_fmt(row["label"]["box"])}' if row["label"] else "none"
        suggestion = (f'{e(row["suggestion"]["class"])} {_fmt(row["suggestion"]["box"])} '
                      f'({row["suggestion"].get("confidence", 0):.2f})' if row["suggestion"] else "remove the label")
        body.append(f'<tr class="suspect" id="s{row["rank"]}"><td>{row["rank"]}</td><td>{image}</td>'
                    f'<td>{e(row["item"])}</td><td>{e(row["kind"])}</td><td>{row["score"]:.3f}</td>'
                    f'<td>{label}</td><td>{suggestion}</td><td>{row["image_quality"]:.3f}</td>'
                    f'<td>{e(str(row["fold_run"]))}</td></tr>')
    kinds = ", ".join(f"{n} {k}" for k, n in summary["counts"]["per_kind"].items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tlsync audit {e(summary['name'])}</title>
<style>body{{font-family:sans-serif}} td{{padding:4px;vertical-align:top}} .label{{color:#00a0b4}}
.suggestion{{color:#c800a0}}</style></head><body>
<h1>Audit of {e(summary['settings']['dataset'])}</h1>
<p id="summary">{summary['suspects']} suspects in {summary['images_with_suspects']} of {summary['images']} images:
{e(kinds)}.
{e(summary['note'])}</p>
<p><span class="label">Solid cyan: the label as it is.</span> <span class="suggestion">Dashed magenta: the
model's suggestion.</span> Fix labels on the labelling platform, then pull again.</p>
<table><thead><tr><th>rank</th><th>image</th><th>item</th><th>kind</th><th>score</th><th>label</th>
<th>suggestion</th><th>image quality</th><th>fold run</th></tr></thead><tbody>
{chr(10).join(body)}
</tbody></table></body></html>
"""


def _fmt(box: list[float]) -> str:
    return "[" + ", ".join(f"{v:.0f}" for v in box) + "]"
