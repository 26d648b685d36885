"""A platform's malformed row is that item's bad field; a body too deep or too large names its request.

Driven through ``tlsync pull`` against the fake Nucleus on 127.0.0.1, ``responses`` for the
Roboflow API, and Label Studio JSON exports.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import responses
from fake_nucleus import FakeItem, FakeNucleus, serving_slice

from tlsync.connectors.roboflow import RoboflowSource
from tlsync.testing.server import Request, Response

KEY = "nucleus_live_rows_0123456789"
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.fixture
def nucleus(monkeypatch: pytest.MonkeyPatch):
    with serving_slice(monkeypatch, KEY, 3, "rows") as fake:
        yield fake


def pull_nucleus(run_cli: Any, *extra: str) -> Any:
    return run_cli("pull", "--source", "nucleus", "--slice", "slc_1", "--dataset", "rows", *extra)


def assert_one_line(result: Any, *needles: str) -> None:
    assert result.exit_code != 0, result.stdout
    assert "Traceback" not in result.stderr and "failed:" not in result.stderr, result.stderr
    text = result.stderr.strip()
    assert "\n" not in text, text
    for needle in needles:
        assert needle in text, text


BAD_ROWS = [
    ("box-int", {"box": 5}, "field 'box'"),
    ("line-str", {"line": "abc"}, "field 'line'"),
    ("polygon-obj", {"polygon": {"a": 1}}, "field 'polygon'"),
    ("box-geometry-list", {"box": [{"label": "dog", "geometry": [1, 2], "annotation_id": "a"}]}, "field 'geometry'"),
    ("box-x-string", {"box": [{"label": "dog", "geometry": {"x": "1", "y": 1, "width": 2, "height": 2}}]},
     "field 'x'"),
    ("box-label-list", {"box": [{"label": ["dog"], "geometry": {"x": 1, "y": 1, "width": 2, "height": 2}}]},
     "field 'label'"),
    ("box-id-object", {"box": [{"label": "dog", "annotation_id": {"a": 1},
                                "geometry": {"x": 1, "y": 1, "width": 2, "height": 2}}]}, "field 'annotation_id'"),
    ("box-huge", {"box": [{"label": "dog", "geometry": {"x": 1e308, "y": 1, "width": 1e308, "height": 2}}]},
     "outside"),
    ("metadata-int", {"item": {"reference_id": "metadata-int", "processed_url": "http://x/a.png", "metadata": 7}},
     "field 'metadata'"),
    ("item-list", {"item": ["a"]}, "field 'item'"),
    ("url-int", {"item": {"reference_id": "url-int", "processed_url": 5}}, "field 'processed_url'"),
]


@pytest.mark.parametrize("ref, extra, field", BAD_ROWS, ids=[r[0] for r in BAD_ROWS])
def test_a_malformed_nucleus_row_is_that_items_bad_field(nucleus: FakeNucleus, run_cli: Any, ref: str,
                                                         extra: dict[str, Any], field: str) -> None:
    nucleus.add_item("ds_1", FakeItem(ref, [("dog", 2, 2, 10, 10)], extra), slice_id="slc_1")

    assert_one_line(pull_nucleus(run_cli), field)

    skipped = pull_nucleus(run_cli, "--on-error", "skip")
    assert skipped.exit_code == 0, skipped.stderr
    assert "rows@1" in skipped.stdout and field in skipped.stdout + skipped.stderr


def test_polygon_vertices_of_the_wrong_type(nucleus: FakeNucleus, run_cli: Any) -> None:
    bad = {"polygon": [{"label": "dog", "geometry": {"vertices": [{"x": "a", "y": 1}, {"x": 3, "y": 4}]}},
                       {"label": "dog", "geometry": {"vertices": 9}}]}
    nucleus.add_item("ds_1", FakeItem("poly", [], bad), slice_id="slc_1")
    result = pull_nucleus(run_cli, "--polygons-as-boxes", "--on-error", "skip")
    assert result.exit_code == 0, result.stderr
    assert "field 'x'" in result.stdout + result.stderr and "field 'vertices'" in result.stdout + result.stderr


def test_an_integer_reference_id_is_normalised_to_a_string(nucleus: FakeNucleus, run_cli: Any, store: Any) -> None:
    nucleus.add_item("ds_1", FakeItem("int-ref", [("dog", 2, 2, 10, 10)],
                                      {"item": {"reference_id": 12345, "processed_url": None}}), slice_id="slc_1")
    real = nucleus.row("ds_1", nucleus.datasets["ds_1"].items["img_000000"], 1)["item"]["processed_url"]
    nucleus.datasets["ds_1"].items["int-ref"].extra["item"]["processed_url"] = real
    result = pull_nucleus(run_cli)
    assert result.exit_code == 0, result.stderr
    assert "12345" in {item.id for item in store.open("rows").items()}


@pytest.mark.parametrize("body, words", [(DEEP, "nests deeper than"), (b" " * 4096 + b"{}", "byte limit")])
def test_a_page_too_deep_or_too_large_names_the_request(nucleus: FakeNucleus, run_cli: Any, monkeypatch: Any,
                                                        body: bytes, words: str) -> None:
    monkeypatch.setenv("TLSYNC_MAX_JSON_BYTES", "4000")
    if words == "nests deeper than":
        monkeypatch.delenv("TLSYNC_MAX_JSON_BYTES")
    nucleus.page_handler = lambda request: Response(200, body, {"Content-Type": "application/json"})
    assert_one_line(pull_nucleus(run_cli, "--on-error", "skip"), words, "exportForTrainingPage", "POST")


def test_a_nucleus_page_with_rows_of_every_wrong_type(nucleus: FakeNucleus, run_cli: Any) -> None:
    """A page whose rows are not objects at all: each is a counted bad row, the good ones are pulled."""
    good = nucleus.row("ds_1", nucleus.datasets["ds_1"].items["img_000000"], 1)

    def page(request: Request) -> Response:
        return Response.json({"data": [5, "row", None, [1], {"item": None}, good], "nextPageToken": None})

    nucleus.page_handler = page
    result = pull_nucleus(run_cli, "--on-error", "skip")
    assert result.exit_code == 0, result.stderr
    assert "1 items" in result.stdout and "must be an object" in result.stdout + result.stderr


API = "https://api.roboflow.test"


@pytest.mark.parametrize("body, words", [(DEEP, "nests deeper than"), (b"[" * 10 + b"]" * 10, "gave no export.link")])
def test_roboflow_api_answer_too_deep(run_cli: Any, monkeypatch: pytest.MonkeyPatch, body: bytes,
                                      words: str) -> None:
    monkeypatch.setenv("ROBOFLOW_API_KEY", "rf-key-0123456789")
    monkeypatch.setenv("ROBOFLOW_API_URL", API)
    monkeypatch.setattr(RoboflowSource, "poll_interval", 0.0)
    with responses.RequestsMock() as rsps:
        rsps.get(f"{API}/acme/chess/3/coco", body=body, status=200, content_type="application/json")
        result = run_cli("pull", "--source", "roboflow", "--workspace", "acme", "--project", "chess",
                         "--version", "3", "--dataset", "rf")
    assert_one_line(result, words, "acme/chess/3")
    assert "rf-key-0123456789" not in result.stderr


def labelstudio_task(task_id: Any, **over: Any) -> dict[str, Any]:
    task = {"id": task_id, "data": {"image": "a.png"}, "annotations": [{"id": 1, "result": [
        {"id": "r1", "type": "rectanglelabels", "original_width": 64, "original_height": 48,
         "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rectanglelabels": ["cat"]}}]}]}
    task.update(over)
    return task


def test_labelstudio_rows_of_the_wrong_type(tmp_path: Path, run_cli: Any, tlsync_plugins: Any) -> None:
    lsmod = pytest.importorskip("tlsync_labelstudio")
    tlsync_plugins(lsmod)
    from tlsync.testing import write_image

    write_image(tmp_path / "a.png")
    tasks: list[Any] = [labelstudio_task(1), labelstudio_task(2, annotations=5), labelstudio_task(3, predictions="x"),
                        labelstudio_task(4, data=[1]), 7, labelstudio_task([1])]
    huge = labelstudio_task(5)
    huge["annotations"][0]["result"][0]["original_width"] = 1e308
    huge["annotations"][0]["result"][0]["value"]["x"] = 1e10
    tasks.append(huge)
    (tmp_path / "export.json").write_text(json.dumps(tasks))
    result = run_cli("pull", "--source", "labelstudio", "--path", str(tmp_path / "export.json"), "--dataset", "ls",
                     "--on-error", "skip")
    assert result.exit_code == 0, result.stderr
    out = result.stdout + result.stderr
    assert "2 items, 1 boxes" in result.stdout  # task 1, and task 5 without its overflowing box
    assert "field 'annotations'" in out and "must be finite" in out

    (tmp_path / "deep.json").write_bytes(DEEP)
    assert_one_line(run_cli("pull", "--source", "labelstudio", "--path", str(tmp_path / "deep.json"),
                            "--dataset", "ls2"), "deep.json")


def test_cvat_corners_that_overflow_are_that_boxs_bad_field(tmp_path: Path, run_cli: Any, tlsync_plugins: Any) -> None:
    cvat = pytest.importorskip("tlsync_cvat")
    tlsync_plugins(cvat)
    from tlsync.testing import write_image

    write_image(tmp_path / "images" / "a.png")
    (tmp_path / "annotations.xml").write_text(
        "<annotations><meta><task><labels><label><name>cat</name></label></labels></task></meta>"
        "<image id='0' name='a.png' width='64' height='48'>"
        "<box label='cat' xtl='-1e308' ytl='1' xbr='1e308' ybr='5'/>"
        "<box label='cat' xtl='2' ytl='2' xbr='20' ybr='20'/></image></annotations>")
    result = run_cli("pull", "--source", "cvat", "--path", str(tmp_path / "annotations.xml"), "--dataset", "cv",
                     "--on-error", "skip")
    assert result.exit_code == 0, result.stderr
    assert "1 items, 1 boxes" in result.stdout and "must be finite" in result.stdout + result.stderr
