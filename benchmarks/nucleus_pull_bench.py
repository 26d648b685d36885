"""Nucleus pull speed against the official client's way, and pull memory on a 100,000-item slice.

    nice -n 5 python benchmarks/nucleus_pull_bench.py [--items 200] [--latency 0.05] [--rounds 3]
        [--photos DIR] [--sweep 16,32,64] [--python OTHER_PYTHON] [--big 100000]

A fake Nucleus API on 127.0.0.1 (``tests/fake_nucleus.py``) answers every request
after ``--latency`` seconds, like a remote API and CDN would, and serves real photos
(``--photos``, default the chess train split: 2048x1371 JPEGs of ~275 KB). The baseline
does what users of the official ``scale-nucleus`` client do: ``slice.items_and_annotations()``
(one unpaged ``exportForTraining`` request) and then one ``requests.get`` per image, in
order. tlsync runs as ``tlsync pull`` in a subprocess, start-up included, into a fresh
store; rounds alternate baseline and tlsync so that load from other processes falls on
both. Each tlsync pull is split into where its time goes, from the server's request log:
start-up (process start to the first API request), export paging (to the first image
request), images (first to last image answer) and publishing (to process exit).
``--sweep`` repeats the cold pull at other ``--concurrency`` values (how the default was
chosen); ``--before`` pulls with another checkout's interpreter in the same rounds (every other
round first), for a before/after figure. Every pull starts with the disk's dirty data written back
(``os.sync``), so that no pull pays for the baseline's (or the previous pull's) writes.
A concurrent writer (``--writer-mb-s``, default 40 MB/s, fsyncing every 32 MB) writes to the
same disk for the whole run, as another job would: a pull that fsyncs image by image waits for
that writer's data at every journal commit, which is what decided the wall time before images
were made durable in batches. Wall times are reported as p50 and p90 over ``--rounds`` (default
10) alternating rounds; ``--before`` (another checkout's interpreter) is pulled in the same rounds.
Targets: tlsync's p90 >= 10x faster than the baseline's median; the unchanged re-pull under 2 s;
the 100,000-item pull (tiny images, no latency) at >= 2,000 items/s with a peak RSS under 300 MB.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the fake API is a test double
from bench_report import update_section, wait_measured  # noqa: E402
from fake_nucleus import FakeNucleus  # noqa: E402

SLICE = "slc_bench"
ITEMS_PER_S_TARGET = 2000
WRITER = """
import os, sys, time
path, rate, parent = sys.argv[1], float(sys.argv[2]) * 1e6, os.getppid()
block = os.urandom(1 << 20)
written, start = 0, time.monotonic()
with open(path, "wb") as f:
    while os.getppid() == parent:  # ends with the benchmark, however that ends
        f.write(block)
        written += len(block)
        if written % (32 << 20) == 0:
            f.flush(); os.fsync(f.fileno())
        if written >= 512 << 20:
            f.seek(0); f.truncate(); written, start = 0, time.monotonic()
        ahead = written / rate - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
"""
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "chess-pieces-coco" / "train"
TARGET = 10.0
# The children's working folder: ``python -m`` puts the current folder first on sys.path, so run from
# a checkout, ``--before``'s interpreter would import that checkout's tlsync instead of its own.
NEUTRAL = tempfile.gettempdir()
FIGURES = ("startup", "export", "images", "publish", "cpu")  # medians reported per cold pull
FINDINGS = """What the rounds above measure, and what changed for them (issue 22, section 7):
- the stalls. Rounds of both arms used to stall for 20-55 s now and then, and decided the p90. The
  fake server (Python's `socketserver`) listened with a backlog of 5: a pull opens up to 64
  connections at once, and while the server's accept thread waited for a core, connections past
  the backlog waited for the client's SYN retransmits (1 s, 3 s, 7 s, 15 s...). A real CDN's backlog
  is in the thousands; the fake server's is now 1,024 (`tlsync/testing/server.py`), and no round
  has stalled since. The stalls were the server's, not tlsync's;
- the pull's own CPU per image: folders made once per pull instead of a `mkdir(exist_ok=True)` per
  image; fetch-cache look-ups 500 at a time after the first 64; an image of up to 1 MB checked
  from the bytes just written instead of opening the file again; known secrets redacted with one
  compiled pattern. On 5,000 tiny images with the store on tmpfs, in alternating rounds against the
  code before: 0.88-1.12 ms of CPU per item against 1.09-1.43 ms;
- images are made durable in groups (`tlsync/durable.py`, the round before this one): a background
  thread fsyncs whatever images have landed, 16 at a time, then their folders, and records their
  fetch-cache rows in one transaction; a publish commits the rest first. Measured then against
  per-image fsyncs with another process writing 40 MB/s to the same disk: p50 1.88 s against 2.39 s;
- the big slice is CPU-bound, and its CPU per image went down this round (issue 22, session 9),
  each step measured on a 20,000-item slice into tmpfs in 4 alternating rounds against the code
  before it: one fsync thread pool per process instead of one started per durability round, and
  small images written from memory with one system call (1,058 against 856 items/s); image GETs
  on one keep-alive `http.client` connection per fetch thread instead of urllib3's pool
  (`tlsync/http_lean.py`: 1,346 against 1,054 items/s, 0.76 against 0.97 ms of CPU per item);
  durability rounds made with one `syncfs` instead of an fsync per file and folder (1,426
  against 1,220 items/s; the 200-photo rounds above were unchanged by it, with the writer on the
  same disk). What is left per item (tmpfs, 20,000 items): about 0.09 ms on the main thread
  (export rows, splits, manifest) and 0.55 ms on the fetch threads (download ~0.16 ms, storing
  ~0.14 ms, measured alone; the rest is the GIL passing between 64 threads). The fake server
  adds about 0.35 ms on the same 2 cores; `benchmarks/loopback_ceiling.py` measures what a bare
  client gets from it. On this machine's root disk, creating a file also costs the kernel
  0.02-0.8 ms (see the session 11 item below for why); the table's last column shows the cost
  where the store was;
- the big slice uses more than one core (session 10): one process's fetch threads share one GIL,
  and at about 0.5 ms of CPU per image one process cannot pass ~2,000 images a second. After
  1,000 images a pull hands its plain image GETs to fetch worker processes (`tlsync/fetch_procs.py`;
  two on this 2-core machine), which place images in the store and answer; the pull's process
  makes them durable and records them. On 20,000 items into tmpfs, alternating with
  `TLSYNC_FETCH_PROCESSES=0`: 1,962 and 2,032 against 1,675 and 1,664 items/s. The pull's CPU per
  item is the same either way (0.58-0.61 ms, workers included): the gain is the second core, which
  the fake server also needs (0.30-0.45 ms per item), so on this machine the big slice is bound by
  the two processes' CPU together, and its rate moves with the machine's speed (1,399-1,959 items/s
  for the same 100,000-item pull into tmpfs within the hour);
- the big slice's CPU per item went down again (session 11). Measured on 20,000 items into tmpfs in
  3 alternating rounds against the session's starting code, with the same fake server: the
  store's write path on plain strings instead of pathlib (`Store.write_image` alone, one thread:
  51-58 against 114-127 µs per image), and image answers parsed by llhttp (`httptools`) on a
  plain socket instead of `http.client` (`tlsync/http_wire.py`; one GET's client CPU measured
  alone: 36-38 against 101-110 µs). Both together: 1,837 against 1,652 items/s (medians), 0.62
  against 0.76 ms of CPU per item. With `TLSYNC_FETCH_PROCESSES=0` (one process) the same pull ran
  at 1,841 and 2,029 items/s, against 2,429 and 2,886 with its two workers;
- the fake server's own CPU per item went down from 0.30-0.46 ms (session 10) to 0.19-0.29 ms. It
  stands in for a remote API and CDN, whose CPU is not spent on the pull's machine, but here it
  shares the 2 cores: it drew each generated PNG with PIL as it was requested (about 0.1 ms); it
  now draws them with zlib (the same pixels) when the items are added, encodes its export pages
  with orjson, and formats its `Date` header once a second;
- this machine's root disk is ext4 without a journal. There, a new inode passes over every inode
  freed in the last 1-6 minutes (`recently_deleted` in the kernel's fs/ext4/ialloc.c, which only
  journal-less file systems run), one by one: creating an empty file cost 0.2-0.7 ms of kernel
  CPU within minutes of deleting many files, and 22-27 µs otherwise (5,000 files, measured
  alone). A pull creates a file per image, so the big slice now runs before the rounds (which
  delete a store each) and its files, and those of the creation-cost measurement, are removed
  only when the benchmark ends;
- the big slice's idle cores (session 12). Items leave the fetcher in the source's order, and at
  most 4 fetches per thread (256) could be pending: one slow fetch at the head stopped new ones
  from starting, and the 2 cores sat idle 6-10% of a 30,000-item pull into tmpfs. With 16 per
  thread (`WINDOW_PER_THREAD` in `tlsync/fetcher.py`), 4 alternating rounds: 3,056 against 2,589
  items/s (8 per thread: 2,837; 32: 2,910; 64: 2,881), 0.42 against 0.47 ms of CPU per item, the
  same peak RSS (148-149 MB), idle 2-5%. Also this session: `redact` runs its case-blind query
  pattern only on text holding an `=` (3.3 µs a call, two calls per item), and the fake server
  sends each answer's headers and body in one write (its CPU per item 0.16-0.18 against
  0.19-0.20 ms). All of it against the session's starting code, with the new fake server in both
  arms, 30,000 items into tmpfs, 4 alternating rounds: 3,350 against 2,962 items/s;
- memory: the peak RSS in the table is the pull's own (`VmHWM`, read while it runs), plus each
  fetch worker's own peak since they exist (165-167 MB in all, against 98-101 MB for the pull
  alone before workers). It used to be
  the rusage's `ru_maxrss`, which Linux carries across `execve`: a pull started by this benchmark,
  whose fake server holds 100,000 items, was charged the benchmark's own size, so the later runs
  of a session read 352-371 MB. That is where the "malloc arenas" story of the session before came
  from; measured on the pull alone, 100,000 items into tmpfs peak at 98 MB with glibc's arenas
  capped at 4 or not, and the cap is gone again. At most 4,096 images wait to be made durable, so
  a slow disk cannot grow that backlog."""


def baseline(nucleus: FakeNucleus, out: Path) -> float:
    """The official client's pattern: the whole export in one request, then images one by one."""
    start = time.perf_counter()
    rows = requests.get(f"{nucleus.endpoint}/slice/{SLICE}/exportForTraining", json={},
                        auth=(nucleus.api_key, ""), timeout=120).json()["exportedRows"]
    for row in rows:
        response = requests.get(row["item"]["processed_url"], timeout=120)
        response.raise_for_status()
        (out / f"{row['item']['reference_id']}.img").write_bytes(response.content)
    return time.perf_counter() - start


def tlsync_pull(nucleus: FakeNucleus, home: Path, python: str = sys.executable,
                extra: tuple[str, ...] = ()) -> dict[str, float | str]:
    """``tlsync pull`` in a subprocess: seconds, its peak RSS in MB, its CPU seconds (user + system, all
    threads: less swayed by other jobs' load than wall time), its last line, and phases."""
    env = _env(home, nucleus)
    nucleus.server.clear_log()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        child = subprocess.Popen([python, "-m", "tlsync", "pull", "--source", "nucleus", "--slice", SLICE,
                                  "--dataset", "bench", *extra], env=env, stdout=out, stderr=err, cwd=NEUTRAL)
        status, usage, peak = wait_measured(child.pid)  # reaped here, so the rusage is this child's alone
        end = time.monotonic()
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status):
            sys.exit(f"tlsync pull failed: {err.read().decode().strip()}")
        line = out.read().decode().strip().splitlines()[-1]
    log = nucleus.server.requests()
    images = [r.at for r in log if r.path.startswith("/images/")]
    api = [r.at for r in log if not r.path.startswith("/images/")]
    phases = {}
    if api:
        first_image = min(images) if images else end
        last_image = max(images) + nucleus.server.latency if images else first_image
        phases = {"startup": min(api) - start, "export": first_image - min(api),
                  "images": last_image - first_image, "publish": end - last_image}
    return {"seconds": end - start, "rss": peak, "cpu": usage.ru_utime + usage.ru_stime,
            "user": usage.ru_utime, "sys": usage.ru_stime,
            "line": line, "requests": len(images), **phases}


def _env(home: Path, nucleus: FakeNucleus) -> dict[str, str]:
    """The child's environment: with bytecode caching on, as an installed tlsync has it
    (``PYTHONDONTWRITEBYTECODE`` in a CI shell would recompile tlsync on every start)."""
    env = {**os.environ, "TLSYNC_HOME": str(home), "TLSYNC_LOAD_PLUGINS": "",
           "NUCLEUS_API_KEY": nucleus.api_key, "NUCLEUS_ENDPOINT": nucleus.endpoint}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def settle() -> None:
    """Write back what the previous run left dirty (the baseline's 57 MB, the last pull's store).

    A pull fsyncs every image, and on ext4 (data=ordered) a journal commit also flushes other
    files' dirty data: a pull started right after the baseline paid for writing the baseline's
    files out (0.17 s median, 6 paired runs on the loaded 2-core machine: 1.87 s against 1.70 s).
    """
    os.sync()


def warm_up(python: str, nucleus: FakeNucleus, home: Path) -> None:
    """One start-up before timing, so bytecode is cached and files are in the page cache."""
    subprocess.run([python, "-m", "tlsync", "sources"], env=_env(home, nucleus), capture_output=True, check=True,
                   cwd=NEUTRAL)


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]


def spread(values: list[float]) -> str:
    return (f"p50 {statistics.median(values):.2f} s, p90 {p90(values):.2f} s "
            f"(min {min(values):.2f}, max {max(values):.2f})")


class ConcurrentWriter:
    """Another job writing to the same disk at ``rate`` MB/s for as long as the ``with`` lasts."""

    def __init__(self, folder: Path, rate: float):
        self.folder, self.rate = folder, rate
        self.child: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> ConcurrentWriter:
        if self.rate > 0:
            self.child = subprocess.Popen([sys.executable, "-c", WRITER, str(self.folder / "writer.bin"),
                                           str(self.rate)])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.child is not None:
            self.child.kill()
            self.child.wait()


def speed(args: argparse.Namespace, photos: list[bytes]) -> tuple[list[str], dict[str, float]]:
    """Alternating rounds of baseline and cold tlsync pulls, then one unchanged re-pull."""
    bases: list[float] = []
    pulls: list[dict[str, float | str]] = []
    befores: list[dict[str, float | str]] = []
    with FakeNucleus(latency=args.latency, photos=photos) as nucleus, \
            tempfile.TemporaryDirectory(dir=args.dir) as tmp, ConcurrentWriter(Path(tmp), args.writer_mb_s):
        nucleus.add_dataset("ds_bench", "bench")
        nucleus.add_slice(SLICE, "ds_bench", [])
        nucleus.add_items("ds_bench", args.items, slice_id=SLICE)
        warm_up(args.python, nucleus, Path(tmp) / "warm")
        if args.before:
            warm_up(args.before, nucleus, Path(tmp) / "warm-before")
        for n in range(args.rounds):
            folder = Path(tmp) / f"baseline{n}"
            folder.mkdir()
            bases.append(baseline(nucleus, folder))
            # Every other round pulls ``--before`` first: neither checkout always follows the baseline.
            order: list[tuple[list[dict[str, float | str]], str, str]] = [(pulls, f"home{n}", args.python)]
            if args.before:
                order.insert(n % 2, (befores, f"before{n}", args.before))
            for results, home, python in order:
                settle()
                results.append(tlsync_pull(nucleus, Path(tmp) / home, python))
            print(f"round {n + 1}: baseline {bases[-1]:.2f} s, tlsync {pulls[-1]['seconds']:.2f} s "
                  f"({pulls[-1]['line']})" + (f", before {befores[-1]['seconds']:.2f} s" if befores else ""),
                  flush=True)
        settle()
        again = tlsync_pull(nucleus, Path(tmp) / "home0", args.python)
        print(f"re-pull: {again['seconds']:.2f} s, {again['requests']} image requests ({again['line']})")
        sweep = {}
        for c in args.sweep:
            times = []
            for n in range(args.rounds):
                settle()
                times.append(float(tlsync_pull(nucleus, Path(tmp) / f"sweep{c}-{n}", args.python,
                                               ("--concurrency", str(c)))["seconds"]))
            sweep[c] = times
            print(f"--concurrency {c}: {spread(times)}", flush=True)
    seconds = [float(p["seconds"]) for p in pulls]
    ratios = [b / s for b, s in zip(bases, seconds, strict=True)]
    phase = {k: statistics.median(float(p[k]) for p in pulls) for k in FIGURES}
    figures = {"ratio": statistics.median(bases) / statistics.median(seconds), "again": float(again["seconds"]),
               "p90_ratio": statistics.median(bases) / p90(seconds),
               "min_ratio": min(ratios), "max_ratio": max(ratios), **phase}
    rows = [
        f"| official-client pattern (export, then `requests.get` per image) | {spread(bases)} | {args.items} |",
        f"| `tlsync pull` (subprocess, start-up included) | {spread(seconds)} | {pulls[0]['requests']} |",
        f"| `tlsync pull` again, slice unchanged | {again['seconds']:.2f} s | {again['requests']} |",
    ]
    rows += [f"| `tlsync pull --concurrency {c}` | {spread(t)} | {args.items} |" for c, t in sweep.items()]
    if befores:
        before = [float(p["seconds"]) for p in befores]
        rows.append(f"| `tlsync pull` before this change (`--before`) | {spread(before)} | {befores[0]['requests']} |")
        figures["before_ratio"] = statistics.median(bases) / statistics.median(before)
        figures["before_p90_ratio"] = statistics.median(bases) / p90(before)
        figures.update({f"before_{k}": statistics.median(float(p[k]) for p in befores)
                        for k in FIGURES})
    return rows, figures


def memory(items: int, python: str, folder: Path | None = None,
           keep: ExitStack | None = None) -> dict[str, float | str]:
    """The big slice: tiny images, no latency, so that what is measured is tlsync's own cost per item.

    The store is removed when ``keep`` closes (at once without one): see ``file_creation_cost``.
    """
    with FakeNucleus(image_size=(8, 8)) as nucleus, ExitStack() as own:
        tmp = (keep or own).enter_context(tempfile.TemporaryDirectory(dir=folder))
        nucleus.add_dataset("ds_bench", "bench")
        nucleus.add_slice(SLICE, "ds_bench", [])
        nucleus.add_items("ds_bench", items, slice_id=SLICE)
        served = resource.getrusage(resource.RUSAGE_SELF)
        run = tlsync_pull(nucleus, Path(tmp) / "home", python)
        after = resource.getrusage(resource.RUSAGE_SELF)  # the fake server's CPU, on the same cores
        run["server"] = after.ru_utime + after.ru_stime - served.ru_utime - served.ru_stime
        print(f"{items:,} items in {folder}: {run['seconds']:.1f} s, peak RSS {run['rss']:.0f} MB, "
              f"CPU user {run['user']:.1f} s + system {run['sys']:.1f} s, server {run['server']:.1f} s ({run['line']})")
    return run


def file_creation_cost(folder: Path, keep: ExitStack, files: int = 2000) -> float:
    """Kernel CPU seconds one empty-file creation costs on ``folder``'s filesystem.

    A store keeps one file per image, so this is a floor under any pull's cost per item that
    no change to tlsync can lower. The files are removed only when the ``with`` block ends (after
    the benchmark): on a journal-less ext4, as this machine's root disk is, the allocator passes
    over every inode freed in the last 1-6 minutes (``recently_deleted`` in ext4's ialloc.c), so
    files deleted at once would make the pull's own file creations cost more.
    """
    tmp = keep.enter_context(tempfile.TemporaryDirectory(dir=folder))
    before = resource.getrusage(resource.RUSAGE_THREAD)
    for n in range(files):
        os.close(os.open(f"{tmp}/{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    after = resource.getrusage(resource.RUSAGE_THREAD)
    return (after.ru_stime - before.ru_stime) / files


def big_slice(args: argparse.Namespace, keep: ExitStack) -> list[str]:
    """The 100,000-item pull on the benchmark's disk and, where there is one, on tmpfs (or ``--big-dirs``).

    Its stores and files are removed when ``keep`` closes, at the benchmark's end (``file_creation_cost``).
    """
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    lines = []
    places = [Path(p) for p in args.big_dirs.split(",")] if args.big_dirs else [args.dir, Path("/dev/shm")]
    for where in [p for p in places if p.is_dir()]:
        create = file_creation_cost(where, keep)
        run = memory(args.big, args.python, where, keep)
        seconds, rss = float(run["seconds"]), float(run["rss"])
        rate, cpu = args.big / seconds, (float(run["user"]) + float(run["sys"])) / args.big
        lines.append(f"| {where} | {seconds:.0f} s | **{rate:,.0f}** ({met(rate >= ITEMS_PER_S_TARGET)}) | "
                     f"{rss:.0f} MB ({met(rss < 300)}) | {cpu * 1e3:.2f} ms (user {float(run['user']):.0f} s, "
                     f"system {float(run['sys']):.0f} s) | {float(run['server']) / args.big * 1e3:.2f} ms | "
                     f"{create * 1e3:.3f} ms |")
    return ["", f"Big slice: {args.big:,} items (8x8 images, no latency, the fake server in the benchmark's process, "
                f"sharing the 2 cores). Targets: >= {ITEMS_PER_S_TARGET:,} items/s, peak RSS < 300 MB (the pull's "
                f"process and its fetch worker processes: the sum of each one's peak). The pull's CPU includes its "
                f"workers'. The last "
                f"column is what creating one empty file costs the kernel on that filesystem (one per image, "
                f"measured before the pull): a floor under the pull's CPU per item that tlsync cannot lower.", "",
            "| store on | wall | items/s | peak RSS | pull CPU per item | fake server CPU per item "
            "| kernel CPU per file created |",
            "|---|---|---|---|---|---|---|", *lines]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--writer-mb-s", type=float, default=40.0,
                        help="A concurrent writer on the same disk, MB/s (0: none).")
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parents[2],
                        help="Where the stores go (a real disk, not tmpfs: default beside the checkout).")
    parser.add_argument("--photos", type=Path, default=PHOTOS, help="Folder of real photos to serve.")
    parser.add_argument("--sweep", default="", help="Other --concurrency values to time, e.g. 16,32,64.")
    parser.add_argument("--python", default=sys.executable, help="Interpreter whose tlsync is measured.")
    parser.add_argument("--before", help="Another checkout's interpreter, pulled in the same rounds (before/after).")
    parser.add_argument("--big", type=int, default=100_000, help="Items for the memory run (0: skip it).")
    parser.add_argument("--big-dirs", default="", help="Folders for the big slice's stores, comma-separated "
                        "(default: --dir and /dev/shm).")
    parser.add_argument("--no-report", action="store_true", help="Print only; leave BENCHMARKS.md alone.")
    args = parser.parse_args()
    args.sweep = [int(c) for c in args.sweep.split(",") if c]
    files = sorted(p for p in args.photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:args.items]
    photos = [p.read_bytes() for p in files]
    mb = sum(map(len, photos)) / 1e6
    print(f"{len(photos)} photos from {args.photos} ({mb:.0f} MB), {args.latency * 1000:.0f} ms per request")

    load_before = os.getloadavg()[0]
    # The big slice first, its stores kept to the end: on a journal-less ext4 the files deleted in
    # the last minutes make every file created meanwhile cost more (``file_creation_cost``).
    keep = ExitStack()
    with keep:
        big = big_slice(args, keep) if args.big else []
        rows, f = speed(args, photos)
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    body = [f"{args.items} real photos ({args.photos.parent.name}/{args.photos.name}: {mb:.0f} MB of JPEG), "
            f"{args.latency * 1000:.0f} ms per request, fake Nucleus on 127.0.0.1, {args.rounds} alternating "
            f"rounds (p50, p90, min, max), default `--concurrency`, stores on {args.dir} while another process "
            f"writes {args.writer_mb_s:g} MB/s to the same disk (fsync every 32 MB); load average "
            f"{load_before:.1f} at the start.", "",
            "| run | wall time | image requests |", "|---|---|---|", *rows, "",
            f"tlsync is **{f['ratio']:.1f}x** faster than the official-client pattern (ratio of medians; "
            f"per round {f['min_ratio']:.1f}x-{f['max_ratio']:.1f}x); at its p90 **{f['p90_ratio']:.1f}x** "
            f"(target p90 >= {TARGET:g}x: {met(f['p90_ratio'] >= TARGET)}); "
            f"the unchanged re-pull takes {f['again']:.2f} s (target < 2 s: {met(f['again'] < 2)}). "
            f"Where a cold pull's time goes (medians): start-up {f['startup']:.2f} s, export paging "
            f"{f['export']:.2f} s, images {f['images']:.2f} s, publishing {f['publish']:.2f} s; "
            f"the pull process used {f['cpu']:.2f} s of CPU (user + system). "
            f"Load average before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f}."]
    if "before_ratio" in f:
        body += ["", f"Cold-pull cost before this change (`--before`, pulled in the same rounds): "
                     f"**{f['before_ratio']:.1f}x** at the median, {f['before_p90_ratio']:.1f}x at its p90; "
                     f"start-up {f['before_startup']:.2f} s, export paging "
                     f"{f['before_export']:.2f} s, images {f['before_images']:.2f} s, publishing "
                     f"{f['before_publish']:.2f} s; {f['before_cpu']:.2f} s of CPU.", "", FINDINGS]
    body += big
    print("\n".join(body))
    if not args.no_report:
        update_section("nucleus", "Nucleus pull", "\n".join(body), "python benchmarks/nucleus_pull_bench.py")


if __name__ == "__main__":
    main()
