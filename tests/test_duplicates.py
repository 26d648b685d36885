"""Honest splits: copies of one image never straddle splits, and `datasets check` finds copies."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from tlsync.connectors.synthetic import render
from tlsync.duplicates import check, hamming, leak_warning, phash
from tlsync.format import Box, ImageRef, Item
from tlsync.pull import pull
from tlsync.sources import PullContext, Source


def jpeg_copy(png: bytes, scale: float, quality: int) -> bytes:
    """The same picture resized and re-encoded, as a re-export of a dataset would make it."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        small = im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)))
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=quality)
    return out.getvalue()


class Pictures(Source):
    """Items from in-memory bytes: ``(id, bytes, split or None)``."""

    name = "pictures"

    def __init__(self, pictures: list[tuple[str, bytes, str | None]]):
        self.pictures = pictures

    def items(self, ctx: PullContext, **_: Any) -> Iterator[Item]:
        ctx.set_categories(["thing"])
        for item_id, _data, split in self.pictures:
            yield Item(item_id, ImageRef(f"mem://{item_id}"), [Box("thing", 2, 2, 10, 10)], split)

    def fetch(self, item: Item, out: BinaryIO) -> None:
        out.write({i: d for i, d, _ in self.pictures}[item.id])


def test_byte_identical_items_with_different_ids_share_a_split(store) -> None:
    # 24 pairs: split by id alone, some pair would almost surely straddle (each pair: 1/2).
    pictures = []
    for n in range(24):
        data = render(1, n, 40)
        pictures += [(f"a-{n}", data, None), (f"copy-of-a-{n}", data, None)]
    result = pull(store, Pictures(pictures), {}, "pairs", split_ratios=(0.5, 0.0, 0.5))
    splits: dict[str, set[str]] = {}
    for item in store.open(result.ref).items():
        splits.setdefault(item.image.sha256, set()).add(item.split)
    assert len(splits) == 24
    assert all(len(s) == 1 for s in splits.values()), splits
    assert {next(iter(s)) for s in splits.values()} == {"train", "test"}  # the split itself still varies
    assert not any("warning" in note for note in result.notes)


def test_near_duplicates_are_found_and_distinct_images_are_not(store) -> None:
    originals = [render(2, n, 96) for n in range(6)]
    pictures = [(f"img-{n}", data, "train") for n, data in enumerate(originals)]
    pictures.append(("img-0-small.jpg", jpeg_copy(originals[0], 0.7, 60), "test"))  # resized + re-encoded
    # Noise-textured pictures re-encoded at quality 40 measure 0-6 bits from their originals
    # (97% of 200 of them; a few reach 8-16): img-1's copy measures 2, clear of the threshold.
    pictures.append(("img-1-recoded.jpg", jpeg_copy(originals[1], 1.0, 40), "train"))
    result = pull(store, Pictures(pictures), {}, "near")
    report = check(store.open(result.ref))
    groups = sorted(sorted(c.item_id for c in g.copies) for g in report.near)
    assert groups == [["img-0", "img-0-small.jpg"], ["img-1", "img-1-recoded.jpg"]]
    crossing = [g for g in report.near if g.crosses]
    assert [sorted(g.splits) for g in crossing] == [["test", "train"]]
    assert report.exact == []
    # What the threshold means: copies measure a few bits apart, unrelated pictures far more.
    paths = {i.id: store.open(result.ref).image_path(i) for i in store.open(result.ref).items()}
    assert hamming(phash(paths["img-0"]), phash(paths["img-0-small.jpg"])) <= 6
    assert min(hamming(phash(paths[f"img-{a}"]), phash(paths[f"img-{b}"]))
               for a in range(6) for b in range(a + 1, 6)) > report.threshold


def test_a_cross_split_copy_from_the_source_is_warned_about(store, run_cli, tmp_path: Path) -> None:
    data = render(3, 0, 48)
    pictures = [("train-0", data, "train"), ("test-0", data, "test"), ("other", render(3, 1, 48), "train")]
    result = pull(store, Pictures(pictures), {}, "leaky")
    warnings = [n for n in result.notes if n.startswith("warning")]
    assert len(warnings) == 1 and "1 in train and test" in warnings[0]
    version = store.open(result.ref)
    assert "1 image(s)" in (leak_warning(version, "test") or "")

    out = run_cli("datasets", "check", "leaky", "--json", tmp_path / "dups.json")
    assert out.exit_code == 0, out.stderr
    assert "exact duplicates: 1 group(s), 1 crossing splits" in out.stdout
    assert "CROSSES test/train" in out.stdout
    saved = json.loads((tmp_path / "dups.json").read_text())
    assert saved["exact_crossing_splits"] == 1
    assert {c["item"] for c in saved["exact"][0]["copies"]} == {"train-0", "test-0"}


def test_a_clean_dataset_checks_clean(store, run_cli) -> None:
    pull(store, Pictures([(f"p{n}", render(4, n, 48), None) for n in range(5)]), {}, "clean")
    out = run_cli("datasets", "check", "clean@1")
    assert out.exit_code == 0, out.stderr
    assert "0 exact and 0 near duplicate group(s); 0 cross splits" in out.stdout
    assert leak_warning(store.open("clean"), "test") is None
