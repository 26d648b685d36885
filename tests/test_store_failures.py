"""The store's own failures: a full or read-only disk, a killed pull, a broken file in the store.

None of these is the input's fault, so none may become a skipped item, a partial version,
or a store that every later command trips over.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tlsync.errors import TlsyncError
from tlsync.sources import Source

N = 10


def noise_png(path: Path, size: int, seed: int) -> None:
    """A PNG that does not compress: ``size`` x ``size`` random pixels (~3 * size**2 bytes)."""
    from PIL import Image

    Image.frombytes("RGB", (size, size), os.urandom(3 * size * size) if seed >= 0 else b"").save(path)


def coco_folder(root: Path, n: int = N, size: int = 32) -> Path:
    root.mkdir(parents=True)
    images, annotations = [], []
    for i in range(n):
        noise_png(root / f"img{i}.png", size, i)
        images.append({"id": i + 1, "file_name": f"img{i}.png", "width": size, "height": size})
        annotations.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [1, 1, 8, 8]})
    (root / "annotations.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cell"}]}))
    return root


def pull(run_cli, folder: Path, *extra: str):
    return run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "cells", *extra)


def leftovers(home: Path) -> list[Path]:
    folder = home / "datasets" / "cells"
    return list(folder.glob(".staging-*")) if folder.exists() else []


# -- a full disk ----------------------------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """TLSYNC_HOME on a 1 MB tmpfs (root only); yields a function that grows it."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        pytest.skip("cannot mount a tmpfs here (needs root); the injected-ENOSPC test covers this")
    monkeypatch.setenv("TLSYNC_HOME", str(mount / "home"))
    try:
        yield lambda size: subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_pull_and_publishes_nothing(tmp_path: Path, run_cli, tiny_disk):
    export = coco_folder(tmp_path / "export", size=256)  # ~200 KB per image: 10 do not fit in 1 MB
    home = Path(os.environ["TLSYNC_HOME"])
    result = pull(run_cli, export, "--on-error", "skip")
    assert result.exit_code == 1
    # The disk fills under an image or under the fetch cache's sqlite file, whichever writes first.
    assert ("cannot write to the store" in result.stderr and "No space left on device (ENOSPC)" in result.stderr) \
        or ("cannot write the fetch cache" in result.stderr and "disk is full" in result.stderr), result.stderr
    assert "nothing was published" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (home / "datasets" / "cells" / "1").exists() and not leftovers(home)

    tiny_disk("20m")  # the user frees space
    again = pull(run_cli, export, "--on-error", "skip")
    assert again.exit_code == 0, again.stderr
    assert "new version cells@1" in again.stdout and "skipped" not in again.stdout
    cached = int(again.stdout.split(" from cache")[0].rsplit(" ", 1)[-1])
    assert cached >= 1, f"images stored before the disk filled come from the fetch cache: {result.stderr}"


def _failing_writes(state: dict):
    """``os.write`` whose calls fail after ``ok`` of them, as a filling disk does."""
    real = os.write

    def write(fd: int, data) -> int:
        state["writes"] += 1
        if state["writes"] > state["ok"]:
            raise OSError(state["errno"], os.strerror(state["errno"]))
        return real(fd, data)

    return write


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT])
def test_an_error_writing_an_image_is_fatal_under_skip(tmp_path: Path, run_cli, store, monkeypatch, code):
    import tlsync.sink

    export = coco_folder(tmp_path / "export")
    state = {"writes": 0, "ok": 3, "errno": code}
    monkeypatch.setattr(tlsync.sink, "write_fd", _failing_writes(state))
    result = pull(run_cli, export, "--on-error", "skip", "--concurrency", "1")
    assert result.exit_code == 1
    assert f"cannot write to the store at {store.home}: {os.strerror(code)} ({errno.errorcode[code]})" in result.stderr
    assert "cannot read image" not in result.stderr
    assert store.versions("cells") == [] and not leftovers(store.home)

    monkeypatch.setattr(tlsync.sink, "write_fd", os.write)
    again = pull(run_cli, export, "--on-error", "skip")
    assert again.exit_code == 0, again.stderr
    assert f"{N - 3} images fetched, 3 from cache" in again.stdout
    assert len(list(store.open("cells").items())) == N


def test_a_plugin_that_swallows_the_write_error_cannot_hide_it(tmp_path: Path, store, monkeypatch):
    """A source's fetch that turns every exception into 'cannot read' still stops the pull."""
    import tlsync.sink
    from tlsync.errors import SourceError
    from tlsync.plugins import get_source
    from tlsync.pull import pull as run_pull
    from tlsync.sink import StoreWriteError

    export = coco_folder(tmp_path / "export", n=3)
    coco = get_source("coco")
    original = type(coco).fetch

    def careless(self, item, out):
        try:
            original(self, item, out)
        except Exception as e:
            raise SourceError(f"cannot read image: {e}") from None

    monkeypatch.setattr(type(coco), "fetch", careless)
    state = {"writes": 0, "ok": 0, "errno": errno.ENOSPC}
    monkeypatch.setattr(tlsync.sink, "write_fd", _failing_writes(state))
    with pytest.raises(StoreWriteError, match="No space left on device"):
        run_pull(store, coco, {"path": export}, "cells", on_error="skip")
    assert store.versions("cells") == []


def test_a_pull_that_skipped_for_io_reasons_is_not_frozen_by_the_quick_repull(tmp_path: Path, run_cli, store,
                                                                           monkeypatch):
    monkeypatch.setattr("tlsync.sources.RACY_SECONDS", 0.0)
    from tlsync.errors import SourceError

    export = coco_folder(tmp_path / "export")
    original = Source.fetch

    def flaky(self, item, out):
        if item.image.uri.endswith("img4.png"):
            raise SourceError(f"item '{item.id}': cannot read image {item.image.uri}: Input/output error")
        original(self, item, out)

    monkeypatch.setattr(Source, "fetch", flaky)
    first = pull(run_cli, export, "--on-error", "skip")
    assert first.exit_code == 0 and "skipped 1:" in first.stdout
    assert json.loads((store.datasets_dir / "cells" / "last-pull.json").read_text())["inputs"] is None

    monkeypatch.setattr(Source, "fetch", original)
    second = pull(run_cli, export, "--on-error", "skip")
    assert second.exit_code == 0, second.stderr
    assert "new version cells@2" in second.stdout and "skipped" not in second.stdout
    third = pull(run_cli, export, "--on-error", "skip")
    assert "not read again" in third.stdout and "unchanged, still cells@2" in third.stdout


# -- a killed pull, durable renames ---------------------------------------------------------------

def test_staging_folders_of_a_killed_pull_are_swept(tmp_path: Path, run_cli, store):
    export = coco_folder(tmp_path / "export", n=2)
    stale = store.datasets_dir / "cells" / ".staging-k1ll3d"
    stale.mkdir(parents=True)
    (stale / "items.jsonl").write_text('{"half": ')
    result = pull(run_cli, export)
    assert result.exit_code == 0, result.stderr
    assert not leftovers(store.home)
    kept = sorted(p.name for p in (store.datasets_dir / "cells").iterdir() if not p.name.startswith("."))
    assert kept == ["1", "last-pull.json"]


@pytest.mark.parametrize("syncfs", [True, False], ids=["syncfs", "file-by-file"])
def test_a_version_is_fsynced_before_and_after_its_rename(tmp_path: Path, run_cli, store, monkeypatch, syncfs):
    from tlsync import durable

    export = coco_folder(tmp_path / "export", n=2)
    events: list[tuple[str, str]] = []
    real_fsync, real_replace, real_syncfs = os.fsync, os.replace, durable._SYNCFS

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def whole_filesystem(fd):
        events.append(("syncfs", os.readlink(f"/proc/self/fd/{fd}")))
        if real_syncfs is None:  # no syncfs(2) here (not Linux 5.8+): the whole-machine sync stands in
            os.sync()
            return 0
        return real_syncfs(fd)

    def replace(src, dst, **kw):
        events.append(("rename", str(dst)))
        return real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(durable, "_SYNCFS", whole_filesystem if syncfs else None)
    assert pull(run_cli, export).exit_code == 0
    version = str(store.datasets_dir / "cells" / "1")
    at = events.index(("rename", version))
    before, after = {p for _, p in events[:at]}, {p for _, p in events[at:]}
    assert any(p.endswith("items.jsonl") for p in before) and any(p.endswith("dataset.json") for p in before)
    assert any(Path(p).name.startswith(".staging-") for p in before), "the staging folder itself, before the rename"
    # The image folders: fsynced one by one, or (two images landing in one round) by a syncfs.
    folder_synced = any(p.startswith(str(store.images_dir)) and len(Path(p).name) == 2 for p in before)
    assert folder_synced or (syncfs and any(kind == "syncfs" for kind, _ in events[:at]))
    assert str(store.datasets_dir / "cells") in after


# -- one broken file in the store -----------------------------------------------------------------

def test_datasets_list_names_a_broken_dataset_and_goes_on(tmp_path: Path, run_cli, store):
    export = coco_folder(tmp_path / "export", n=2)
    assert pull(run_cli, export).exit_code == 0
    assert run_cli("pull", "--source", "coco", "--path", export, "--dataset", "other").exit_code == 0
    (store.datasets_dir / "cells" / "1" / "dataset.json").write_text("")
    result = run_cli("datasets", "list")
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("cells") and "UNREADABLE" in line for line in lines)
    assert any(line.startswith("other") and "coco" in line for line in lines)
    assert "cells/1/dataset.json: not valid JSON" in result.stderr


def test_a_corrupt_fetch_cache_is_rebuilt_with_a_warning(tmp_path: Path, run_cli, store):
    export = coco_folder(tmp_path / "export", n=3)
    assert pull(run_cli, export).exit_code == 0
    cache = store.home / "fetch-cache.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{cache}{suffix}").unlink(missing_ok=True)
    cache.write_bytes(b"this is not an sqlite database, it was overwritten" * 100)
    result = pull(run_cli, export, "--reread")
    assert result.exit_code == 0, result.stderr
    assert "fetch-cache.sqlite was unreadable" in result.stderr and "started an empty fetch cache" in result.stderr
    assert "unchanged, still cells@1" in result.stdout
    assert list(store.home.glob("fetch-cache.sqlite.corrupt-*"))
    assert "3 from cache" in pull(run_cli, export, "--reread").stdout


# -- the dataset lock ---------------------------------------------------------------------------

def test_a_dataset_held_by_another_process_is_refused_and_freed_when_that_process_dies(store):
    """Two pulls of one dataset never write at once; a pull killed with -9 leaves no lock behind."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tlsync.store import Store\n"
         f"with Store({str(store.home)!r}).lock('cells'):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(TlsyncError, match=r"dataset 'cells' is locked by another pull .*\.lock"):
            with store.lock("cells", timeout=0.3):
                pass
        with store.lock("other", timeout=0.3):  # other datasets are not held up
            pass
    finally:
        holder.kill()
        holder.wait()
    with store.lock("cells", timeout=5):
        pass
