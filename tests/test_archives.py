"""Safe zip extraction: malicious archives are refused before anything is written."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from tlsync.archives import UnsafeArchive, extract_zip, parse_size
from tlsync.errors import TlsyncError


def make_zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]],
             compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def symlink_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix, so the mode bits are meaningful
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_a_good_archive_is_unpacked_with_its_folders(tmp_path: Path):
    archive = make_zip(tmp_path / "ok.zip", [("train/a.txt", b"alpha"), ("train/sub/b.txt", b"beta"), ("README", b"r")])
    out = tmp_path / "out" / "export"
    seen = []
    extract_zip(archive, out, progress=lambda done, total: seen.append((done, total)))
    assert (out / "train" / "sub" / "b.txt").read_bytes() == b"beta"
    assert (out / "README").read_bytes() == b"r"
    assert seen[-1] == (10, 10)
    assert leftovers(out.parent) == ["export"], "no temp folder left beside it"


@pytest.mark.parametrize("entries, message", [
    ([("ok.txt", b"x"), ("../evil.txt", b"pwned")], "climbs out of the folder with '..'"),
    ([("ok.txt", b"x"), ("train/../../evil.txt", b"pwned")], "climbs out of the folder with '..'"),
    ([("ok.txt", b"x"), ("/tmp/evil.txt", b"pwned")], "has an absolute path"),
    ([("ok.txt", b"x"), symlink_entry("train/link", "/etc/passwd")], "is a symbolic link"),
])
def test_malicious_entries_are_refused_and_nothing_is_written(tmp_path: Path, entries, message: str):
    archive = make_zip(tmp_path / "evil.zip", entries)
    parent = tmp_path / "cache"
    with pytest.raises(UnsafeArchive, match=message) as e:
        extract_zip(archive, parent / "export")
    assert "evil.zip" in str(e.value) and "\n" not in str(e.value)
    assert leftovers(parent) == []
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_oversized_archive_is_refused_by_the_configured_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    archive = make_zip(tmp_path / "big.zip", [("a.bin", bytes(range(256)) * 40)], zipfile.ZIP_STORED)
    with pytest.raises(UnsafeArchive, match=r"would unpack to 10.2 KB, more than the 5.0 KB limit"):
        extract_zip(archive, tmp_path / "out", max_total=5000)
    monkeypatch.setenv("TLSYNC_MAX_EXTRACT_SIZE", "5KB")
    with pytest.raises(UnsafeArchive, match="TLSYNC_MAX_EXTRACT_SIZE"):
        extract_zip(archive, tmp_path / "out")
    assert leftovers(tmp_path) == ["big.zip"]
    monkeypatch.setenv("TLSYNC_MAX_EXTRACT_SIZE", "1MB")
    assert (extract_zip(archive, tmp_path / "out") / "a.bin").stat().st_size == 10240


def test_zip_bomb_ratio_is_refused(tmp_path: Path):
    archive = make_zip(tmp_path / "bomb.zip", [("zeros.bin", bytes(20 << 20))])
    assert archive.stat().st_size < 100_000
    with pytest.raises(UnsafeArchive, match="looks like a zip bomb"):
        extract_zip(archive, tmp_path / "out")
    assert leftovers(tmp_path) == ["bomb.zip"]


def test_corrupt_entry_rolls_back_the_whole_extraction(tmp_path: Path):
    archive = make_zip(tmp_path / "bad.zip", [("a.txt", b"first file"), ("b.txt", b"second " * 100)])
    data = bytearray(archive.read_bytes())
    offset = data.index(b"b.txt") + len("b.txt") + 4  # inside b.txt's compressed bytes
    data[offset] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(UnsafeArchive, match="extraction failed, nothing kept"):
        extract_zip(archive, tmp_path / "out")
    assert leftovers(tmp_path) == ["bad.zip"], "a.txt, already written, must be gone too"


def test_replace_swaps_an_existing_extraction(tmp_path: Path):
    out = tmp_path / "export"
    extract_zip(make_zip(tmp_path / "v1.zip", [("old.txt", b"1")]), out)
    with pytest.raises(UnsafeArchive, match="already exists"):
        extract_zip(tmp_path / "v1.zip", out)
    extract_zip(make_zip(tmp_path / "v2.zip", [("new.txt", b"2")]), out, replace=True)
    assert leftovers(out) == ["new.txt"]
    assert leftovers(tmp_path) == ["export", "v1.zip", "v2.zip"]


def test_not_a_zip(tmp_path: Path):
    (tmp_path / "x.zip").write_text("<html>expired link</html>")
    with pytest.raises(UnsafeArchive, match="not a readable zip archive"):
        extract_zip(tmp_path / "x.zip", tmp_path / "out")


def test_parse_size():
    assert parse_size("20GB") == 20 * 10**9
    assert parse_size("1.5 MiB") == int(1.5 * 2**20)
    assert parse_size("4096") == 4096
    with pytest.raises(TlsyncError, match="give a size such as 20GB"):
        parse_size("lots")


def test_malicious_zip_through_the_cli_leaves_the_cache_empty(isolated_home: Path, tmp_path: Path, run_cli):
    archive = make_zip(tmp_path / "export.zip", [("train/_annotations.coco.json", b"{}"), ("../../evil", b"x")])
    result = run_cli("pull", "--source", "roboflow", "--path", archive, "--dataset", "x")
    assert result.exit_code == 1
    assert "export.zip: entry '../../evil' climbs out" in result.stderr and "Traceback" not in result.stderr
    slots = list((isolated_home / "cache" / "roboflow" / "zips").iterdir())
    assert [leftovers(slot) for slot in slots] == [[".lock"]]
    big = make_zip(tmp_path / "big.zip", [("a.bin", b"x" * 3000)], zipfile.ZIP_STORED)
    result = run_cli("pull", "--source", "roboflow", "--path", big, "--max-extract-size", "1KB", "--dataset", "x")
    assert result.exit_code == 1 and "more than the 1.0 KB limit" in result.stderr
