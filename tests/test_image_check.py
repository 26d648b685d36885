"""The completeness check reads a JPEG through one buffer: headers longer than it, and long trailers, still work."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image

from tlsync.errors import TlsyncError
from tlsync.images import _has_eoi, check_complete_image


def _jpeg(size: tuple[int, int] = (120, 90)) -> bytes:
    rng = random.Random(2)
    out = io.BytesIO()
    Image.frombytes("RGB", size, bytes(rng.getrandbits(8) for _ in range(size[0] * size[1] * 3))).save(out, "JPEG")
    return out.getvalue()


def _with_comments(jpeg: bytes, n: int, size: int = 60_000) -> bytes:
    """``n`` comment segments of ``size`` bytes right after SOI: headers far longer than one read."""
    segment = b"\xff\xfe" + (size + 2).to_bytes(2, "big") + b"c" * size
    return jpeg[:2] + segment * n + jpeg[2:]


def test_a_jpeg_whose_headers_outgrow_the_read_buffer_is_checked_whole(tmp_path: Path):
    path = tmp_path / "long-header.jpg"
    whole = _with_comments(_jpeg(), 5)  # 300 KB of headers before the first scan
    path.write_bytes(whole)
    assert check_complete_image(path) == (120, 90, ".jpg")
    for cut in (len(whole) - 2, 200_000, 70_000):  # after the scan starts, and inside the long headers
        path.write_bytes(whole[:cut])
        with pytest.raises(TlsyncError, match="truncated JPEG|not a readable image"):
            check_complete_image(path)


def test_the_end_of_image_is_found_before_a_trailer_of_megabytes(tmp_path: Path):
    path = tmp_path / "motion.jpg"
    whole = _jpeg()
    path.write_bytes(whole + b"\0" * 3_000_000)  # a motion photo's video: EOI is far from the end
    assert check_complete_image(path) == (120, 90, ".jpg")
    path.write_bytes(whole[:-2] + b"\0" * 3_000_000)
    with pytest.raises(TlsyncError, match="truncated JPEG"):
        check_complete_image(path)


@pytest.mark.parametrize("at", [0, (1 << 20) - 1, 1 << 20, 2_500_000])
def test_an_end_of_image_marker_across_a_read_boundary_is_not_missed(at: int):
    size = 3_000_000
    data = bytearray(size)
    data[at:at + 2] = b"\xff\xd9"
    assert _has_eoi(io.BytesIO(bytes(data)), 0, size)
    assert not _has_eoi(io.BytesIO(bytes(size)), 0, size)
    assert not _has_eoi(io.BytesIO(bytes(data)), at + 1, size), "a marker before the scan does not count"
