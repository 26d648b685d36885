"""How fast can anything pull from the fake Nucleus on this machine? The big slice's ceiling.

    python benchmarks/loopback_ceiling.py [--items 20000] [--rounds 3] [--dir /dev/shm]

The big-slice figure of ``nucleus_pull_bench.py`` (target >= 2,000 items/s) is measured with the
fake server on the same cores as the pull. This script pulls the same slice of tiny images two
ways, in alternating rounds:

- ``tlsync pull`` (a subprocess, start-up and publishing included), and
- a bare client: 64 threads, each with one keep-alive ``http.client`` connection, that GET every
  image URL of the slice, hash it and write it to a temp file renamed to its sha256. It does
  nothing else: no export paging, no checks, no manifest, no fsync. No real client can be
  cheaper, so its rate is the most this machine and this server allow.

The server runs in this script's process; its CPU per item is this process's CPU over the arm.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_report import publish  # noqa: E402
from nucleus_pull_bench import ITEMS_PER_S_TARGET, NEUTRAL, SLICE, FakeNucleus, tlsync_pull  # noqa: E402

BARE_CLIENT = r"""
import hashlib, http.client, os, resource, sys, tempfile, threading, time
from urllib.parse import urlsplit
urls, out = open(sys.argv[1]).read().split(), sys.argv[2]
pending, lock = iter(urls), threading.Lock()

def work():
    first = urlsplit(urls[0])
    conn = http.client.HTTPConnection(first.hostname, first.port, timeout=60)
    while True:
        with lock:
            url = next(pending, None)
        if url is None:
            return
        parts = urlsplit(url)
        conn.request("GET", f"{parts.path}?{parts.query}")
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            sys.exit(f"HTTP {response.status} for {url}")
        fd, tmp = tempfile.mkstemp(dir=out)
        os.write(fd, data)
        os.close(fd)
        os.replace(tmp, os.path.join(out, hashlib.sha256(data).hexdigest()))

start = time.monotonic()
threads = [threading.Thread(target=work) for _ in range(64)]
for t in threads: t.start()
for t in threads: t.join()
usage = resource.getrusage(resource.RUSAGE_SELF)
peak = [line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")]  # not ru_maxrss:
print(time.monotonic() - start, usage.ru_utime + usage.ru_stime, int(peak[0]) / 1024)  # exec keeps the parent's
"""


def server_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def bare(urls: Path, folder: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=folder) as out:
        line = subprocess.run([sys.executable, "-c", BARE_CLIENT, str(urls), out], capture_output=True, text=True,
                              check=True, cwd=NEUTRAL).stdout.split()
    return {"seconds": float(line[0]), "cpu": float(line[1]), "rss": float(line[2])}


def pulled(nucleus: FakeNucleus, folder: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        run = tlsync_pull(nucleus, Path(tmp) / "home")
    return {"seconds": float(run["seconds"]), "cpu": float(run["cpu"]), "rss": float(run["rss"])}


def rounds(args: argparse.Namespace) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {"bare client": [], "tlsync pull": []}
    with FakeNucleus(image_size=(8, 8)) as nucleus, tempfile.TemporaryDirectory() as tmp:
        dataset = nucleus.add_dataset("ds_bench", "bench")
        nucleus.add_slice(SLICE, "ds_bench", [])
        refs = nucleus.add_items("ds_bench", args.items, slice_id=SLICE)
        urls = Path(tmp) / "urls.txt"
        urls.write_text("\n".join(nucleus.row("ds_bench", dataset.items[r], 0)["item"]["processed_url"] for r in refs))
        for n in range(args.rounds):
            for arm in (list(results) if n % 2 == 0 else reversed(list(results))):
                os.sync()
                before = server_cpu()
                run = bare(urls, args.dir) if arm == "bare client" else pulled(nucleus, args.dir)
                run["server"] = server_cpu() - before
                results[arm].append(run)
                print(f"round {n + 1} {arm}: {args.items / run['seconds']:,.0f} items/s, "
                      f"client CPU {run['cpu'] / args.items * 1e3:.3f} ms/item, "
                      f"server CPU {run['server'] / args.items * 1e3:.3f} ms/item", flush=True)
    return results


def _per_item(runs: list[dict[str, float]], key: str, items: int) -> float:
    return statistics.median(r[key] for r in runs) / items * 1e3


def table(results: dict[str, list[dict[str, float]]], items: int) -> list[str]:
    rows = ["| client | items/s (median, min-max) | client CPU per item | server CPU per item | peak RSS |",
            "|---|---|---|---|---|"]
    for arm, runs in results.items():
        rates = [items / r["seconds"] for r in runs]
        rows.append(f"| {arm} | **{statistics.median(rates):,.0f}** ({min(rates):,.0f}-{max(rates):,.0f}) | "
                    f"{_per_item(runs, 'cpu', items):.3f} ms | {_per_item(runs, 'server', items):.3f} ms | "
                    f"{statistics.median(r['rss'] for r in runs):.0f} MB |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm"), help="Where the images are written.")
    parser.add_argument("--no-write", action="store_true", help="Print only; leave BENCHMARKS.md alone.")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results = rounds(args)
    rate = {arm: statistics.median(args.items / r["seconds"] for r in runs) for arm, runs in results.items()}
    cpu = {arm: _per_item(runs, "cpu", args.items) for arm, runs in results.items()}
    body = [f"{args.items:,} tiny images (8x8 PNG) from the fake Nucleus on 127.0.0.1, images written to "
            f"{args.dir}, {args.rounds} alternating rounds, the server in the benchmark's process on the same "
            f"cores; load average {load:.1f} at the start.", "", *table(results, args.items), "",
            f"The bare client is the ceiling of the big-slice benchmark on this machine: "
            f"{rate['bare client']:,.0f} items/s, against the target of {ITEMS_PER_S_TARGET:,}. `tlsync pull` "
            f"reaches {rate['tlsync pull'] / rate['bare client']:.0%} of it; the gap is the pull's own CPU per "
            f"item ({cpu['tlsync pull']:.2f} ms against the bare client's {cpu['bare client']:.2f} ms), not the "
            f"server's, which both arms share."]
    publish("loopback", "Loopback ceiling of the big Nucleus slice", "\n".join(body),
            "python benchmarks/loopback_ceiling.py", write=not args.no_write)


if __name__ == "__main__":
    main()
