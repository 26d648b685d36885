"""A tlsync source for Label Studio: a JSON export file, or a project exported over the API.

    tlsync pull --source labelstudio --path export.json --images ./media --dataset cells
    LABEL_STUDIO_URL=https://ls.example.com LABEL_STUDIO_API_KEY=... \\
        tlsync pull --source labelstudio --project 7 --dataset cells

Label Studio stores a rectangle as percentages of the image it was drawn on
(``original_width`` x ``original_height``), with its top-left corner at ``x, y``; tlsync
wants pixels, so every box is scaled here. Each task may hold several annotations: skipped
ones (``was_cancelled``) are ignored and the most recently updated of the rest wins.
Model predictions are only used when asked, for tasks nobody annotated.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO
from urllib.parse import parse_qs, unquote, urlsplit

import click
from tlsync_labelstudio_client import API_KEY, URL, LabelStudioClient

from tlsync import Box, ImageRef, Item, PullContext, Source, hookimpl
from tlsync.atomic import atomic_write
from tlsync.errors import InvalidItem, SourceError, TlsyncError
from tlsync.fields import loads
from tlsync.files import read_bytes
from tlsync.http import HttpError
from tlsync.paths import ExportRoot

_EARLIEST = datetime.min.replace(tzinfo=timezone.utc)
SNAPSHOT_TIMEOUT = 600.0  # seconds an export snapshot may take on the server


class LabelStudioSource(Source):
    name = "labelstudio"
    description = "Label Studio: a JSON export file, or a project over the API (rectangle labels)."
    options = [
        click.Option(["--path"], type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="A JSON export file (Export > JSON)."),
        click.Option(["--project"], type=click.IntRange(min=1),
                     help=f"Project id to export over the API (with --url and ${API_KEY})."),
        click.Option(["--url"], envvar=URL, help=f"Label Studio server URL (default: ${URL})."),
        click.Option(["--images"], type=click.Path(exists=True, file_okay=False, path_type=Path),
                     help="Local media folder for /data/... images (default: download them from --url)."),
        click.Option(["--image-key"], default="image", show_default=True, help="Task data field holding the image."),
        click.Option(["--use-predictions"], is_flag=True,
                     help="For tasks with no annotation, use their latest model prediction."),
    ]
    concurrency = 8

    # The server whose /data/ images get the API key, set by items() for fetch() of the same
    # pull: fetch() only sees an item, and the key must never be stored in the item itself.
    _server: str | None = None
    _client: LabelStudioClient | None = None

    def items(self, ctx: PullContext, path: Path | None = None, project: int | None = None, url: str | None = None,
              images: Path | None = None, image_key: str = "image", use_predictions: bool = False,
              **_: Any) -> Iterator[Item]:
        if (path is None) == (project is None):
            raise SourceError("labelstudio: give --path EXPORT.json or --project ID (one of them)")
        self._server = url.rstrip("/") if url else None
        self._client = LabelStudioClient(self.http, self._server) if self._server else None
        if project is not None:
            where, export = f"Label Studio project {project}", self._export(ctx, project, use_predictions)
        else:
            assert path is not None  # one of the two, checked above
            where, export = str(path), path
        tasks = _load(export, where)
        ctx.note(f"{where}: {len(tasks)} tasks")
        folders = (images, export.parent if project is None else None)
        predicted = 0
        for index, task in enumerate(tasks):
            item = self._item(ctx, where, index, task, folders, image_key, use_predictions)
            if item is not None:
                predicted += "prediction" in item.metadata
                yield item
        if use_predictions:
            ctx.note(f"{where}: {predicted} of {len(tasks)} tasks used a model prediction (nobody annotated them)")

    def fetch(self, item: Item, out: BinaryIO) -> None:
        """Images under the server's /data/ need the API key; any other URL must never see it."""
        if self._client and item.image.uri.startswith(self._client.server + "/data/"):
            self._client.download(item.image.uri, out, what=f"task {item.id}")
        else:
            super().fetch(item, out)

    def _export(self, ctx: PullContext, project: int, full_predictions: bool) -> Path:
        """Download the project's JSON export, every task of it, into the source's cache (whole, or not at all).

        Label Studio's plain export leaves out tasks nobody annotated unless ``download_all_tasks=true``,
        and gives predictions as ids only; ``--use-predictions`` needs their boxes, which only an
        export snapshot made with ``serialization_options.predictions.only_id=false`` holds.
        """
        if self._client is None:
            raise SourceError(f"--project needs the Label Studio server: pass --url or set {URL}")
        client, what = self._client, f"Label Studio project {project} export"
        folder = ctx.cache_dir(f"project-{project}")
        try:
            if full_predictions:
                snapshot = _Snapshot(client, project)
                try:
                    url = snapshot.make()
                    atomic_write(folder / "export.json", lambda out: client.download(url, out, what=what))
                finally:
                    snapshot.delete()
            else:
                url = f"{client.server}/api/projects/{project}/export?exportType=JSON&download_all_tasks=true"
                atomic_write(folder / "export.json", lambda out: client.download(url, out, what=what))
        except HttpError as e:
            if e.status == 404:
                raise SourceError(f"Label Studio project {project} not found at {client.server}") from None
            raise
        return folder / "export.json"

    def _item(self, ctx: PullContext, where: str, index: int, task: Any, folders: tuple[Path | None, Path | None],
              image_key: str, use_predictions: bool) -> Item | None:
        task_id = task.get("id") if isinstance(task, dict) else None
        label = f"{where}: task {task_id if task_id is not None else f'#{index}'}"
        if not isinstance(task_id, (int, str)) or isinstance(task_id, bool) or task_id == "":
            ctx.bad(f"{label}: field 'id' is missing (is this Label Studio's JSON export?)")
            return None
        data = task.get("data")
        image = data.get(image_key) if isinstance(data, dict) else None
        if not isinstance(image, str) or not image:
            ctx.bad(f"{label}: data.{image_key} is missing (name the image field with --image-key)")
            return None
        wrong = next((k for k in ("annotations", "predictions") if task.get(k) is not None
                      and not isinstance(task[k], list)), None)
        if wrong:
            ctx.bad(f"{label}: field '{wrong}' must be a list (got {type(task[wrong]).__name__})")
            return None
        chosen, origin = _latest(task.get("annotations"), skip_cancelled=True), "annotation"
        if chosen is None and use_predictions:
            chosen, origin = _latest(task.get("predictions"), skip_cancelled=False), "prediction"
        if chosen is None:
            ctx.skip("tasks without a usable annotation (unlabelled or skipped)")
            return None
        uri = self._image_uri(ctx, label, image, *folders)
        if uri is None:
            return None
        boxes = _boxes(ctx, f"{label}: {origin} {chosen.get('id')}", chosen.get("result"))
        if boxes is None:
            return None
        # ctx.item: an id with a control character is this task's bad field, not the end of the pull
        return ctx.item(task_id, ImageRef(uri), boxes, metadata={"task": task_id, origin: chosen.get("id")},
                        where=label)

    def _image_uri(self, ctx: PullContext, label: str, image: str, images: Path | None,
                   export_dir: Path | None) -> str | None:
        """Where an image's bytes are.

        URLs stay as they are; Label Studio's own ``/data/...`` paths map into ``--images``
        (its media folder, or the local-storage root for ``/data/local-files/?d=``) or else
        onto the server; any other path is relative to ``--images`` or the export file.
        """
        parts = urlsplit(image)
        base = images or export_dir
        if parts.scheme in ("http", "https"):
            return image
        if parts.scheme:
            ctx.bad(f"{label}: image {image!r}: {parts.scheme}:// cloud storage is not supported; "
                    f"sync it to a local folder and pass --images")
            return None
        if image.startswith("/data/"):
            if images is None and self._server:
                return self._server + image
            if images is None:
                ctx.bad(f"{label}: image {image} is on the Label Studio server: pass --images or --url")
                return None
            base = images
            if image.startswith("/data/local-files/"):
                image = parse_qs(parts.query).get("d", [""])[0]
            else:
                image = unquote(parts.path[len("/data/"):])
        relative_path = PurePosixPath(image)
        if base is None or relative_path.is_absolute() or ".." in relative_path.parts or not relative_path.parts:
            ctx.bad(f"{label}: image {image!r} must be a path inside --images")
            return None
        # Lexically inside is not enough: a symlink in the media folder may still lead out of it.
        return str(ExportRoot(base).check(base.joinpath(*relative_path.parts), f"{label}: data image"))


class _Snapshot:
    """An export snapshot on the server (``POST /api/projects/{id}/exports``), made, waited for and deleted."""

    def __init__(self, client: LabelStudioClient, project: int, timeout: float = SNAPSHOT_TIMEOUT):
        self.client, self.project, self.timeout = client, project, timeout
        self.id: int | None = None

    def make(self) -> str:
        """Create the snapshot with full predictions and every task; its download URL once it is complete."""
        route = f"/api/projects/{self.project}/exports/"
        made = self.client.json("POST", route, json={
            "title": "tlsync pull", "task_filter_options": {},
            "serialization_options": {"predictions": {"only_id": False}, "drafts": {"only_id": True}}})
        if not isinstance(made, dict) or not isinstance(made.get("id"), int):
            raise SourceError(f"Label Studio: POST {route} returned no export id")
        self.id = made["id"]
        ends = time.monotonic() + self.timeout
        status = made.get("status")
        while status != "completed":  # the community server finishes before answering; Enterprise works behind
            if status == "failed" or time.monotonic() > ends:
                raise SourceError(f"Label Studio project {self.project}: export snapshot {self.id} "
                                  f"{'failed' if status == 'failed' else f'not done after {self.timeout:g}s'}")
            time.sleep(1.0)
            answer = self.client.json("GET", f"{route}{self.id}")
            status = answer.get("status") if isinstance(answer, dict) else None
        return f"{self.client.server}{route}{self.id}/download?exportType=JSON"

    def delete(self) -> None:
        """Leave no snapshot behind (best effort: the pull's own error, if any, is what the user needs)."""
        if self.id is not None:
            try:
                self.client.json("DELETE", f"/api/projects/{self.project}/exports/{self.id}")
            except TlsyncError:
                pass


def _load(path: Path, where: str) -> list[Any]:
    try:  # a regular file only (a FIFO would hang), parsed with its size and depth bounded
        tasks = loads(read_bytes(path), where)
    except json.JSONDecodeError as e:
        raise SourceError(f"{where}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except ValueError as e:
        raise SourceError(f"{where}: not valid JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SourceError(f"{where}: cannot read it ({e})") from None
    if not isinstance(tasks, list):
        raise SourceError(f"{where}: expected a list of tasks (Label Studio's JSON export), got {type(tasks).__name__}")
    return tasks


def _latest(entries: Any, skip_cancelled: bool) -> dict[str, Any] | None:
    """The most recently updated annotation (or prediction), skipped ones left out."""
    entries = entries if isinstance(entries, list) else ()  # a platform row's wrong type: nothing usable
    usable = [e for e in entries if isinstance(e, dict) and not (skip_cancelled and e.get("was_cancelled"))]
    return max(usable, key=lambda e: (_when(e.get("updated_at") or e.get("created_at")), _number_or_zero(e.get("id"))),
               default=None)


def _when(text: Any) -> datetime:
    try:
        moment = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return _EARLIEST
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _number_or_zero(value: Any) -> float:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _boxes(ctx: PullContext, label: str, results: Any) -> list[Box] | None:
    """``rectanglelabels`` results in pixels; other result types are counted as not used."""
    if not isinstance(results, list):
        ctx.bad(f"{label}: field 'result' must be a list")
        return None
    boxes: list[Box] = []
    for result in results:
        kind = result.get("type") if isinstance(result, dict) else None
        if kind != "rectanglelabels":
            ctx.count_not_used(f"{kind or 'untyped'} results")
            continue
        where = f"{label}: result {result.get('id')}"
        value = result.get("value") if isinstance(result.get("value"), dict) else {}
        size = [result.get("original_width"), result.get("original_height")]
        geometry: list[Any] = [value.get(k) for k in ("x", "y", "width", "height")]  # numbers once checked below
        if not all(_is_number(v) and v > 0 for v in size):
            ctx.bad(f"{where}: original_width/original_height missing, so its percentages cannot become pixels")
            continue
        if not all(_is_number(v) for v in geometry):
            ctx.bad(f"{where}: value x, y, width and height must be numbers")
            continue
        names = value.get("rectanglelabels")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            ctx.bad(f"{where}: value.rectanglelabels must list at least one label")
            continue
        if value.get("rotation"):
            ctx.count_not_used("rotated rectangles")
            continue
        x, y, w, h = geometry
        if w <= 0 or h <= 0:
            ctx.bad(f"{where} '{names[0]}' has no area (width {w:g}%, height {h:g}%)")
            continue
        sx, sy = size[0] / 100, size[1] / 100
        box_id = str(result["id"]) if result.get("id") is not None else None
        try:  # finite inputs can still overflow to inf once scaled: the Box refuses that, named
            boxes += [Box(name, x * sx, y * sy, w * sx, h * sy, id=box_id) for name in names]
        except InvalidItem as e:
            ctx.bad(f"{where}: {e}")
    return boxes


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@hookimpl
def tlsync_register_sources(register: Any) -> None:
    register(LabelStudioSource())


@hookimpl
def tlsync_register_targets(register: Any) -> None:
    from tlsync_labelstudio_target import LabelStudioTarget

    register(LabelStudioTarget())
