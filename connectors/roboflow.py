"""The ``roboflow`` source: Roboflow exports from a folder, a downloaded zip, or the API.

Local exports (COCO JSON, YOLO, Pascal VOC) are auto-detected; the API flow mirrors the
official client: ask for a version's export, poll while Roboflow prepares it, download
the zip, unpack it safely into the store's cache and read it like a local export.

Roboflow renames images ``<stem>_<ext>.rf.<hash>.<ext>`` and gives augmented copies of
one photo the same part before ``.rf.``; that part becomes ``metadata["group"]`` so the
core's split assignment never puts copies of one photo on both sides of train/val.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import click

from tlsync.archives import DEFAULT_MAX_ENTRIES, clean_leftovers, default_max_total, extract_zip, parse_size
from tlsync.console import progress
from tlsync.errors import SourceError
from tlsync.fields import loads
from tlsync.files import check_regular
from tlsync.format import Item
from tlsync.hookspecs import hookimpl
from tlsync.http import HttpClient, HttpError
from tlsync.locks import LockTimeout, exclusive
from tlsync.manifest import atomic_write_text
from tlsync.paths import ALLOW_OUTSIDE_OPTION, ExportRoot
from tlsync.secrets import get_secret
from tlsync.sources import PullContext, Source, files_fingerprint

from .coco import find_annotations, read_coco
from .voc import SPLIT_FOLDERS, looks_like_voc, read_voc
from .yolo import find_data_yaml, read_folders, read_yolo

DEFAULT_API_URL = "https://api.roboflow.com"
FORMATS = ("coco", "yolo", "yolov5", "yolov8", "yolov11", "voc")
# The API's identifiers where they differ from the names users type (as in the official client).
API_FORMAT_IDS = {"yolov5": "yolov5pytorch", "yolo": "yolov8"}
COCO_JSON = "_annotations.coco.json"
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
LOCK_TIMEOUT = 3600
EXPORT_TIMEOUT = 900.0


def photo_metadata(item_id: str) -> dict[str, str]:
    """``{"group", "original_stem"}`` from a Roboflow file name; just the stem for other names.

    ``IMG_0001 2_jpg.rf.a64c.jpg`` -> group ``IMG_0001 2_jpg``, original stem ``IMG_0001 2``.
    """
    path = PurePosixPath(item_id)
    prefix, sep, _ = path.name.partition(".rf.")
    if not sep:
        return {"original_stem": path.stem}
    stem, _, ext = prefix.rpartition("_")
    original = stem if stem and ext.isalnum() and len(ext) <= 5 else prefix
    return {"group": str(path.parent / prefix) if path.parent.name else prefix, "original_stem": original}


def detect_format(root: Path) -> str | None:
    """``yolo``, ``coco`` or ``voc`` for an export folder, or None when it is none of them."""
    return next((fmt for fmt, present in FOUND.items() if present(root)), None)


def coco_folders(root: Path) -> list[tuple[str | None, Path]]:
    """``(split, folder)`` of each COCO JSON: Roboflow's split folders, else ``root`` itself."""
    splits: list[tuple[str | None, Path]] = [(split, root / name) for name, split in SPLIT_FOLDERS.items()
                                             if (root / name / COCO_JSON).is_file()]
    if splits:
        return splits
    return [(None, root)] if (root / COCO_JSON).is_file() or len(list(root.glob("*.json"))) == 1 else []


def read_roboflow_coco(ctx: PullContext, root: Path, export: ExportRoot | None = None) -> Iterator[Item]:
    """Every split's COCO JSON through the shared reader, minus Roboflow's super-category."""
    export = export or ExportRoot(root)
    folders = coco_folders(root)
    if not folders:
        raise SourceError(f"{root}: no {COCO_JSON} here or in train/, valid/, test/")
    categories: list[str] = []
    for split, folder in folders:
        annotations = folder / COCO_JSON if (folder / COCO_JSON).is_file() else find_annotations(folder)
        yield from read_coco(ctx, annotations, folder, split, drop_supercategory=True, root=export)
        categories += [c for c in ctx.categories or [] if c not in categories]
    ctx.set_categories(categories)  # each split's read_coco replaced the list; keep the union


READERS = {"coco": read_roboflow_coco, "yolo": read_yolo, "voc": read_voc}
# Checked in this order: a YOLO export's data.yaml is unambiguous; VOC is the loosest test.
FOUND = {"yolo": find_data_yaml, "coco": coco_folders, "voc": looks_like_voc}
MARKERS = {"yolo": "data.yaml", "coco": COCO_JSON, "voc": "VOC .xml files"}


def export_root(path: Path, fmt: str | None) -> tuple[Path, str]:
    """The folder holding the export and its reader's name, looking inside lone wrapper folders.

    Zips often wrap the export in one folder (and macOS adds ``__MACOSX``).
    """
    reader = "yolo" if fmt and fmt.startswith("yolo") else fmt
    root = path
    for _ in range(3):
        found = detect_format(root) if reader is None else (reader if FOUND[reader](root) else None)
        if found:
            return root, found
        subdirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX"))]
        if len(subdirs) != 1:
            break
        root = subdirs[0]
    if reader:
        raise SourceError(f"{path}: no {reader} export here (no {MARKERS[reader]} found)")
    raise SourceError(f"{path}: not a recognisable export (no {', '.join(MARKERS.values())}); "
                      "use --format coco|yolo|voc")


class RoboflowSource(Source):
    name = "roboflow"
    description = "Roboflow exports (COCO JSON, YOLO, Pascal VOC): a folder, its .zip, or the versioned-export API."
    options = [
        click.Option(["--path"], type=click.Path(path_type=Path), help="Export folder or .zip as downloaded."),
        click.Option(["--format"], type=click.Choice(FORMATS),
                     help="Export format (auto-detected for --path; default coco for the API)."),
        click.Option(["--workspace"], help="API: Roboflow workspace slug (key from ROBOFLOW_API_KEY)."),
        click.Option(["--project"], help="API: project slug."),
        click.Option(["--version"], type=click.IntRange(1), help="API: dataset version number."),
        click.Option(["--refresh"], is_flag=True, help="Download (or unpack) the export again even if cached."),
        click.Option(["--export-timeout"], type=click.FloatRange(0),
                     help=f"API: seconds to wait for Roboflow to prepare the export (default {EXPORT_TIMEOUT:g})."),
        click.Option(["--max-extract-size"],
                     help="Refuse zips that unpack to more than this (default 20GB or $TLSYNC_MAX_EXTRACT_SIZE)."),
        click.Option(["--max-extract-entries"], type=click.IntRange(1),
                     help=f"Refuse zips with more entries than this (default {DEFAULT_MAX_ENTRIES:,} "
                          f"or $TLSYNC_MAX_EXTRACT_ENTRIES)."),
        ALLOW_OUTSIDE_OPTION,
    ]
    poll_interval: float = 1.0
    clock: Callable[[], float] = staticmethod(time.monotonic)  # what --export-timeout is measured on

    def __init__(self, http: HttpClient | None = None):
        self._http = http

    def items(self, ctx: PullContext, path: Path | None = None, format: str | None = None,
              workspace: str | None = None, project: str | None = None, version: int | None = None,
              refresh: bool = False, export_timeout: float | None = None, max_extract_size: str | None = None,
              max_extract_entries: int | None = None, allow_outside_root: bool = False,
              **_: Any) -> Iterator[Item]:
        limit = parse_size(max_extract_size, "--max-extract-size") if max_extract_size else default_max_total()
        self._max_entries = max_extract_entries  # read by local_export/api_export of this pull
        api = (workspace, project, version)
        if path is not None and any(v is not None for v in api):
            raise SourceError("roboflow: give --path, or --workspace/--project/--version, not both")
        if path is not None:
            folder = self.local_export(ctx, path.expanduser(), refresh, limit)
        elif workspace is not None and project is not None and version is not None:
            format = format or "coco"
            timeout = EXPORT_TIMEOUT if export_timeout is None else export_timeout
            folder = self.api_export(ctx, workspace, project, version, format, refresh, timeout, limit)
        else:
            raise SourceError("roboflow: give --path EXPORT (folder or .zip), or --workspace W --project P --version N")
        # Only a folder the user named may point elsewhere; an unpacked zip or download never.
        export = ExportRoot(folder, allow_outside_root, archive=path is None or not path.is_dir())
        root, fmt = export_root(folder, format)
        for item in READERS[fmt](ctx, root, export):
            item.metadata.update(photo_metadata(item.id))
            yield item

    def fingerprint(self, ctx: PullContext, path: Path | None = None, format: str | None = None,
                    workspace: str | None = None, project: str | None = None, version: int | None = None,
                    refresh: bool = False, allow_outside_root: bool = False, **_: Any) -> str | None:
        """The files a pull would read: a folder's export, a zip itself, or a cached API export.

        A zip's unpacked copy is tlsync's own, so the zip file alone stands for it.
        """
        if refresh:
            return None
        if path is not None:
            path = path.expanduser()
            if not path.is_dir():
                return files_fingerprint(path)
            root, fmt = export_root(path, format)
            inside = ExportRoot(path, allow_outside_root)
            return files_fingerprint(*(read_folders(root, inside) if fmt == "yolo" else [root]))
        if workspace and project and version:
            export = api_slot(ctx, workspace, project, version, format or "coco")[0] / "export"
            return files_fingerprint(export) if export.is_dir() else None
        return None

    # -- local exports ----------------------------------------------------------------------

    def local_export(self, ctx: PullContext, path: Path, refresh: bool, limit: int) -> Path:
        """A folder as is; a zip unpacked (once per zip file version) into the cache."""
        if path.is_dir():
            return path
        if not path.exists():
            raise SourceError(f"{path}: no such file or folder")
        try:
            check_regular(path)  # before is_zipfile: opening a FIFO would wait forever
        except OSError as e:
            raise SourceError(f"{path}: cannot read it ({e.strerror or e})") from None
        if path.suffix.lower() != ".zip" and not zipfile.is_zipfile(path):
            raise SourceError(f"{path}: not a folder or a .zip export")
        resolved = path.resolve()
        st = resolved.stat()
        slot = ctx.cache_dir("zips", hashlib.sha256(str(resolved).encode()).hexdigest()[:20])
        stamp = f"{resolved}\n{st.st_size}\n{st.st_mtime_ns}\n"
        export = slot / "export"
        with _locked(slot):
            if not refresh and export.is_dir() and _read(slot / "stamp") == stamp:
                return export
            clean_leftovers(export)
            with progress(f"unpack {path.name}", unit="bytes") as update:
                extract_zip(path, export, max_total=limit, replace=True, max_entries=self._max_entries,
                            progress=lambda done, total: update(done, total=total))
            atomic_write_text(slot / "stamp", stamp)
        ctx.note(f"unpacked {path.name} into {export}")
        return export

    # -- the versioned-export API ------------------------------------------------------------

    def api_export(self, ctx: PullContext, workspace: str, project: str, version: int, fmt: str,
                   refresh: bool, timeout: float, limit: int) -> Path:
        """The unpacked export of one version and format, downloaded unless already cached."""
        slot, fmt_id = api_slot(ctx, workspace, project, version, fmt)
        ref = f"{workspace}/{project}/{version} ({fmt_id})"
        export = slot / "export"
        with _locked(slot):
            if export.is_dir() and not refresh:
                ctx.note(f"Roboflow export {ref}: using the copy downloaded earlier (--refresh to download again)")
                return export
            key = get_secret("ROBOFLOW_API_KEY")
            base = os.environ.get("ROBOFLOW_API_URL", DEFAULT_API_URL).rstrip("/")
            link = self.export_link(f"{base}/{workspace}/{project}/{version}/{fmt_id}", key, ref, timeout)
            part = slot / "download.zip.part"
            clean_leftovers(export)
            try:
                self.download(link, part, ref)
                with progress(f"unpack {ref}", unit="bytes") as update:
                    extract_zip(part, export, max_total=limit, replace=True, max_entries=self._max_entries,
                                progress=lambda done, total: update(done, total=total))
            finally:
                part.unlink(missing_ok=True)
        ctx.note(f"downloaded Roboflow export {ref}")
        return export

    def export_link(self, url: str, key: str, ref: str, timeout: float) -> str:
        """Ask for the export and poll while Roboflow prepares it (HTTP 202); its zip's URL.

        ``--export-timeout`` counts wall time, the requests (and their retries) included:
        a slow API must not stretch the wait the user asked for.
        """
        started = self.clock()
        with progress(f"Roboflow export {ref}", total=100, unit="%") as update:
            while True:
                response = self.http.request("GET", url, what=f"Roboflow export {ref}",
                                             params={"api_key": key, "nocache": "true"})
                if response.status_code not in (200, 202):
                    raise _api_error(response.status_code, ref)
                body = _json_object(response, f"Roboflow export {ref}: GET {_without_query(url)}")
                if response.status_code == 200:
                    link = (body.get("export") or {}).get("link") if isinstance(body.get("export"), dict) else None
                    if not isinstance(link, str) or not link.startswith(("http://", "https://")):
                        raise SourceError(f"Roboflow export {ref}: the API said ready (HTTP 200) "
                                          "but gave no export.link")
                    update(100)
                    return link
                fraction = body.get("progress")
                if isinstance(fraction, (int, float)):
                    update(max(0.0, min(1.0, float(fraction))) * 100)
                waited = self.clock() - started
                if waited >= timeout:
                    raise SourceError(f"Roboflow export {ref}: still being prepared after {waited:.0f}s; "
                                      f"try again later or raise --export-timeout")
                self.http.sleep(min(self.poll_interval, timeout - waited))

    def download(self, link: str, part: Path, ref: str) -> None:
        """Stream the export zip to ``part``; the core client retries and checks the length."""
        with progress(f"download {ref}", unit="bytes") as update, open(part, "wb") as out:
            try:
                self.http.download(link, out, what=f"Roboflow export {ref}",
                                   progress=lambda done, total: update(done, total=total))
            except HttpError as e:  # signed links carry credentials in their query string
                raise HttpError(str(e).replace(link, _without_query(link)), e.status) from None


def api_slot(ctx: PullContext, workspace: str, project: str, version: int, fmt: str) -> tuple[Path, str]:
    """The cache folder of one API export, and the format's API name; slugs checked first."""
    for flag, value in (("--workspace", workspace), ("--project", project)):
        if not SLUG.match(value):
            raise SourceError(f"roboflow: {flag} {value!r} is not a Roboflow slug (letters, digits, '-', '_', '.')")
    fmt_id = API_FORMAT_IDS.get(fmt, fmt)
    return ctx.cache_dir("api", workspace, project, str(version), fmt_id), fmt_id


def _api_error(status: int, ref: str) -> SourceError:
    if status in (401, 403):
        return SourceError(f"Roboflow refused the API key for {ref} (HTTP {status}): check ROBOFLOW_API_KEY "
                           f"and that the key belongs to this workspace")
    if status == 404:
        return SourceError(f"Roboflow has no {ref} (HTTP 404): check --workspace, --project, --version and --format")
    return SourceError(f"Roboflow export {ref}: the API returned HTTP {status}")


def _json_object(response: Any, what: str = "Roboflow export") -> dict[str, Any]:
    """The body as a JSON object, or ``{}`` (a 202 without progress is still a 202).

    Parsed by ``fields.loads``: a body too large or nested too deep is one line naming the request.
    """
    try:
        body = loads(response.content, what)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


@contextmanager
def _locked(slot: Path) -> Iterator[None]:
    """Hold a cache slot's lock, so that two pulls of one export download and unpack it once."""
    try:
        with exclusive(slot / ".lock", LOCK_TIMEOUT):
            yield
    except LockTimeout:
        raise SourceError(f"{slot}: another pull has held this export's lock for an hour") from None


@hookimpl
def tlsync_register_sources(register: Callable[[Source], None]) -> None:
    register(RoboflowSource())
