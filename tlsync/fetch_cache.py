"""``fetch-cache.sqlite``: source cache key -> the image already in the store.

It is a cache: losing it costs re-downloads, never data. So a corrupt or foreign file
(a half-copied home folder, a disk error) is set aside and rebuilt with a warning rather
than failing every pull, while a full disk or a read-only store is still an error.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .sink import StoreWriteError

# SQLite's primary result codes (the low byte of an extended code).
CORRUPT = {11, 26}  # SQLITE_CORRUPT, SQLITE_NOTADB
WRITE_FAILED = {8, 10, 13, 14}  # READONLY, IOERR, FULL, CANTOPEN


def _code(e: sqlite3.Error) -> int:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF
    text = str(e).lower()
    if "malformed" in text or "not a database" in text:
        return 11
    return 13 if "full" in text else 0


class FetchCache:
    """Two connections: lookups (the pull's main thread, one per item) never queue behind
    the fetch threads' inserts and commits, which WAL lets run side by side."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()  # the writer's
        self._read_lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        # Bumped by each rebuild: a thread that met the corrupt file after another thread
        # already set it aside retries on the new one instead of setting that aside too.
        self._generation = 0

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # Survives a killed process (WAL); only a power cut can lose the last entries, and
            # a lost cache entry costs one re-download. FULL would fsync once per image.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("CREATE TABLE IF NOT EXISTS fetched "
                       "(key TEXT PRIMARY KEY, path TEXT, sha256 TEXT, width INT, height INT)")
            db.execute("SELECT 1 FROM fetched LIMIT 1").fetchall()
        except BaseException:
            # A corrupt file fails here: closed now, not by the garbage collector, which would
            # remove fetch-cache.sqlite-wal by name after the rebuilt cache has taken that name.
            db.close()
            raise
        return db

    def _rebuild(self, e: sqlite3.Error) -> None:
        from .console import info

        for db in (self._db, self._reader):
            if db is not None:
                db.close()
        self._db = self._reader = None
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        info(f"warning: {self.path} was unreadable ({e}); moved it to {aside.name} and started an empty "
             f"fetch cache (images already in the store are re-downloaded once)")

    def _run(self, sql: str, args: Any, commit: bool = False, many: bool = False, rows: bool = False) -> Any:
        for attempt in (0, 1):
            generation = self._generation
            try:
                if commit:
                    with self._lock:
                        if self._db is None:
                            self._db = self._open()
                        if rows:
                            self._db.executemany(sql, args)
                        else:
                            self._db.execute(sql, args)
                        self._db.commit()
                        return None
                with self._read_lock:
                    if self._reader is None:
                        self._reader = self._open()
                    cursor = self._reader.execute(sql, args)
                    return cursor.fetchall() if many else cursor.fetchone()
            except sqlite3.DatabaseError as e:
                if _code(e) in CORRUPT and attempt == 0:
                    with self._lock, self._read_lock:
                        if generation == self._generation:
                            self._rebuild(e)
                            self._generation += 1
                    continue
                if _code(e) in WRITE_FAILED or isinstance(e, sqlite3.OperationalError):
                    raise StoreWriteError(f"cannot write the fetch cache {self.path}: {e}; nothing was published. "
                                          f"Free space or fix permissions and pull again") from None
                raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Close both connections (the next call reopens them). A pull closes its cache when it
        ends: a connection left for the garbage collector checkpoints and deletes
        ``fetch-cache.sqlite-wal`` *by name* when it is finally closed, and if the cache was rebuilt
        in between, that name belongs to the new cache, whose newest entries it would take along."""
        with self._lock, self._read_lock:
            for db in (self._db, self._reader):
                if db is not None:
                    db.close()
            self._db = self._reader = None

    def warm(self) -> None:
        """Open the lookup connection now (a corrupt file is set aside here, as on any call)."""
        self._run("SELECT 1 FROM fetched LIMIT 1", ())

    def get(self, key: str) -> tuple[str, str, int, int] | None:
        return self._run("SELECT path, sha256, width, height FROM fetched WHERE key=?", (key,))

    def get_many(self, keys: list[str]) -> dict[str, tuple[str, str, int, int]]:
        """Many lookups in one statement: each call into SQLite hands the GIL to the fetch
        threads, and winning it back costs up to a switch interval (5 ms) while they run."""
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        rows = self._run(f"SELECT key, path, sha256, width, height FROM fetched WHERE key IN ({marks})",
                         tuple(keys), many=True)
        return {row[0]: tuple(row[1:]) for row in rows}

    def put_many(self, rows: list[tuple[str, str, str, int, int]]) -> None:
        """Many ``put``s in one transaction (``durable.DurableBatch`` records a flushed batch so)."""
        self._run("INSERT OR REPLACE INTO fetched VALUES (?,?,?,?,?)", rows, commit=True, rows=True)

    def put(self, key: str, path: str, sha256: str, width: int, height: int) -> None:
        self._run("INSERT OR REPLACE INTO fetched VALUES (?,?,?,?,?)", (key, path, sha256, width, height), commit=True)
