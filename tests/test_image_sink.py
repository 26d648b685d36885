"""The store's image sink: what a source writes is what the store keeps, however it arrives."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

import tlsync.sink
from tlsync.sink import KEEP_BYTES, create_temp


def png(width: int, height: int, noise: bool = True) -> bytes:
    from PIL import Image

    data = os.urandom(width * height * 3) if noise else bytes(width * height * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), data).save(out, format="PNG", compress_level=0)
    return out.getvalue()


@pytest.mark.parametrize("chunk", [1 << 10, 1 << 18, 1 << 24])
def test_small_and_large_images_are_stored_byte_for_byte(store, chunk: int) -> None:
    for data in (png(8, 8), png(800, 600)):  # 0.2 KB (held in memory), 1.4 MB (streamed to disk)
        def write(out, data=data):
            for start in range(0, len(data), chunk):
                out.write(data[start:start + chunk])

        rel, sha, width, height = store.add_image(write)
        assert (store.home / rel).read_bytes() == data
        assert sha == hashlib.sha256(data).hexdigest() and (width, height) in {(8, 8), (800, 600)}
    assert len(png(800, 600)) > KEEP_BYTES
    assert not list((store.images_dir / ".tmp").iterdir())


@pytest.mark.parametrize("size", [(8, 8), (800, 600)])
@pytest.mark.parametrize("cut", [100, KEEP_BYTES + 7])  # the first attempt held in memory, or on disk already
def test_a_download_started_over_keeps_only_the_second_attempt(store, size: tuple[int, int], cut: int) -> None:
    data = png(*size)

    def write(out) -> None:
        out.write(b"\xff" * cut)  # the first attempt, cut short
        out.reset()
        out.write(data)

    rel, sha, _, _ = store.add_image(write)
    assert (store.home / rel).read_bytes() == data and sha == hashlib.sha256(data).hexdigest()


def test_a_small_image_reaches_the_disk_in_one_write(store, monkeypatch) -> None:
    """Each system call hands the GIL to another fetch thread: a small image costs one write."""
    calls = []
    monkeypatch.setattr(tlsync.sink, "write_fd", lambda fd, data: calls.append(len(data)) or os.write(fd, data))
    data = png(32, 32)
    store.add_image(lambda out: [out.write(data[i:i + 100]) for i in range(0, len(data), 100)])
    assert calls == [len(data)]


def test_temp_names_carry_the_pid_and_skip_a_name_already_taken(tmp_path) -> None:
    fd, first = create_temp(tmp_path)
    os.close(fd)
    pid, number = Path(first).name.split("-")
    assert pid == str(os.getpid())  # clean_tmp removes a dead process's leftovers by this pid
    (tmp_path / f"{pid}-{int(number) + 1}").write_bytes(b"left by an earlier process of this pid")
    fd, second = create_temp(tmp_path)
    os.close(fd)
    assert Path(second).name == f"{pid}-{int(number) + 2}" and Path(second).read_bytes() == b""
