"""Scale Nucleus: pull slices or whole datasets, push a run's predictions back as a model.

Pull streams the export page by page and hands each row to the core as an ``Item``; the
core's pull engine downloads the images (64 at a time by default) into the store. Each
image's cache key is the item's reference id plus its URL without the query string:
Nucleus signs image URLs afresh on every export, so keying on the full URL would
re-download an unchanged slice every time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any, cast

import click

from tlsync.errors import InvalidItem, TlsyncError
from tlsync.fields import BadField, Fields
from tlsync.format import Box, ImageRef, Item
from tlsync.hookspecs import hookimpl
from tlsync.http import HttpClient
from tlsync.secrets import get_secret, stored_uri
from tlsync.sources import PullContext, Source
from tlsync.targets import Selection, Target

from .nucleus_api import MAX_PREDICTIONS_PER_REQUEST, NucleusAPI
from .nucleus_select import send_to_slice

URL_KEYS = ("processed_url", "image_url", "original_image_url")
UNUSED_KINDS = ("line", "keypoints", "cuboid", "category", "multicategory")
POOL_SIZE = 256  # --concurrency's maximum: every fetch thread keeps its keep-alive connection


def _api(http: HttpClient) -> NucleusAPI:
    return NucleusAPI(get_secret("NUCLEUS_API_KEY"), http=http)


def _box(ann: Any, ref: str, ctx: PullContext) -> Box | None:
    """A Nucleus box annotation as a ``Box``; bad ones go through ``ctx.bad``."""
    try:
        row = Fields(ann, f"item '{ref}': box", "each box annotation")
        ann_id = row.id("annotation_id")
        geometry = row.fields("geometry")
        # Box refuses a missing or non-number coordinate with a one-line InvalidItem.
        x, y, width, height = (cast(Any, geometry.get(key)) for key in ("x", "y", "width", "height"))
        return Box(cast(Any, row.get("label")), x, y, width, height, ann_id, metadata=row.mapping("metadata"))
    except InvalidItem as e:
        ctx.bad(str(e) if str(e).startswith("item ") else f"item '{ref}': {e}")
        return None


def _polygon_box(ann: Any, ref: str, ctx: PullContext) -> Box | None:
    """The bounding box of a polygon's vertices (for ``--polygons-as-boxes``)."""
    try:
        row = Fields(ann, f"item '{ref}': polygon", "each polygon annotation")
        ann_id = row.id("annotation_id")
        where = f"item '{ref}': polygon {ann_id}"
        vertices = [Fields(v, where, "each vertex") for v in Fields(row.mapping("geometry"), where).array("vertices")]
        xs = [cast(float, v.number("x")) for v in vertices if v.get("x") is not None]
        ys = [cast(float, v.number("y")) for v in vertices if v.get("y") is not None]
        if len(xs) != len(vertices) or len(ys) != len(vertices) or not vertices:
            raise BadField(f"{where}: field 'geometry.vertices' must be a list of {{x, y}} points")
        return Box(cast(Any, row.get("label")), min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys), ann_id,
                   metadata={"from": "polygon"})
    except InvalidItem as e:
        ctx.bad(str(e) if str(e).startswith("item ") else f"item '{ref}': polygon {e}")
    return None


def row_to_item(row: Any, n: int, ctx: PullContext, polygons_as_boxes: bool = False) -> Item | None:
    """One export row -> an ``Item`` (None when the row is bad and ``--on-error skip``).

    Every field is read through ``Fields``: a wrong type is this row's bad field, named.
    """
    try:
        return _row_item(Fields(row, f"Nucleus export row {n}"), n, ctx, polygons_as_boxes)
    except InvalidItem as e:
        ctx.bad(str(e))
        return None


def _row_item(row: Fields, n: int, ctx: PullContext, polygons_as_boxes: bool) -> Item | None:
    item = Fields(row.get("item"), f"Nucleus export row {n}", "field 'item'")
    ref = item.id("reference_id") or item.id("ref_id")
    if not ref:
        raise BadField(f"Nucleus export row {n}: item has no 'reference_id'")
    row.where = item.where = f"item '{ref}'"
    url = next((u for k in URL_KEYS if (u := item.string(k))), None)
    if url is None:
        raise BadField(f"item '{ref}': no image URL (none of {', '.join(URL_KEYS)})")
    if not url.startswith(("http://", "https://")):
        raise BadField(f"item '{ref}': image URL {url.split('?')[0]} is not http(s); "
                       f"tlsync downloads Nucleus images over HTTP")
    metadata = item.mapping("metadata")
    boxes_in, polygons = row.array("box"), row.array("polygon")
    unused = {kind: len(row.array(kind)) for kind in UNUSED_KINDS}
    segmentation = row.get("segmentation") is not None
    boxes = [_box(ann, ref, ctx) for ann in boxes_in]
    if polygons_as_boxes:
        boxes += [_polygon_box(ann, ref, ctx) for ann in polygons]
    elif polygons:
        ctx.count_not_used("polygon", len(polygons))
    for kind, count in unused.items():
        if count:
            ctx.count_not_used(kind, count)
    if segmentation:
        ctx.count_not_used("segmentation")
    image = ImageRef(url, cache_key=f"nucleus:{ref}:{stored_uri(url).split('?', 1)[0]}")
    return Item(ref, image, [b for b in boxes if b is not None], metadata=metadata)


class NucleusSource(Source):
    """One instance serves every pull; the key is read per pull, so a changed key takes effect."""

    name = "nucleus"
    description = "Scale Nucleus slices or datasets over the REST API (key: NUCLEUS_API_KEY)."
    concurrency = 64  # measured: see BENCHMARKS.md (Nucleus pull); 429s hold back every thread
    options = [
        click.Option(["--slice", "slice_id"], help="Nucleus slice id (slc_...) to pull."),
        click.Option(["--dataset-id"], help="Nucleus dataset id (ds_...) to pull whole, instead of a slice."),
        click.Option(["--polygons-as-boxes"], is_flag=True, help="Use each polygon's bounding box as a box."),
        click.Option(["--page-size"], type=click.IntRange(1, 10_000), default=1000, show_default=True,
                     help="Export rows per API request (lower it if Nucleus times out)."),
    ]

    def __init__(self, http: HttpClient | None = None):
        self._http = http or HttpClient(pool_size=POOL_SIZE)

    def items(self, ctx: PullContext, slice_id: str | None = None, dataset_id: str | None = None,
              polygons_as_boxes: bool = False, page_size: int = 1000, **_: Any) -> Iterator[Item]:
        if slice_id and not dataset_id:
            kind, object_id = "slice", slice_id
        elif dataset_id and not slice_id:
            kind, object_id = "dataset", dataset_id
        else:
            raise TlsyncError("nucleus: give exactly one of --slice slc_... or --dataset-id ds_...")
        api = _api(self.http)
        rows = api.export_rows(kind, object_id, page_size)  # its first page loads while we ask for the info
        info = api.info(kind, object_id)
        where = f" of dataset {info['dataset_id']}" if kind == "slice" and info.get("dataset_id") else ""
        ctx.note(f"Nucleus {kind} '{info.get('name', object_id)}' ({object_id}){where}")
        for n, row in enumerate(rows, 1):
            item = row_to_item(row, n, ctx, polygons_as_boxes)
            if item is not None:
                yield item


def box_prediction(item_id: str, box: Box) -> dict[str, Any]:
    """A predicted box in the ``uploadPredictions`` format (the official BoxPrediction payload)."""
    if box.confidence is None or not 0.0 <= box.confidence <= 1.0:
        raise TlsyncError(f"item '{item_id}': box '{box.label}' needs a confidence between 0 and 1 "
                          f"(got {box.confidence!r})")
    return {
        "type": "box", "label": box.label, "reference_id": item_id, "confidence": box.confidence,
        "geometry": {"x": box.x, "y": box.y, "width": box.width, "height": box.height},
        "metadata": box.metadata,
    }


def model_metadata(run: dict[str, Any]) -> dict[str, Any]:
    """The run's name, categories and config, made JSON-safe (paths and such as strings)."""
    return json.loads(json.dumps({"tlsync_run": run.get("name"), "categories": run.get("categories"),
                                  "config": run.get("config")}, default=str))


class NucleusTarget(Target):
    """Creates one Nucleus model per push and uploads its boxes in batches of at most 5000."""

    name = "nucleus"
    description = "Upload a run's box predictions to a Nucleus dataset as a model (key: NUCLEUS_API_KEY)."
    options = [
        click.Option(["--dataset-id"], required=True, help="Nucleus dataset id (ds_...) the items belong to."),
        click.Option(["--model-name"], required=True, help="Name of the Nucleus model the predictions belong to."),
        click.Option(["--model-ref"], help="The model's reference_id in Nucleus (default: the model name)."),
        click.Option(["--slice", "slice_id"], help="Only push predictions for items in this slice."),
        click.Option(["--update"], is_flag=True, help="Replace this model's earlier predictions on the same items."),
        click.Option(["--upload-batch"], type=click.IntRange(1, MAX_PREDICTIONS_PER_REQUEST),
                     default=MAX_PREDICTIONS_PER_REQUEST, show_default=True, help="Boxes per upload request."),
    ]

    selection_options = [
        click.Option(["--dataset-id"], required=True, help="Nucleus dataset id (ds_...) the pool's items belong to."),
        click.Option(["--slice-name"], required=True,
                     help="Slice to create (or complete, if one of this name exists) with the selected items."),
        click.Option(["--with-predictions"], is_flag=True,
                     help="Also upload the run's boxes for the selected items, as the Nucleus model tlsync-<run>."),
    ]

    def __init__(self, http: HttpClient | None = None):
        self.http = http or HttpClient()

    def send_selection(self, selection: Selection, run: dict[str, Any], dataset_id: str = "", slice_name: str = "",
                       with_predictions: bool = False, **_: Any) -> dict[str, Any]:
        """The selection as a slice (see ``nucleus_select``); with predictions, pushed as a model (``update``,
        so a re-run replaces rather than duplicates them)."""
        summary = send_to_slice(_api(self.http), dataset_id, slice_name, [item.id for item in selection.items])
        if with_predictions:
            pushed = self.push(iter(selection.items), run, dataset_id=dataset_id, model_name=f"tlsync-{run['name']}",
                               update=True)
            summary.update({"model_id": pushed["model_id"], "boxes": pushed["boxes"]})
        return summary

    def item_filter(self, slice_id: str | None = None, **_: Any) -> Callable[[Item], bool] | None:
        """With ``--slice``: only the slice's items are predicted (reference ids paged from Nucleus)."""
        if not slice_id:
            return None
        api = _api(self.http)
        api.info("slice", slice_id)
        wanted = {item.get("reference_id") or item.get("ref_id") for r in api.export_rows("slice", slice_id, 10_000)
                  if isinstance(r, dict) and isinstance(item := r.get("item"), dict)}  # other shapes: not an item
        return lambda item: item.id in wanted

    def push(self, predictions: Iterator[Item], run: dict[str, Any], dataset_id: str = "", model_name: str = "",
             model_ref: str | None = None, update: bool = False, upload_batch: int = MAX_PREDICTIONS_PER_REQUEST,
             **_: Any) -> dict[str, Any]:
        api = _api(self.http)
        api.info("dataset", dataset_id)  # a wrong id fails here, before a model is created
        model_id = api.create_model(model_name, model_ref or model_name, model_metadata(run))
        summary: dict[str, Any] = {"model_id": model_id, "items": 0, "boxes": 0, "requests": 0,
                   "predictions_processed": 0, "predictions_ignored": 0}
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            processed, ignored = api.upload_predictions(dataset_id, model_id, batch, update)
            summary["predictions_processed"] += processed
            summary["predictions_ignored"] += ignored
            summary["requests"] += 1
            batch.clear()

        for item in predictions:
            summary["items"] += 1
            for box in item.annotations:
                batch.append(box_prediction(item.id, box))
                summary["boxes"] += 1
                if len(batch) >= upload_batch:
                    flush()
        if batch:
            flush()
        return summary


@hookimpl
def tlsync_register_sources(register: Callable[[Source], None]) -> None:
    register(NucleusSource())


@hookimpl
def tlsync_register_targets(register: Callable[[Target], None]) -> None:
    register(NucleusTarget())
