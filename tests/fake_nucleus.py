"""A fake Scale Nucleus API on a loopback server: enough of it for tlsync's pull and push.

It speaks the routes the official ``scale-nucleus`` client uses (HTTP Basic auth with the
key as user name, ``slice/{id}/info``, paged ``exportForTrainingPage``, the unpaged
``exportForTraining``, ``models/add``, ``uploadPredictions``) and serves the images it
generates itself, under signed-looking URLs whose query string changes on every export,
as real ones do. Items are kept as small records and rows are built on request, so a
100,000-item slice costs the server little memory.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from tlsync.testing.server import Faults, LoopbackServer, Request, Response

API = "/v1/nucleus"
LABELS = ("horse", "person", "dog")


@dataclass(slots=True)
class FakeItem:
    """One dataset item; ``row`` extras (other annotation types, URL keys) override the defaults."""

    ref_id: str
    boxes: list[tuple[str, float, float, float, float]]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FakeDataset:
    name: str
    items: dict[str, FakeItem] = field(default_factory=dict)


@dataclass
class FakeSlice:
    name: str
    dataset_id: str
    ref_ids: list[str] = field(default_factory=list)


@lru_cache(maxsize=4096)
def image_bytes(ref_id: str, size: tuple[int, int] = (64, 48)) -> bytes:
    """The PNG the server serves for ``ref_id``: deterministic, distinct per item."""
    return draw_png(ref_id, size)


def draw_png(ref_id: str, size: tuple[int, int]) -> bytes:
    """``image_bytes``, uncached.

    A background of one colour with a rectangle of another, both drawn from the id's hash.
    Encoded here with zlib rather than by PIL: the benchmarks' fake server serves 100,000
    of these on the same two cores as the pull it measures, and PIL's encoder cost it 0.1 ms
    of CPU an image, which a real CDN serving stored bytes never spends on the pull's machine.
    """
    seed = hashlib.sha256(ref_id.encode()).digest()
    w, h = size
    back, fill = seed[:3], seed[3:6]
    x0, y0, x1, y1 = w // 8, h // 8, w // 2, h // 2  # inclusive, as ImageDraw's rectangle
    inside = back * x0 + fill * (min(x1, w - 1) - x0 + 1) + back * max(0, w - 1 - x1)
    rows = b"".join(b"\x00" + (inside if y0 <= y <= y1 else back * w) for y in range(h))
    return b"".join([b"\x89PNG\r\n\x1a\n",
                     _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)),
                     _png_chunk(b"IDAT", zlib.compress(rows)), _png_chunk(b"IEND", b"")])


def _json(data: Any) -> Response:
    """An export's answer, encoded by orjson: the stdlib's encoder cost the benchmarks' fake
    server as much CPU per row as the pull it measures spends parsing it."""
    return Response(200, orjson.dumps(data), {"Content-Type": "application/json"})


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


class FakeNucleus:
    """Run with ``with FakeNucleus(api_key=...) as nucleus:``; point ``NUCLEUS_ENDPOINT`` at ``nucleus.endpoint``."""

    def __init__(self, api_key: str = "test_nucleus_key_0123456789", latency: float = 0.0,
                 faults: Faults | None = None, image_size: tuple[int, int] = (64, 48), paging: bool = True,
                 max_page_size: int = 10_000, photos: list[bytes] | None = None):
        """``photos``: real image files to serve instead of generated PNGs (item i gets photo i
        modulo their number), for benchmarks where image size and decoding matter."""
        self.api_key = api_key
        self.photos = photos or []
        self._photo_of: dict[str, int] = {}
        self._stored: dict[str, bytes] = {}  # generated PNGs, drawn when their item is added
        self.image_size = image_size
        self.max_page_size = max_page_size
        self.datasets: dict[str, FakeDataset] = {}
        self.slices: dict[str, FakeSlice] = {}
        self.models: dict[str, dict[str, Any]] = {}
        self.uploads: list[dict[str, Any]] = []  # uploadPredictions bodies, in arrival order
        # Hostile-server hooks for tests: ref_id -> f(good bytes, nth request for it) -> the
        # answer to send instead (cut short, gzipped, dripped...); and a replacement for
        # the export page handler (endless paging and such).
        self.misbehave: dict[str, Callable[[bytes, int], Response]] = {}
        self.page_handler: Callable[[Request], Response] | None = None
        self._image_hits: Counter[str] = Counter()
        self.server = LoopbackServer(latency=latency, faults=faults)
        self._exports = itertools.count(1)
        self._lock = threading.Lock()
        self._add_routes(paging)

    def __enter__(self) -> FakeNucleus:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.__exit__(*exc)

    @property
    def endpoint(self) -> str:
        return self.server.url + API

    # -- content ------------------------------------------------------------------------

    def add_dataset(self, dataset_id: str, name: str = "") -> FakeDataset:
        return self.datasets.setdefault(dataset_id, FakeDataset(name or dataset_id))

    def add_slice(self, slice_id: str, dataset_id: str, ref_ids: list[str] | None = None, name: str = "") -> FakeSlice:
        ref_ids = list(self.datasets[dataset_id].items) if ref_ids is None else ref_ids
        self.slices[slice_id] = FakeSlice(name or slice_id, dataset_id, list(ref_ids))
        return self.slices[slice_id]

    def add_items(self, dataset_id: str, n: int, prefix: str = "img", slice_id: str | None = None) -> list[str]:
        """Add ``n`` generated items (two boxes each) to a dataset, and to a slice if given."""
        dataset = self.add_dataset(dataset_id)
        start = len(dataset.items)
        w, h = self.image_size
        ref_ids = []
        for i in range(start, start + n):
            ref = f"{prefix}_{i:06d}"
            boxes = [(LABELS[i % len(LABELS)], 1.0, 2.0, w / 2, h / 2),
                     (LABELS[(i + 1) % len(LABELS)], w / 4, h / 4, w / 3, h / 3)]
            dataset.items[ref] = FakeItem(ref, boxes)
            self._photo_of[ref] = i
            if not self.photos:  # a CDN serves stored bytes: none are drawn while a pull is being timed
                self._stored[ref] = draw_png(ref, self.image_size)
            ref_ids.append(ref)
        if slice_id:
            self.slices[slice_id].ref_ids.extend(ref_ids)
        return ref_ids

    def add_item(self, dataset_id: str, item: FakeItem, slice_id: str | None = None) -> None:
        self.add_dataset(dataset_id).items[item.ref_id] = item
        if slice_id:
            self.slices[slice_id].ref_ids.append(item.ref_id)

    def image_data(self, ref_id: str) -> bytes:
        """The bytes served for ``ref_id``: its photo, or its generated PNG."""
        if self.photos and ref_id in self._photo_of:
            return self.photos[self._photo_of[ref_id] % len(self.photos)]
        stored = self._stored.get(ref_id)
        return stored if stored is not None else image_bytes(ref_id, self.image_size)

    def image_sha256(self, ref_id: str) -> str:
        return hashlib.sha256(self.image_data(ref_id)).hexdigest()

    def image_requests(self) -> list[str]:
        """Reference ids of every image request so far, answered or not."""
        return [r.path.rsplit("/", 1)[-1].removesuffix(".png") for r in self.server.requests("GET", "/images/")]

    # -- rows ---------------------------------------------------------------------------

    def row(self, dataset_id: str, item: FakeItem, export: int) -> dict[str, Any]:
        """The export row of one item, as ``exportForTraining(Page)`` returns it."""
        url = (f"{self.server.url}/images/{dataset_id}/{item.ref_id}.png"
               f"?X-Amz-Expires=3600&X-Amz-Signature=s{export:08x}")
        row: dict[str, Any] = {
            "item": {"reference_id": item.ref_id, "processed_url": url, "metadata": {"source": "fake"}},
            "box": [
                {"label": label, "type": "box", "geometry": {"x": x, "y": y, "width": w, "height": h},
                 "annotation_id": f"ann_{item.ref_id}_{n}", "metadata": {}}
                for n, (label, x, y, w, h) in enumerate(item.boxes)
            ],
            "polygon": [], "line": [], "keypoints": [], "cuboid": [], "category": [], "multicategory": [],
            "segmentation": None,
        }
        row.update(item.extra)
        return row

    def _rows(self, kind: str, object_id: str) -> tuple[str, list[str]] | None:
        if kind == "slice":
            slc = self.slices.get(object_id)
            return (slc.dataset_id, slc.ref_ids) if slc else None
        dataset = self.datasets.get(object_id)
        return (object_id, list(dataset.items)) if dataset else None

    # -- routes -------------------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        expected = "Basic " + base64.b64encode(f"{self.api_key}:".encode()).decode()
        return request.headers.get("Authorization") == expected

    def _add_routes(self, paging: bool) -> None:
        route = self.server.route

        def api(method: str, pattern: str):
            def wrap(handler):
                def guarded(request: Request) -> Response:
                    if not self._authorized(request):
                        return Response.json({"error": "Invalid API key"}, 401)
                    return handler(request)
                return route(method, API + pattern)(guarded)
            return wrap

        @api("GET", "/slice/{object_id}/info")
        def slice_info(request: Request) -> Response:
            slc = self.slices.get(request.params["object_id"])
            if slc is None:
                return Response.json({"error": "Slice not found"}, 404)
            return Response.json({"slice_id": request.params["object_id"], "name": slc.name,
                                  "dataset_id": slc.dataset_id, "length": len(slc.ref_ids)})

        @api("GET", "/dataset/{object_id}/info")
        def dataset_info(request: Request) -> Response:
            dataset = self.datasets.get(request.params["object_id"])
            if dataset is None:
                return Response.json({"error": "Dataset not found"}, 404)
            return Response.json({"dataset_id": request.params["object_id"], "name": dataset.name,
                                  "length": len(dataset.items)})

        def export_page(kind: str):
            def handler(request: Request) -> Response:
                if self.page_handler is not None:
                    return self.page_handler(request)
                found = self._rows(kind, request.params["object_id"])
                if found is None:
                    return Response.json({"error": f"{kind} not found"}, 404)
                dataset_id, ref_ids = found
                body = request.json() or {}
                offset = int(body.get("pageToken") or 0)
                size = min(int(body.get("pageSize") or self.max_page_size), self.max_page_size)
                export = next(self._exports)
                items = self.datasets[dataset_id].items
                data = [self.row(dataset_id, items[ref], export) for ref in ref_ids[offset:offset + size]]
                token = str(offset + size) if offset + size < len(ref_ids) else None
                return _json({"data": data, "nextPageToken": token})
            return handler

        def export_all(kind: str):
            def handler(request: Request) -> Response:
                found = self._rows(kind, request.params["object_id"])
                if found is None:
                    return Response.json({"error": f"{kind} not found"}, 404)
                dataset_id, ref_ids = found
                export = next(self._exports)
                items = self.datasets[dataset_id].items
                return _json({"exportedRows": [self.row(dataset_id, items[ref], export) for ref in ref_ids]})
            return handler

        for kind in ("slice", "dataset"):
            if paging:
                api("POST", f"/{kind}/{{object_id}}/exportForTrainingPage")(export_page(kind))
            api("GET", f"/{kind}/{{object_id}}/exportForTraining")(export_all(kind))

        @api("POST", "/models/add")
        def add_model(request: Request) -> Response:
            body = request.json()
            with self._lock:
                model_id = f"prj_{len(self.models) + 1:06d}"
                self.models[model_id] = body
            return Response.json({"model_id": model_id})

        @api("POST", "/dataset/{dataset_id}/model/{model_id}/uploadPredictions")
        def upload_predictions(request: Request) -> Response:
            dataset = self.datasets.get(request.params["dataset_id"])
            if dataset is None or request.params["model_id"] not in self.models:
                return Response.json({"error": "dataset or model not found"}, 404)
            body = request.json()
            with self._lock:
                self.uploads.append(body)
            known = sum(1 for a in body["annotations"] if a.get("reference_id") in dataset.items)
            return Response.json({"predictions_processed": known,
                                  "predictions_ignored": len(body["annotations"]) - known})

        @route("GET", "/images/{dataset_id}/{file}")
        def image(request: Request) -> Response:
            ref = request.params["file"].removesuffix(".png")
            if ref not in self.datasets.get(request.params["dataset_id"], FakeDataset("")).items:
                return Response(404, b"no such image")
            with self._lock:
                self._image_hits[ref] += 1
                nth = self._image_hits[ref]
            data = self.image_data(ref)
            if ref in self.misbehave:
                return self.misbehave[ref](data, nth)
            kind = "image/jpeg" if data[:2] == b"\xff\xd8" else "image/png"
            return Response(200, data, {"Content-Type": kind})


@contextmanager
def serving_slice(monkeypatch: Any, key: str, items: int, name: str, slice_name: str = "") -> Iterator[FakeNucleus]:
    """A fake Nucleus whose dataset ds_1 (``name``) and slice slc_1 hold ``items`` items; the
    environment (through pytest's ``monkeypatch``) points tlsync at it with ``key``."""
    with FakeNucleus(api_key=key) as fake:
        fake.add_dataset("ds_1", name)
        fake.add_slice("slc_1", "ds_1", [], name=slice_name or name)
        fake.add_items("ds_1", items, slice_id="slc_1")
        monkeypatch.setenv("NUCLEUS_API_KEY", key)
        monkeypatch.setenv("NUCLEUS_ENDPOINT", fake.endpoint)
        yield fake
