"""A corpus of malformed COCO inputs: each gets its documented one-line error or counted skip,
never a traceback and never a half-written dataset."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image


def _valid() -> dict[str, Any]:
    return {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [4, 4, 20, 20], "iscrowd": 0},
            {"id": 11, "image_id": 2, "category_id": 2, "bbox": [30, 10, 16, 16], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }


def _mutate(fn: Callable[[dict], None]) -> Callable[[], dict]:
    def make() -> dict:
        data = copy.deepcopy(_valid())
        fn(data)
        return data
    return make


# (case id, JSON text or data factory, substring of the fail-mode error, fixable by --on-error skip)
CASES: list[tuple[str, Any, str, bool]] = [
    ("not-json", "{not json", "not valid JSON", False),
    ("json-list", "[1, 2]", "expected a JSON object", False),
    ("no-images-key", _mutate(lambda d: d.pop("images")), "missing or malformed key 'images'", False),
    ("no-annotations-key", _mutate(lambda d: d.pop("annotations")), "missing or malformed key 'annotations'", False),
    ("categories-not-list", _mutate(lambda d: d.update(categories={"a": 1})), "key 'categories'", False),
    ("category-without-name", _mutate(lambda d: d["categories"][0].pop("name")), "categories[0]", False),
    ("duplicate-category-id", _mutate(lambda d: d["categories"].append({"id": 1, "name": "x"})),
     "duplicate category id 1", False),
    ("duplicate-category-name", _mutate(lambda d: d["categories"].append({"id": 3, "name": "cat"})),
     "share the name 'cat'", False),
    ("unknown-category", _mutate(lambda d: d["annotations"][0].update(category_id=99)),
     "annotation 10: unknown category_id 99", True),
    ("unknown-image-id", _mutate(lambda d: d["annotations"][0].update(image_id=77)),
     "annotation 10: unknown image_id 77", True),
    ("missing-bbox", _mutate(lambda d: d["annotations"][0].pop("bbox")), "annotation 10: missing key 'bbox'", True),
    ("bbox-wrong-length", _mutate(lambda d: d["annotations"][0].update(bbox=[1, 2, 3])),
     "annotation 10: 'bbox' must be", True),
    ("bbox-negative-size", _mutate(lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4])),
     "annotation 10: box 10 'cat': width and height must be > 0", True),
    ("bbox-nan", _mutate(lambda d: d["annotations"][0].update(bbox=[float("nan"), 2, 3, 4])), "not valid JSON", False),
    ("bbox-null", _mutate(lambda d: d["annotations"][0].update(bbox=[None, 2, 3, 4])),
     "field 'x' must be a number", True),
    ("bbox-string", _mutate(lambda d: d["annotations"][0].update(bbox=["1", 2, 3, 4])),
     "field 'x' must be a number", True),
    ("duplicate-annotation-id", _mutate(lambda d: d["annotations"].append(dict(d["annotations"][0]))),
     "annotation 10: duplicate annotation id", True),
    ("duplicate-image-id", _mutate(lambda d: d["images"].append({"id": 1, "file_name": "c.png"})),
     "duplicate image id 1", True),
    ("image-without-file-name", _mutate(lambda d: d["images"][1].pop("file_name")), "images[1] needs", True),
    ("image-file-missing", _mutate(lambda d: d["images"][1].update(file_name="missing.png")),
     "item 'missing.png'", True),
    ("image-not-an-image", _mutate(lambda d: d["images"][1].update(file_name="notes.png")),
     "not a readable image", True),
    ("box-entirely-outside", _mutate(lambda d: d["annotations"][1].update(bbox=[500, 500, 10, 10])),
     "lies entirely outside the 64x48 image", True),
    ("empty-label", _mutate(lambda d: d["categories"][1].update(name="")),
     "field 'label' must be a non-empty string", True),
]


def _write_case(folder: Path, payload: Any) -> Path:
    folder.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 48), (120, 80, 40)).save(folder / name)
    (folder / "notes.png").write_text("this is text, not a PNG")
    text = payload if isinstance(payload, str) else json.dumps(payload() if callable(payload) else payload)
    (folder / "instances.json").write_text(text)
    return folder


def test_corpus_is_large_enough():
    assert len(CASES) >= 15


@pytest.mark.parametrize("case,payload,message,skippable", CASES, ids=[c[0] for c in CASES])
def test_malformed_input(case, payload, message, skippable, tmp_path: Path, store, run_cli):
    folder = _write_case(tmp_path / case, payload)
    result = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "bad")
    assert result.exit_code == 1
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("Error: "), err
    assert "Traceback" not in result.output
    assert message in err
    assert store.versions("bad") == [], "a failed pull must not leave a dataset version"
    leftovers = list((store.datasets_dir / "bad").glob(".staging-*")) if (store.datasets_dir / "bad").exists() else []
    assert leftovers == []

    skipped = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "bad", "--on-error", "skip")
    if skippable:
        assert skipped.exit_code == 0, skipped.stderr
        assert "skipped" in skipped.stdout and "new version bad@1" in skipped.stdout
        info = store.open("bad@1").info
        assert sum(info["skipped"].values()) >= 1
    else:
        assert skipped.exit_code == 1, "a file-level problem cannot be skipped"


def test_box_slightly_outside_is_clipped(tmp_path: Path, store, run_cli):
    data = _valid()
    data["annotations"][0]["bbox"] = [-3, 40, 20, 20]  # overhangs the left and bottom edges
    folder = _write_case(tmp_path / "clip", data)
    assert run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "c").exit_code == 0
    box = next(store.open("c").items()).annotations[0]
    assert (box.x, box.y, box.width, box.height) == (0, 40, 17, 8)


def test_crowd_and_empty_categories(tmp_path: Path, store, run_cli):
    data = _valid()
    data["annotations"].append({"id": 12, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1})
    data["categories"].append({"id": 3, "name": "bird"})
    data["images"][0].pop("width")  # size comes from the file when the JSON omits it
    folder = _write_case(tmp_path / "crowd", data)
    result = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "c")
    assert result.exit_code == 0, result.stderr
    assert "not used: 1 crowd regions" in result.stdout
    ds = store.open("c")
    assert ds.categories == ["cat", "dog", "bird"]
    assert ds.info["counts"]["boxes"] == 2
    assert next(ds.items()).image.width == 64
