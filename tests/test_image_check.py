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


# The store checks a download it still holds in memory (``data``), any other file from disk: both the same.
BOTH_WAYS = pytest.mark.parametrize("in_memory", [False, True], ids=["from the file", "from memory"])


def check(path: Path, in_memory: bool) -> tuple[int, int, str]:
    return check_complete_image(path, path.read_bytes() if in_memory else None)


@BOTH_WAYS
def test_a_jpeg_whose_headers_outgrow_the_read_buffer_is_checked_whole(tmp_path: Path, in_memory: bool):
    path = tmp_path / "long-header.jpg"
    whole = _with_comments(_jpeg(), 5)  # 300 KB of headers before the first scan
    path.write_bytes(whole)
    assert check(path, in_memory) == (120, 90, ".jpg")
    for cut in (len(whole) - 2, 200_000, 70_000):  # after the scan starts, and inside the long headers
        path.write_bytes(whole[:cut])
        with pytest.raises(TlsyncError, match="truncated JPEG|not a readable image"):
            check(path, in_memory)


@BOTH_WAYS
def test_the_end_of_image_is_found_before_a_trailer_of_megabytes(tmp_path: Path, in_memory: bool):
    path = tmp_path / "motion.jpg"
    whole = _jpeg()
    path.write_bytes(whole + b"\0" * 3_000_000)  # a motion photo's video: EOI is far from the end
    assert check(path, in_memory) == (120, 90, ".jpg")
    path.write_bytes(whole[:-2] + b"\0" * 3_000_000)
    with pytest.raises(TlsyncError, match="truncated JPEG"):
        check(path, in_memory)


@BOTH_WAYS
def test_a_png_cut_anywhere_before_its_end_chunk_is_refused(tmp_path: Path, in_memory: bool):
    path = tmp_path / "cut.png"
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (9, 99, 199)).save(out, "PNG")
    whole = out.getvalue()
    path.write_bytes(whole)
    assert check(path, in_memory) == (40, 30, ".png")
    for cut in (len(whole) - 1, len(whole) - 12, 40):
        path.write_bytes(whole[:cut])
        with pytest.raises(TlsyncError, match="truncated PNG|not a readable image"):
            check(path, in_memory)


@pytest.mark.parametrize("at", [0, (1 << 20) - 1, 1 << 20, 2_500_000])
def test_an_end_of_image_marker_across_a_read_boundary_is_not_missed(at: int):
    size = 3_000_000
    data = bytearray(size)
    data[at:at + 2] = b"\xff\xd9"
    assert _has_eoi(io.BytesIO(bytes(data)), 0, size)
    assert not _has_eoi(io.BytesIO(bytes(size)), 0, size)
    assert not _has_eoi(io.BytesIO(bytes(data)), at + 1, size), "a marker before the scan does not count"


def _png_with_orientation(orientation: int, after_pixels: bool) -> bytes:
    """A 40x30 PNG whose eXIf chunk says ``orientation``, before or after its pixel data."""
    import struct
    import zlib

    exif = Image.Exif()
    exif[0x0112] = orientation
    payload = exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif\0\0") else exif.tobytes()
    chunk = struct.pack(">I", len(payload)) + b"eXIf" + payload + struct.pack(">I", zlib.crc32(b"eXIf" + payload))
    out = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(out, "PNG")
    png = out.getvalue()
    at = png.index(b"IEND") - 4 if after_pixels else png.index(b"IDAT") - 4
    return png[:at] + chunk + png[at:]


@BOTH_WAYS
@pytest.mark.parametrize("after_pixels", [False, True], ids=["eXIf first", "eXIf after the pixels"])
def test_a_png_turned_by_its_exif_reports_the_size_training_sees_without_decoding_it(
        tmp_path: Path, in_memory: bool, after_pixels: bool, monkeypatch: pytest.MonkeyPatch):
    from PIL import ImageFile, ImageOps

    path = tmp_path / "turned.png"
    path.write_bytes(_png_with_orientation(6, after_pixels))
    with Image.open(path) as im:
        assert ImageOps.exif_transpose(im).size == (30, 40)  # what the training loader decodes
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("the check decoded the pixels"))
    assert check(path, in_memory) == (30, 40, ".png")
