"""Pull speed of the Roboflow chess COCO export (289 images of 2048x1371), cold and warm.

    python benchmarks/roboflow_bench.py [--repeats 3]

Cold: an empty store, so every image is read, hashed, measured and copied in. Measured
twice: with the export's files already in the OS page cache (a re-run on the same
machine) and with them evicted first (``posix_fadvise DONTNEED``: a first pull, as a
user sees it). Warm: the same pull again, which must report "unchanged": the export's
files have the names, sizes and times the last pull recorded, so nothing is read. Target:
warm at least 10x faster than cold. Also shown: ``--reread``, the warm pull that reads
the annotations again and finds every image in the fetch cache (what a pull costs when
the files were touched but not changed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import peak_rss_mb, update_section  # noqa: E402

CHESS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "chess-pieces-coco"
TARGET = 10.0


def evict_from_page_cache(root: Path) -> None:
    """Ask the kernel to drop the export's pages, so the next read comes from disk."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed_pull(store, source, reread: bool = False) -> tuple[float, object]:
    from tlsync.pull import pull

    start = time.perf_counter()
    result = pull(store, source, {"path": CHESS}, "chess", reread=reread)
    return time.perf_counter() - start, result


def run(repeats: int) -> dict[str, float]:
    from tlsync.plugins import get_source
    from tlsync.store import Store

    source = get_source("roboflow")
    cold_cached, cold_evicted, warm, reread = [], [], [], []
    for i in range(repeats * 2):
        evicted = i % 2 == 1
        if evicted:
            evict_from_page_cache(CHESS)
        with tempfile.TemporaryDirectory(prefix="tlsync-bench-") as home:
            store = Store(home)
            seconds, result = timed_pull(store, source)
            assert not result.unchanged and result.items == 289 and result.boxes == 2870, result
            (cold_evicted if evicted else cold_cached).append(seconds)
            for _ in range(repeats if not evicted else 0):
                seconds, again = timed_pull(store, source)
                assert again.unchanged and again.quick and again.fetched == 0, "the warm pull must read nothing"
                warm.append(seconds)
                seconds, again = timed_pull(store, source, reread=True)
                assert again.unchanged and again.cached == 289, "--reread must find every image in the cache"
                reread.append(seconds)
    return {"cold_cached": statistics.median(cold_cached), "cold_evicted": statistics.median(cold_evicted),
            "warm": statistics.median(warm), "reread": statistics.median(reread)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind (medians are reported)")
    args = parser.parse_args()
    if not CHESS.exists():
        sys.exit(f"shared dataset not found at {CHESS}; nothing to measure")
    os.environ.setdefault("TLSYNC_LOAD_PLUGINS", "")
    figures = run(args.repeats)
    warm = figures["warm"]
    rows = [
        ("cold, export in OS page cache", figures["cold_cached"], f"{figures['cold_cached'] / warm:.1f}x"),
        ("cold, export evicted from page cache", figures["cold_evicted"], f"{figures['cold_evicted'] / warm:.1f}x"),
        ("warm (second pull: files match the last pull's fingerprint, nothing read)", warm, ""),
        ("warm with `--reread` (annotations re-read, images from the fetch cache)", figures["reread"],
         f"{figures['cold_cached'] / figures['reread']:.1f}x"),
    ]
    lines = ["| pull | seconds | images/s | cold / warm |", "|---|---:|---:|---:|"]
    lines += [f"| {label} | {seconds:.3f} | {289 / seconds:,.0f} | {ratio} |" for label, seconds, ratio in rows]
    worst = min(figures["cold_cached"], figures["cold_evicted"]) / warm
    verdict = "met" if worst >= TARGET else "NOT met"
    lines += ["", f"289 images (2048x1371, 80 MB), 2870 boxes; medians of {args.repeats} runs; "
                  f"peak RSS {peak_rss_mb():.0f} MB. Target warm >= {TARGET:g}x faster than cold: "
                  f"{verdict} (worst ratio {worst:.1f}x)."]
    body = "\n".join(lines)
    print(body)
    update_section("roboflow", "Roboflow pull: chess COCO export, cold vs warm", body,
                   f"python benchmarks/roboflow_bench.py --repeats {args.repeats}")


if __name__ == "__main__":
    main()
