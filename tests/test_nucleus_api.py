"""The Nucleus connector against a mocked API (``responses``): what it sends, and what it makes of answers."""

from __future__ import annotations

import base64
import io
import json
import logging

import pytest
import responses
from PIL import Image

from tlsync.connectors.nucleus import NucleusSource, NucleusTarget
from tlsync.errors import TlsyncError
from tlsync.format import Box, ImageRef, Item
from tlsync.http import HttpClient
from tlsync.pull import pull
from tlsync.sources import PullContext

KEY = "live_3f9c2e7a1b5d4c8e"
API = "https://nucleus.test/v1/nucleus"
CDN = "https://cdn.test/nucleus"
PAGE = f"{API}/slice/slc_1/exportForTrainingPage"
INFO = f"{API}/slice/slc_1/info"


@pytest.fixture(autouse=True)
def nucleus_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUCLEUS_API_KEY", KEY)
    monkeypatch.setenv("NUCLEUS_ENDPOINT", API)


@pytest.fixture
def mock():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        rsps.get(INFO, json={"slice_id": "slc_1", "name": "horses val", "dataset_id": "ds_1"})
        yield rsps


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def source(sleeps: list[float]) -> NucleusSource:
    return NucleusSource(http=HttpClient(sleep=sleeps.append))


def row(ref: str, id_key: str = "reference_id", url_keys: tuple[str, ...] = ("processed_url",), **lists) -> dict:
    item = {id_key: ref, "metadata": {"camera": "north"}}
    for key in url_keys:
        item[key] = f"{CDN}/{key}/{ref}.png?X-Amz-Signature=abc"
    annotations = {"box": [{"label": "horse", "type": "box", "annotation_id": f"ann_{ref}", "metadata": {},
                            "geometry": {"x": 1, "y": 2, "width": 10, "height": 8}}],
                   "polygon": [], "line": [], "keypoints": [], "cuboid": [], "category": [], "multicategory": [],
                   "segmentation": None}
    return {"item": item, **annotations, **lists}


def collect(source: NucleusSource, store, **options) -> tuple[list[Item], PullContext]:
    ctx = PullContext(store, "nucleus", options.pop("on_error", "fail"))
    return list(source.items(ctx, **{"slice_id": "slc_1", **options})), ctx


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 30)).save(out, "PNG")
    return out.getvalue()


def test_pages_are_followed_until_there_is_no_next_token(mock, source, store):
    mock.post(PAGE, json={"data": [row("a"), row("b")], "nextPageToken": "t1"})
    mock.post(PAGE, json={"data": [row("c"), row("d")], "nextPageToken": "t2"})
    mock.post(PAGE, json={"data": [row("e")], "nextPageToken": None})

    items, ctx = collect(source, store, page_size=2)

    assert [i.id for i in items] == ["a", "b", "c", "d", "e"]
    bodies = [json.loads(c.request.body) for c in mock.calls if c.request.url == PAGE]
    assert bodies == [{"pageToken": None, "pageSize": 2}, {"pageToken": "t1", "pageSize": 2},
                      {"pageToken": "t2", "pageSize": 2}]
    assert ctx.notes == ["Nucleus slice 'horses val' (slc_1) of dataset ds_1"]


@pytest.mark.parametrize("options", [{"slice_id": None}, {"dataset_id": "ds_1"}])
def test_exactly_one_of_slice_and_dataset_is_required(source, store, options):
    with pytest.raises(TlsyncError, match=r"give exactly one of --slice slc_\.\.\. or --dataset-id ds_\.\.\."):
        collect(source, store, **options)


def test_ref_id_is_read_like_reference_id(mock, source, store):
    mock.post(PAGE, json={"data": [row("a"), row("b", id_key="ref_id")], "nextPageToken": None})
    items, _ = collect(source, store)
    assert [i.id for i in items] == ["a", "b"]


@pytest.mark.parametrize("url_keys, used", [
    (("processed_url", "image_url", "original_image_url"), "processed_url"),
    (("image_url", "original_image_url"), "image_url"),
    (("original_image_url",), "original_image_url"),
])
def test_image_url_falls_back_from_processed_to_image_to_original(mock, source, store, url_keys, used):
    mock.post(PAGE, json={"data": [row("a", url_keys=url_keys)], "nextPageToken": None})
    (item,), _ = collect(source, store)
    assert item.image.uri == f"{CDN}/{used}/a.png?X-Amz-Signature=abc"
    # the signature changes on every export; the cache key must not
    assert item.image.cache_key == f"nucleus:a:{CDN}/{used}/a.png"


def test_every_annotation_type_in_one_row(mock, source, store):
    polygon = {"label": "fence", "type": "polygon", "annotation_id": "p1",
               "geometry": {"vertices": [{"x": 5, "y": 6}, {"x": 25, "y": 6}, {"x": 15, "y": 20}]}}
    full = row("a", polygon=[polygon], line=[{"label": "l"}], keypoints=[{"label": "k"}, {"label": "k"}],
               cuboid=[{"label": "c"}], category=[{"label": "day"}], multicategory=[{"labels": ["x"]}],
               segmentation={"mask_url": "s3://bucket/mask.png", "annotations": []})
    mock.post(PAGE, json={"data": [full], "nextPageToken": None})

    (item,), ctx = collect(source, store)
    assert [(b.label, b.x, b.y, b.width, b.height, b.id) for b in item.annotations] == [("horse", 1, 2, 10, 8, "ann_a")]
    assert item.metadata == {"camera": "north"}
    assert ctx.not_used == {"polygon": 1, "line": 1, "keypoints": 2, "cuboid": 1, "category": 1,
                            "multicategory": 1, "segmentation": 1}

    (item,), ctx = collect(source, store, polygons_as_boxes=True)
    assert [(b.label, b.x, b.y, b.width, b.height) for b in item.annotations] == [
        ("horse", 1, 2, 10, 8), ("fence", 5, 6, 20, 14)]
    assert "polygon" not in ctx.not_used


def test_bad_rows_name_the_item_and_obey_on_error(mock, source, store):
    no_url = row("b", url_keys=())
    bad_box = row("c")
    bad_box["box"][0]["geometry"]["width"] = -3
    mock.post(PAGE, json={"data": [row("a"), no_url, bad_box], "nextPageToken": None})

    with pytest.raises(TlsyncError, match=r"item 'b': no image URL \(none of processed_url, image_url"):
        collect(source, store)
    items, ctx = collect(source, store, on_error="skip")
    assert [(i.id, len(i.annotations)) for i in items] == [("a", 1), ("c", 0)]
    assert any("item 'c': box ann_c 'horse': width and height must be > 0" in reason for reason in ctx.skipped)


def test_invalid_key_is_reported_without_the_key(mock, source, store):
    mock.replace(responses.GET, INFO, json={"error": "unauthorized"}, status=401)
    with pytest.raises(TlsyncError) as e:
        collect(source, store)
    assert str(e.value).startswith("invalid Nucleus API key (HTTP 401")
    assert KEY not in str(e.value)


def test_missing_slice_is_named(mock, source, store):
    mock.get(f"{API}/slice/slc_nope/info", json={"error": "not found"}, status=404)
    with pytest.raises(TlsyncError, match="^slice slc_nope not found$"):
        collect(source, store, slice_id="slc_nope")


def test_429_waits_as_long_as_retry_after_says(mock, source, store, sleeps):
    mock.post(PAGE, json={"error": "slow down"}, status=429, headers={"Retry-After": "3"})
    mock.post(PAGE, json={"data": [row("a")], "nextPageToken": None})
    items, _ = collect(source, store)
    assert [i.id for i in items] == ["a"]
    # The info request runs alongside the first page: if it starts after the 429 it waits too.
    assert sleeps[0] == 3.0 and max(sleeps) <= 3.0 and len(sleeps) <= 2


def test_503_twice_then_success(mock, source, store, sleeps):
    mock.post(PAGE, status=503)
    mock.post(PAGE, status=503)
    mock.post(PAGE, json={"data": [row("a")], "nextPageToken": None})
    items, _ = collect(source, store)
    assert [i.id for i in items] == ["a"]
    assert len(sleeps) == 2 and sum(1 for c in mock.calls if c.request.url == PAGE) == 3


def test_malformed_json_is_a_clear_error(mock, source, store):
    mock.post(PAGE, body="<html>gateway hiccup", status=200)
    with pytest.raises(TlsyncError, match=rf"POST {PAGE} returned a body that is not valid JSON"):
        collect(source, store)


def test_page_without_data_is_a_clear_error(mock, source, store):
    mock.post(PAGE, json={"rows": []})
    with pytest.raises(TlsyncError, match="unexpected page"):
        collect(source, store)


def test_unpaged_export_is_used_only_when_paging_is_missing(mock, source, store):
    mock.post(PAGE, json={"error": "no such route"}, status=404)
    mock.get(f"{API}/slice/slc_1/exportForTraining", json={"exportedRows": [row("a"), row("b")]})
    items, _ = collect(source, store)
    assert [i.id for i in items] == ["a", "b"]


def test_image_failure_names_item_and_url_and_can_be_skipped(mock, source, store):
    mock.post(PAGE, json={"data": [row("a"), row("b")], "nextPageToken": None})
    mock.get(f"{CDN}/processed_url/a.png", body=png())
    mock.get(f"{CDN}/processed_url/b.png", status=503)

    # The message names the URL without its signed query.
    with pytest.raises(TlsyncError, match=rf"item 'b': GET {CDN}/processed_url/b.png failed after 6 attempts"):
        pull(store, source, {"slice_id": "slc_1"}, "horses")
    result = pull(store, source, {"slice_id": "slc_1"}, "horses", on_error="skip")
    assert result.items == 1 and sum(result.skipped.values()) == 1
    assert "item 'b'" in next(iter(result.skipped))


def test_the_key_goes_only_into_the_authorization_header_of_api_calls(mock, source, store, caplog):
    mock.post(PAGE, json={"data": [row("a"), row("b")], "nextPageToken": None})
    mock.get(f"{CDN}/processed_url/a.png", body=png())
    mock.get(f"{CDN}/processed_url/b.png", body=png())
    caplog.set_level(logging.DEBUG)

    result = pull(store, source, {"slice_id": "slc_1"}, "horses")

    assert result.items == 2
    basic = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
    for call in mock.calls:
        request = call.request
        to_api = request.url.startswith(API)
        assert request.headers.get("Authorization") == (basic if to_api else None), request.url
        others = {k: v for k, v in request.headers.items() if k != "Authorization"}
        assert KEY not in request.url + str(request.body or "") + json.dumps(others)
    assert caplog.records and not any(KEY in r.getMessage() for r in caplog.records)
    folder = store.open("horses").folder
    for name in ("dataset.json", "items.jsonl"):
        assert KEY not in (folder / name).read_text()


def prediction(ref: str, n: int) -> Item:
    boxes = [Box("horse", 1 + i, 2, 5, 6, confidence=0.5 + i / 100) for i in range(n)]
    return Item(ref, ImageRef(f"images/{ref}.png"), boxes)


def test_predictions_upload_in_batches(sleeps):
    target = NucleusTarget(http=HttpClient(sleep=sleeps.append))
    upload = f"{API}/dataset/ds_1/model/prj_9/uploadPredictions"
    with responses.RequestsMock() as mock:
        mock.get(f"{API}/dataset/ds_1/info", json={"dataset_id": "ds_1", "name": "horses"})
        mock.post(f"{API}/models/add", json={"model_id": "prj_9"})
        for processed, ignored in ((4, 0), (3, 1), (2, 0)):
            mock.post(upload, json={"predictions_processed": processed, "predictions_ignored": ignored})
        run = {"name": "horses-1", "categories": ["horse"], "config": {"model": "fasterrcnn", "epochs": 3}}
        summary = target.push(iter([prediction("a", 3), prediction("b", 0), prediction("c", 7)]), run,
                              dataset_id="ds_1", model_name="horse-frcnn", update=True, upload_batch=4)

        model = json.loads(mock.calls[1].request.body)
        uploads = [json.loads(c.request.body) for c in mock.calls if c.request.url == upload]

    assert model == {"name": "horse-frcnn", "reference_id": "horse-frcnn",
                     "metadata": {"tlsync_run": "horses-1", "categories": ["horse"], "config": run["config"]}}
    assert [len(u["annotations"]) for u in uploads] == [4, 4, 2]
    assert all(u["update"] is True for u in uploads)
    assert uploads[0]["annotations"][0] == {
        "type": "box", "label": "horse", "reference_id": "a", "confidence": 0.5,
        "geometry": {"x": 1.0, "y": 2.0, "width": 5.0, "height": 6.0}, "metadata": {}}
    assert [a["reference_id"] for u in uploads for a in u["annotations"]] == ["a"] * 3 + ["c"] * 7
    assert summary == {"model_id": "prj_9", "items": 3, "boxes": 10, "requests": 3,
                       "predictions_processed": 9, "predictions_ignored": 1}


def test_push_to_a_missing_dataset_creates_no_model():
    with responses.RequestsMock() as mock:
        mock.get(f"{API}/dataset/ds_nope/info", status=404)
        with pytest.raises(TlsyncError, match="^dataset ds_nope not found$"):
            NucleusTarget().push(iter([prediction("a", 1)]), {}, dataset_id="ds_nope", model_name="m")
        assert len(mock.calls) == 1
