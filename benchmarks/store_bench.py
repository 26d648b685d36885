"""Manifest write and streaming-read speed, and read memory at 20k vs 200k items.

    python benchmarks/store_bench.py [--items 200000]

Each measurement runs in a fresh subprocess so that its peak RSS is its own. Targets:
streaming read >= 100k items/s, and read peak RSS under 150 MB whatever the item count.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import peak_rss_mb, update_section  # noqa: E402


def write(folder: Path, n: int) -> dict:
    from tlsync.format import Box, ImageRef, Item
    from tlsync.manifest import ManifestWriter

    start = time.perf_counter()
    writer = ManifestWriter(folder)
    for i in range(n):
        boxes = [Box(f"class{k}", 10.0 * k, 5.0 + k, 20.0, 30.0, id=str(k)) for k in range(5)]
        image = ImageRef(f"https://example.test/{i}.jpg", f"images/ab/{i:064x}.jpg", f"{i:064x}", 640, 480)
        writer.write(Item(f"item-{i}", image, boxes, "train"))
    writer.close()
    seconds = time.perf_counter() - start
    return {"items_per_s": n / seconds, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def read(folder: Path) -> dict:
    from tlsync.manifest import ITEMS, read_items

    start = time.perf_counter()
    n = boxes = 0
    for item in read_items(folder / ITEMS):
        n += 1
        boxes += len(item.annotations)
    seconds = time.perf_counter() - start
    return {"items": n, "boxes": boxes, "items_per_s": n / seconds, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def in_subprocess(mode: str, folder: Path, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(folder), str(n)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, folder, n = args.child
        print(json.dumps(write(Path(folder), int(n)) if mode == "write" else read(Path(folder))))
        return

    rows = []
    for n in (args.items // 10, args.items):
        with tempfile.TemporaryDirectory() as tmp:
            w = in_subprocess("write", Path(tmp), n)
            r = in_subprocess("read", Path(tmp), n)
            assert r["items"] == n and r["boxes"] == 5 * n
            size_mb = (Path(tmp) / "items.jsonl").stat().st_size / 1e6
        rows.append((n, w, r, size_mb))
        print(f"{n:>8} items ({size_mb:.0f} MB): write {w['items_per_s']:,.0f} items/s, "
              f"read {r['items_per_s']:,.0f} items/s, read peak RSS {r['peak_rss_mb']:.0f} MB")

    small, large = rows[0][2]["peak_rss_mb"], rows[1][2]["peak_rss_mb"]
    read_ok = rows[1][2]["items_per_s"] >= 100_000
    rss_ok = large < 150
    body = "| items | manifest | write items/s | streaming read items/s | read peak RSS |\n|---|---|---|---|---|\n"
    body += "".join(f"| {n:,} | {mb:.0f} MB | {w['items_per_s']:,.0f} | {r['items_per_s']:,.0f} "
                    f"| {r['peak_rss_mb']:.0f} MB |\n"
                    for n, w, r, mb in rows)
    body += (f"\nRead memory grows by {max(large - small, 0):.0f} MB from {rows[0][0]:,} to {rows[1][0]:,} items "
             f"(target flat and under 150 MB: {'met' if rss_ok else 'NOT met'}); "
             f"read speed target >= 100k items/s: {'met' if read_ok else 'NOT met'}. "
             "5 boxes per item, no image bytes; each figure from its own subprocess.\n")
    print(body)
    update_section("store", "Dataset store: manifest write/read", body, "python benchmarks/store_bench.py")


if __name__ == "__main__":
    main()
