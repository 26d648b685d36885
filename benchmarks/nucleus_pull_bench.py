"""Nucleus pull speed against the official client's way, and pull memory on a 100,000-item slice.

    python benchmarks/nucleus_pull_bench.py [--items 500] [--latency 0.02] [--big 100000]

A fake Nucleus API on 127.0.0.1 (``tests/fake_nucleus.py``) answers every request
after ``--latency`` seconds, like a remote API and CDN would. The baseline does what users
of the official ``scale-nucleus`` client do: ``slice.items_and_annotations()`` (one unpaged
``exportForTraining`` request) and then one ``requests.get`` per image, in order. tlsync
runs as ``tlsync pull`` in a subprocess, start-up included, into a fresh store; then once
more, unchanged. Targets: tlsync >= 8x faster than the baseline; the unchanged re-pull
under 2 s; peak RSS of the 100,000-item pull (tiny images, no latency) under 300 MB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the fake API is a test double
from bench_report import update_section  # noqa: E402
from fake_nucleus import FakeNucleus  # noqa: E402

SLICE = "slc_bench"


def baseline(nucleus: FakeNucleus, out: Path) -> float:
    """The official client's pattern: the whole export in one request, then images one by one."""
    start = time.perf_counter()
    rows = requests.get(f"{nucleus.endpoint}/slice/{SLICE}/exportForTraining", json={},
                        auth=(nucleus.api_key, ""), timeout=120).json()["exportedRows"]
    for row in rows:
        response = requests.get(row["item"]["processed_url"], timeout=120)
        response.raise_for_status()
        (out / f"{row['item']['reference_id']}.png").write_bytes(response.content)
    return time.perf_counter() - start


def tlsync_pull(nucleus: FakeNucleus, home: Path) -> tuple[float, float, str]:
    """``tlsync pull`` in a subprocess: (seconds, its own peak RSS in MB, its last stdout line)."""
    env = {**os.environ, "TLSYNC_HOME": str(home), "TLSYNC_LOAD_PLUGINS": "",
           "NUCLEUS_API_KEY": nucleus.api_key, "NUCLEUS_ENDPOINT": nucleus.endpoint}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "tlsync", "pull", "--source", "nucleus", "--slice", SLICE,
                                  "--dataset", "bench"], env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # reaped here, so the rusage is this child's alone
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if child.returncode:
            sys.exit(f"tlsync pull failed: {err.read().decode().strip()}")
        return seconds, usage.ru_maxrss / 1024, out.read().decode().strip().splitlines()[-1]


def speed(items: int, latency: float) -> tuple[list[str], dict[str, float]]:
    with FakeNucleus(latency=latency) as nucleus, tempfile.TemporaryDirectory() as tmp:
        nucleus.add_dataset("ds_bench", "bench")
        nucleus.add_slice(SLICE, "ds_bench", [])
        nucleus.add_items("ds_bench", items, slice_id=SLICE)
        (Path(tmp) / "baseline").mkdir()
        base = baseline(nucleus, Path(tmp) / "baseline")
        print(f"baseline (official-client pattern): {base:.2f} s")
        nucleus.server.clear_log()
        first, first_rss, first_line = tlsync_pull(nucleus, Path(tmp) / "home")
        fetched = len(nucleus.image_requests())
        print(f"tlsync pull: {first:.2f} s, {fetched} image requests ({first_line})")
        nucleus.server.clear_log()
        again, _, again_line = tlsync_pull(nucleus, Path(tmp) / "home")
        refetched = len(nucleus.image_requests())
        print(f"tlsync re-pull: {again:.2f} s, {refetched} image requests ({again_line})")
    figures = {"baseline": base, "first": first, "again": again, "ratio": base / first}
    rows = [
        f"| official-client pattern (export, then `requests.get` per image) | {base:.2f} s | {items} |",
        f"| `tlsync pull` (subprocess, start-up included) | {first:.2f} s | {fetched} |",
        f"| `tlsync pull` again, slice unchanged | {again:.2f} s | {refetched} |",
    ]
    return rows, figures


def memory(items: int) -> tuple[float, float]:
    with FakeNucleus(image_size=(8, 8)) as nucleus, tempfile.TemporaryDirectory() as tmp:
        nucleus.add_dataset("ds_bench", "bench")
        nucleus.add_slice(SLICE, "ds_bench", [])
        nucleus.add_items("ds_bench", items, slice_id=SLICE)
        seconds, rss, line = tlsync_pull(nucleus, Path(tmp) / "home")
        print(f"{items:,} items: {seconds:.1f} s, peak RSS {rss:.0f} MB ({line})")
    return seconds, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--big", type=int, default=100_000, help="Items for the memory run (0: skip it).")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    rows, f = speed(args.items, args.latency)
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    body = [f"{args.items} images (64x48 PNG), {args.latency * 1000:.0f} ms per request, fake Nucleus on 127.0.0.1, "
            f"`--concurrency` 16 (default).", "",
            "| run | wall time | image requests |", "|---|---|---|", *rows, "",
            f"tlsync is **{f['ratio']:.1f}x** faster than the official-client pattern (target >= 8x: {met(f['ratio'] >= 8)}); "
            f"the unchanged re-pull takes {f['again']:.2f} s (target < 2 s: {met(f['again'] < 2)}). "
            f"Load average before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f} (tlsync's pull is CPU-bound, "
            f"the baseline mostly waits, so a busy machine lowers the ratio)."]
    if args.big:
        seconds, rss = memory(args.big)
        body += ["", f"Memory: a {args.big:,}-item slice (8x8 images, no latency) pulls in {seconds:.0f} s "
                     f"({args.big / seconds:,.0f} items/s) with a peak RSS of **{rss:.0f} MB** for the `tlsync` "
                     f"process (target < 300 MB: {met(rss < 300)})."]
    update_section("nucleus", "Nucleus pull", "\n".join(body), "python benchmarks/nucleus_pull_bench.py")


if __name__ == "__main__":
    main()
