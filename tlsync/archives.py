"""Safe zip extraction for archives a user (or a platform's CDN) hands us.

An export zip is untrusted input: an entry named ``../../.bashrc`` or ``/etc/cron.d/x``, a
symlink that later writes land through, or a few kilobytes that inflate to terabytes
must all be refused *before* anything is written. Every entry is checked first; the
archive is then unpacked into a temp folder beside the destination and renamed into place,
so a refused or interrupted extraction leaves nothing behind under a real name.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from .errors import TlsyncError
from .files import NotRegularFile, check_regular, open_regular

MAX_SIZE_ENV = "TLSYNC_MAX_EXTRACT_SIZE"
DEFAULT_MAX_TOTAL = 20 * 10**9
MAX_ENTRIES_ENV = "TLSYNC_MAX_EXTRACT_ENTRIES"
# COCO 2017's train zip has 118k entries; a YOLO export two per image. Far above both, far
# below the millions of empty entries that exhaust inodes or the central-directory parse.
DEFAULT_MAX_ENTRIES = 500_000
# DEFLATE tops out near 1032:1; real exports (JPEGs, JSON, label text) stay far below 100:1.
DEFAULT_MAX_RATIO = 200.0
# Below this size a high ratio is harmless (an empty label file "compresses" 0:2).
RATIO_FLOOR = 1 << 20

_UNITS = {"": 1, "B": 1, "K": 10**3, "KB": 10**3, "M": 10**6, "MB": 10**6, "G": 10**9, "GB": 10**9,
          "T": 10**12, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


class UnsafeArchive(TlsyncError):
    """An archive refused before extraction (or whose extraction failed and was rolled back)."""


def parse_size(text: str | int, what: str = MAX_SIZE_ENV) -> int:
    """``"20GB"``, ``"500MiB"``, ``"1.5G"`` or a plain byte count -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", str(text))
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS:
        raise TlsyncError(f"{what} {text!r}: give a size such as 20GB, 500MB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[unit])


def default_max_total() -> int:
    """The extraction size bound: ``$TLSYNC_MAX_EXTRACT_SIZE`` if set, else 20 GB."""
    env = os.environ.get(MAX_SIZE_ENV)
    return parse_size(env) if env else DEFAULT_MAX_TOTAL


def default_max_entries() -> int:
    """The entry-count bound: ``$TLSYNC_MAX_EXTRACT_ENTRIES`` if set, else 500,000."""
    env = os.environ.get(MAX_ENTRIES_ENV)
    if not env:
        return DEFAULT_MAX_ENTRIES
    if not env.strip().isdigit() or int(env) < 1:
        raise TlsyncError(f"{MAX_ENTRIES_ENV}={env!r}: give a positive number of entries")
    return int(env)


def declared_entries(archive: Path) -> int | None:
    """The entry count in the zip's end-of-central-directory record, read before parsing it.

    ``zipfile`` builds an object per entry as it opens an archive; reading the count first
    refuses a many-millions-entry archive in microseconds rather than after gigabytes.
    """
    try:
        with open_regular(archive) as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - (1 << 16) - 22))
            tail = f.read()
    except OSError:
        return None
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or end + 22 > len(tail):
        return None
    count = int.from_bytes(tail[end + 10:end + 12], "little")
    if count == 0xFFFF:  # ZIP64: the real count is in the ZIP64 record just before
        z64 = tail.rfind(b"PK\x06\x06", 0, end)
        if z64 >= 0 and z64 + 40 <= len(tail):
            count = int.from_bytes(tail[z64 + 32:z64 + 40], "little")
    return count


def _check_count(archive: Path, count: int | None, max_entries: int) -> None:
    if count is not None and count > max_entries:
        raise UnsafeArchive(f"{archive}: holds {count:,} entries, more than the {max_entries:,} limit; refused "
                            f"(nothing was extracted; raise it with --max-extract-entries or {MAX_ENTRIES_ENV})")


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _entry_path(archive: Path, info: zipfile.ZipInfo) -> PurePosixPath:
    """The entry's relative path, or a refusal naming the entry and what is wrong with it."""
    name = info.filename.replace("\\", "/")
    where = f"{archive}: entry {info.filename!r}"
    if not name or "\x00" in name:
        raise UnsafeArchive(f"{where}: empty or NUL in its name; refused")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchive(f"{where} has an absolute path; refused (nothing was extracted)")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise UnsafeArchive(f"{where} climbs out of the folder with '..'; refused (nothing was extracted)")
    kind = stat.S_IFMT(info.external_attr >> 16)
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsafeArchive(f"{where} is a symbolic link; refused (nothing was extracted)")
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchive(f"{where} is a special file (mode {kind:o}); refused (nothing was extracted)")
    if info.flag_bits & 0x1:
        raise UnsafeArchive(f"{where} is encrypted; tlsync cannot read password-protected archives")
    return path


def check_zip(archive: Path, max_total: int | None = None, max_ratio: float = DEFAULT_MAX_RATIO,
              max_entries: int | None = None) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every entry with its safe relative path; raises ``UnsafeArchive`` on the first problem."""
    limit = default_max_total() if max_total is None else max_total
    max_entries = default_max_entries() if max_entries is None else max_entries
    try:
        check_regular(archive)  # a FIFO named x.zip would block the first open below forever
    except NotRegularFile as e:
        raise UnsafeArchive(str(e)) from None
    except OSError as e:
        raise UnsafeArchive(f"{archive}: cannot read it ({e.strerror or e})") from None
    _check_count(archive, declared_entries(archive), max_entries)
    try:
        with open_regular(archive) as f, zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise UnsafeArchive(f"{archive}: not a readable zip archive ({e})") from None
    _check_count(archive, len(infos), max_entries)  # the record can lie; the parsed list cannot
    entries, seen, total = [], set(), 0
    for info in infos:
        path = _entry_path(archive, info)
        if path in seen:
            raise UnsafeArchive(f"{archive}: entry {info.filename!r} appears twice; refused")
        seen.add(path)
        entries.append((info, path))
        if info.is_dir():
            continue
        total += info.file_size
        if info.file_size > RATIO_FLOOR and info.file_size > max_ratio * max(info.compress_size, 1):
            raise UnsafeArchive(
                f"{archive}: entry {info.filename!r} inflates {info.file_size / max(info.compress_size, 1):,.0f}:1 "
                f"(limit {max_ratio:g}:1), which looks like a zip bomb; refused")
    if total > limit:
        raise UnsafeArchive(f"{archive}: would unpack to {human_size(total)}, more than the {human_size(limit)} "
                            f"limit; refused (raise it with {MAX_SIZE_ENV} if this is expected)")
    packed = max(archive.stat().st_size, 1)
    if total > RATIO_FLOOR and total > max_ratio * packed:
        raise UnsafeArchive(f"{archive}: {human_size(packed)} would unpack to {human_size(total)} "
                            f"({total / packed:,.0f}:1), which looks like a zip bomb; refused")
    return entries


def extract_zip(archive: Path, dest: Path, max_total: int | None = None, max_ratio: float = DEFAULT_MAX_RATIO,
                replace: bool = False, progress: Callable[[int, int], None] | None = None,
                max_entries: int | None = None) -> Path:
    """Unpack ``archive`` into the folder ``dest`` (which must not exist unless ``replace``).

    ``progress(done_bytes, total_bytes)`` is called as bytes are written. On any failure
    the temp folder is removed and ``dest`` is as it was.
    """
    entries = check_zip(archive, max_total, max_ratio, max_entries)
    if dest.exists() and not replace:
        raise UnsafeArchive(f"{dest}: already exists; not extracting {archive} over it")
    total = sum(info.file_size for info, _ in entries if not info.is_dir())
    dest.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(dest.parent).free
    if total > free:
        raise UnsafeArchive(f"{archive}: needs {human_size(total)} to unpack but {dest.parent} has "
                            f"{human_size(free)} free")
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.extract-"))
    try:
        _unpack(archive, entries, tmp, total, progress)
        _move_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _unpack(archive: Path, entries: list[tuple[zipfile.ZipInfo, PurePosixPath]], into: Path, total: int,
            progress: Callable[[int, int], None] | None) -> None:
    done = 0
    try:
        with open_regular(archive) as f, zipfile.ZipFile(f) as zf:
            for info, rel in entries:
                target = into.joinpath(*rel.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                written = 0
                with zf.open(info) as src, open(target, "xb") as out:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        written += len(chunk)
                        if written > info.file_size:  # the header lied about the size
                            raise UnsafeArchive(f"{archive}: entry {info.filename!r} is larger than it declares; "
                                                "refused")
                        out.write(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, total)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, ValueError,
            NotRegularFile) as e:
        raise UnsafeArchive(f"{archive}: extraction failed, nothing kept ({type(e).__name__}: {e})") from None


def _move_into_place(tmp: Path, dest: Path) -> None:
    """Rename ``tmp`` to ``dest``; an existing ``dest`` is swapped out, then deleted."""
    if not dest.exists():
        os.replace(tmp, dest)
        return
    old = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.old-"))
    os.replace(dest, old / "data")
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def clean_leftovers(dest: Path) -> None:
    """Remove temp folders a killed extraction into ``dest`` left beside it.

    Call it while holding the caller's lock for ``dest``: another process's live
    extraction looks the same as a dead one's.
    """
    if not dest.parent.exists():
        return
    for path in dest.parent.glob(f".{dest.name}.*"):
        if path.name.startswith((f".{dest.name}.extract-", f".{dest.name}.old-")):
            shutil.rmtree(path, ignore_errors=True)
