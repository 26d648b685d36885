"""What makes a file a usable image: a known format, a bounded size, and all of its bytes.

Every image tlsync stores comes from somewhere it does not control, so two failures that
PIL lets through (or turns into a crash) are caught here, once, for every source:

* a header declaring a gigantic canvas (a "decompression bomb": a few KB of PNG that would
  decode to 900 megapixels) is refused from its header, before any pixel is decoded;
* a file cut off part-way (a half-copied JPEG, a download that stopped early) is refused
  instead of being stored and later trained on as a grey smear. JPEG and PNG, nearly every
  export, get a structural check that costs a scan, not a decode: JPEG's end-of-image
  marker must follow the first scan, PNG's chunks must run whole up to ``IEND``. The
  rarer formats are fully decoded.

Both raise ``TlsyncError`` ("not a readable image (...)"), so the caller names the item
and ``--on-error skip`` counts it like any other bad input.
"""

from __future__ import annotations

import io
import os
import re
import struct
from pathlib import Path
from typing import IO, Any

from .errors import TlsyncError
from .files import NotRegularFile, open_regular, why

EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "WEBP": ".webp"}
MAX_PIXELS_ENV = "TLSYNC_MAX_IMAGE_PIXELS"
# PIL's own hard limit (twice its warning threshold): 179 MP, far beyond any training photo.
DEFAULT_MAX_PIXELS = 2 * 89_478_485

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG markers that stand alone (no length field): TEM, RST0-7, SOI, EOI.
_STANDALONE = {0x01, *range(0xD0, 0xDA)}
_BUFFER = 1 << 16  # one read covers a JPEG's or PNG's header segments; no isatty() call either


def max_pixels() -> int:
    """The declared-size bound: ``$TLSYNC_MAX_IMAGE_PIXELS`` if set, else 179 MP."""
    env = os.environ.get(MAX_PIXELS_ENV)
    if not env:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(env)
    except ValueError:
        value = 0
    if value <= 0:
        raise TlsyncError(f"{MAX_PIXELS_ENV}={env!r}: give a positive number of pixels")
    return value


def _megapixels(n: int) -> str:
    return f"{n / 1e6:,.0f} MP" if n >= 10**7 else f"{n / 1e6:,.1f} MP" if n >= 10**5 else f"{n:,} pixels"


def preload() -> None:
    """Import PIL and its common format plugins now rather than at the first image checked.

    Fetch threads call this from a starter thread while their first downloads are in
    flight; otherwise the first check imports PIL while every other fetch thread with an
    image in hand queues on the import lock behind it.
    """
    from PIL import Image

    Image.preinit()


def image_info(path: Path) -> tuple[int, int, str]:
    """``(width, height, extension)`` of an image file, reading only its header.

    EXIF orientation is applied to the size, since training decodes with it applied. A
    canvas over ``max_pixels()`` is refused here, so no caller ever decodes one.
    """
    try:
        with open_regular(path, buffering=_BUFFER) as f:
            return _info(f)
    except NotRegularFile as e:
        raise TlsyncError(f"not a readable image ({why(e)})") from None
    except OSError as e:
        raise TlsyncError(f"not a readable image ({_why(e)})") from None


def _info(f: IO[bytes]) -> tuple[int, int, str]:
    """``image_info`` of an open file (left anywhere: callers seek before reading again)."""
    from PIL import Image, UnidentifiedImageError

    limit = max_pixels()
    if limit > 2 * (Image.MAX_IMAGE_PIXELS or limit):  # the user raised it: PIL (here and in training) too
        Image.MAX_IMAGE_PIXELS = limit // 2 + 1
    try:
        with Image.open(f) as im:
            fmt = im.format or ""
            width, height = im.size
            _check_pixels(width, height, limit)
            orientation = _orientation(im, f)
    except Image.DecompressionBombError as e:  # PIL's own limit, met before ours; same message
        declared = re.search(r"\((\d+) pixels\)", str(e))
        what = _megapixels(int(declared.group(1))) if declared else f"more than {_megapixels(limit)}"
        raise TlsyncError(f"not a readable image (declares {what}, limit {_megapixels(limit)}; "
                          f"raise {MAX_PIXELS_ENV} if it is real)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, struct.error) as e:
        raise _unreadable(e, _why(e)) from None
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if fmt not in EXTENSIONS:
        raise TlsyncError(f"unsupported image format {fmt or 'unknown'}")
    return width, height, EXTENSIONS[fmt]


def _orientation(im: Any, f: IO[bytes]) -> int:
    """The EXIF orientation tag, without decoding any pixels.

    PIL's ``getexif()`` on a PNG whose header holds no eXIf chunk decodes the whole image
    to look for one after the pixel data: a full decode of every PNG a pull stores. The
    chunks are walked instead (``_png_exif``), as the completeness check walks them.
    """
    if im.format == "PNG" and "exif" not in im.info:
        from PIL import Image

        payload = _png_exif(f)
        if payload is None:
            return 1
        exif = Image.Exif()
        exif.load(b"Exif\x00\x00" + payload)  # as PIL's PNG reader stores an eXIf chunk
        return int(exif.get(0x0112, 1) or 1)
    return int(im.getexif().get(0x0112, 1) or 1)


def _png_exif(f: IO[bytes]) -> bytes | None:
    """The payload of a PNG's eXIf chunk, wherever it is, or None (also for chunks cut short)."""
    size = f.seek(0, os.SEEK_END)
    pos = 8
    while pos + 12 <= size:
        f.seek(pos)
        length, kind = struct.unpack(">I4s", f.read(8))
        if kind == b"IEND" or pos + 12 + length > size:
            return None
        if kind == b"eXIf":
            return f.read(length) if length <= 1 << 20 else None  # EXIF is small; a huge one is ignored
        pos += 12 + length
    return None


def _check_pixels(width: int, height: int, limit: int) -> None:
    if width * height > limit:
        raise TlsyncError(f"not a readable image (declares {width}x{height} = {_megapixels(width * height)}, "
                          f"limit {_megapixels(limit)}; raise {MAX_PIXELS_ENV} if it is real)")


class IncompleteImage(TlsyncError):
    """The bytes start like an image but stop early (a download cut short): worth a retry.

    Raised where the end is found missing, so a fetcher retries on the type, never on the wording.
    """


def check_complete_image(path: str | Path, data: bytes | None = None) -> tuple[int, int, str]:
    """``image_info`` plus proof that the file holds the whole image, not just its header.

    The one check every stored image passes (local files and downloads alike): the
    header is sane and bounded, and no part of the file is missing. The file is opened
    once for both, and read through one buffer: every fetch thread of a pull runs this,
    and each system call hands the GIL to the others and waits to win it back. ``data``,
    the file's bytes where the caller still holds them (an image the store just wrote),
    is checked in memory instead, and the file is not opened again.
    """
    try:
        with io.BytesIO(data) if data is not None else open_regular(path, buffering=_BUFFER) as f:
            size = len(data) if data is not None else os.fstat(f.fileno()).st_size
            width, height, ext = _info(f)
            if ext == ".jpg":
                _check_jpeg(f, size)
            elif ext == ".png":
                _check_png(f, size)
            else:
                _decode_fully(path)
    except NotRegularFile as e:
        raise TlsyncError(f"not a readable image ({why(e)})") from None
    except OSError as e:
        raise TlsyncError(f"not a readable image ({e.strerror or type(e).__name__})") from None
    return width, height, ext


def _check_jpeg(f: IO[bytes], size: int) -> None:
    """The header segments run whole up to the first scan, and an EOI marker follows it.

    Inside entropy-coded data a 0xFF byte is always stuffed (FF 00), so FF D9 after the
    first SOS is the real end of image, never a thumbnail's (those sit in APP1, before).
    Bytes after EOI (motion photos append a video) are allowed, as every decoder does.
    """
    if size < 4:
        raise IncompleteImage("not a readable image (truncated JPEG: no end-of-image marker)")
    scan = _jpeg_scan_start(f)
    if scan is None or not _has_eoi(f, scan, size):
        raise IncompleteImage("not a readable image (truncated JPEG: no end-of-image marker after its image data)")


def _jpeg_scan_start(f: IO[bytes]) -> int | None:
    """Where the first scan's data starts, walking the segments; None if they are cut short."""
    base, head = 0, b""

    def window(at: int, n: int) -> bytes:  # bytes [at, at + n) of the file, fewer at its end
        nonlocal base, head
        if at < base or at + n > base + len(head):
            f.seek(at)  # the header PIL just read is still in f's buffer: usually no system call
            base, head = at, f.read(max(n, _BUFFER // 2))
        return head[at - base:at - base + n]

    pos = 2
    while True:
        while window(pos, 2) == b"\xff\xff":
            pos += 1  # fill bytes before a marker
        segment = window(pos, 4)
        if len(segment) < 4 or segment[0] != 0xFF:
            return None
        marker = segment[1]
        if marker in _STANDALONE:
            pos += 2
            continue
        length = int.from_bytes(segment[2:4], "big")
        if marker == 0xDA:  # start of scan: EOI is almost always in the last few bytes
            return pos + 2 + length
        pos += 2 + length


def _has_eoi(f: IO[bytes], scan: int, size: int) -> bool:
    """Whether FF D9 starts anywhere at or after ``scan``: the last 64 KB first, then the rest."""
    start = max(scan, size - 65536)
    f.seek(start)
    if f.read(max(0, size - start)).rfind(b"\xff\xd9") >= 0:
        return True
    pos = scan
    while pos < start:  # EOI before a long trailer: walk forward, chunks overlapping by a byte
        f.seek(pos)
        if f.read(min((1 << 20) + 1, start + 1 - pos)).find(b"\xff\xd9") >= 0:
            return True
        pos += 1 << 20
    return False


def _check_png(f: IO[bytes], size: int) -> None:
    """Every chunk, from the signature to ``IEND``, is present in full (lengths only, no CRC)."""
    f.seek(0)
    if f.read(8) != _PNG_SIGNATURE:
        raise TlsyncError("not a readable image (bad PNG signature)")
    pos = 8
    while pos + 12 <= size:
        f.seek(pos)
        length, kind = struct.unpack(">I4s", f.read(8))
        pos += 12 + length
        if pos > size:
            break
        if kind == b"IEND":
            return
    raise IncompleteImage("not a readable image (truncated PNG: its chunks end before IEND)")


def _decode_fully(path: str | Path) -> None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, ValueError, SyntaxError, struct.error) as e:
        raise _unreadable(e, f"it does not decode: {_why(e)}") from None


def _unreadable(e: BaseException, why: str) -> TlsyncError:
    """PIL's error as ours; PIL tells "the file ends early" only in an OSError's words, read here alone."""
    cut_short = isinstance(e, OSError) and "truncated" in str(e)
    return (IncompleteImage if cut_short else TlsyncError)(f"not a readable image ({why})")


def _why(e: BaseException) -> str:
    """The exception's kind and first line, short: PIL's messages hold no paths worth keeping."""
    text = str(e).splitlines()[0][:120] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text and not isinstance(e, FileNotFoundError) else type(e).__name__
