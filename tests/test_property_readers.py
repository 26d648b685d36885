"""Property: whatever an export's files say, a pull succeeds with valid items or fails with one line.

Hypothesis mutates a valid COCO JSON, YOLO export (data.yaml and label files), VOC XML, and
platform rows (a Nucleus export page served over HTTP, Label Studio tasks):
values replaced by arbitrary JSON/YAML values, keys deleted, text spliced in, images cut
short. For every mutation, under both ``--on-error`` modes, the pull must either publish a
version whose items are all valid (unique ids, boxes inside their images, labels among the
categories), or raise a ``TlsyncError`` whose message is one line and leave no version.
Any other exception fails the test, and so does the ``PluginError`` the core wraps a
reader's crash in ("source 'coco' failed: TypeError: unhashable type"): that is a bug.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tlsync import plugins
from tlsync.errors import PluginError, TlsyncError
from tlsync.pull import pull
from tlsync.store import Store
from tlsync.testing import write_image

# Modest by default (the suite runs on 2 cores); TLSYNC_PROPERTY_EXAMPLES=500 for a deeper search.
SETTINGS = settings(max_examples=int(os.environ.get("TLSYNC_PROPERTY_EXAMPLES", "30")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

leaves = (st.none() | st.booleans() | st.integers(-3, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
          | st.text(max_size=6))
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                                           max_size=3), max_leaves=5)


def slots(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every (path to a container, key) in a JSON-like document."""
    found = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for key, value in items:
        found.append((*prefix, key))
        found += slots(value, (*prefix, key))
    return found


@st.composite
def mutated(draw: Any, doc: Any) -> Any:
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        paths = slots(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if draw(st.booleans()):
            parent[path[-1]] = draw(values)
        elif isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    return doc


@st.composite
def spliced(draw: Any, text: str) -> str:
    """``text`` with a random span replaced by random characters (XML/YAML syntax included)."""
    start = draw(st.integers(0, len(text)))
    end = draw(st.integers(start, min(len(text), start + 12)))
    filler = draw(st.text(alphabet=st.sampled_from(list("<>/=\"' \n:-[]{}&*!#0123456789.ax\x00\x1b")), max_size=10))
    return text[:start] + filler + text[end:]


# How each pull of the running property ended: "pulled" or "refused".
OUTCOMES: Counter[str] = Counter()


def requires_valid_pulls(examples: Callable[[], None]) -> None:
    """Run a property's examples; some must pull valid items, or the property only ever saw refusals
    (a reader that refused everything, or mutations that always break the export, would pass unseen)."""
    OUTCOMES.clear()
    examples()
    assert OUTCOMES["pulled"] > 0, f"no example pulled anything ({dict(OUTCOMES)}): the valid side went untested"


def assert_valid_or_one_line_error(source: str, options: dict[str, Any], home: Path) -> None:
    store = Store(home)
    for n, on_error in enumerate(("fail", "skip")):
        name = f"p{n}"
        try:
            result = pull(store, plugins.get_source(source), options, name, on_error=on_error)
        except TlsyncError as e:
            # A built-in reader's bug surfaces as PluginError ("source 'coco' failed: TypeError ...").
            assert not isinstance(e, PluginError), str(e)
            assert "\n" not in str(e).strip(), repr(str(e))
            assert store.versions(name) == [], "a failed pull must publish nothing"
            OUTCOMES["refused"] += 1
            continue
        OUTCOMES["pulled"] += 1
        version = store.open(result.ref)
        items = list(version.items())
        assert len(items) == result.items > 0
        assert len({item.id for item in items}) == len(items)
        for item in items:
            assert item.image.width and item.image.height and item.image.sha256
            assert (store.home / item.image.path).is_file()
            for box in item.annotations:
                assert box.label in version.categories
                assert 0 <= box.x and 0 <= box.y and box.width > 0 and box.height > 0
                assert box.x + box.width <= item.image.width + 1e-6
                assert box.y + box.height <= item.image.height + 1e-6


def coco_doc() -> dict[str, Any]:
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 48} for i in (1, 2)],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 10], "iscrowd": 0},
                        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [30, 20, 30, 20]}],
        "categories": [{"id": 1, "name": "cat", "supercategory": "none"}, {"id": 2, "name": "dog"}],
    }


@SETTINGS
@given(doc=mutated(coco_doc()), cut=st.none() | st.integers(0, 200))
def coco_reader_on_mutated_json_examples(doc: Any, cut: int | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        for i in (1, 2):
            write_image(folder / f"{i}.png", seed=i)
        if cut is not None:  # an image cut short, anywhere
            data = (folder / "2.png").read_bytes()
            (folder / "2.png").write_bytes(data[:cut])
        (folder / "instances.json").write_text(json.dumps(doc))
        assert_valid_or_one_line_error("coco", {"path": folder}, Path(tmp) / "home")


def test_coco_reader_on_mutated_json() -> None:
    requires_valid_pulls(coco_reader_on_mutated_json_examples)


YOLO_CONFIG = {"names": ["cat", "dog"], "nc": 2, "train": "../train/images", "val": "../valid/images"}
label_tokens = st.sampled_from(["0", "1", "2", "-1", "0.5", "0.25", "1.5", "nan", "inf", "1e309", "x", "0.1", "1"])
label_text = st.lists(st.lists(label_tokens, max_size=7).map(" ".join), max_size=4).map("\n".join)


@SETTINGS
@given(config=mutated(YOLO_CONFIG), labels=label_text, yaml_text=st.none() | spliced(yaml.safe_dump(YOLO_CONFIG)))
def yolo_reader_on_mutated_yaml_and_labels_examples(config: Any, labels: str, yaml_text: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "export"
        for split in ("train", "valid"):
            write_image(root / split / "images" / "a.png", seed=len(split))
            (root / split / "labels").mkdir(parents=True)
            (root / split / "labels" / "a.txt").write_text(labels if split == "train" else "0 0.5 0.5 0.2 0.2\n")
        (root / "data.yaml").write_text(yaml_text if yaml_text is not None else yaml.safe_dump(config))
        assert_valid_or_one_line_error("roboflow", {"path": root}, Path(tmp) / "home")


def test_yolo_reader_on_mutated_yaml_and_labels() -> None:
    requires_valid_pulls(yolo_reader_on_mutated_yaml_and_labels_examples)


VOC_XML = ("<annotation><filename>a.png</filename><size><width>64</width><height>48</height></size>"
           "<object><name>cat</name><difficult>0</difficult><bndbox><xmin>2</xmin><ymin>3</ymin>"
           "<xmax>30</xmax><ymax>20</ymax></bndbox></object>"
           "<object><name>dog</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>60</xmax><ymax>40</ymax>"
           "</bndbox></object></annotation>")
xml_values = st.text(alphabet=st.sampled_from(list("0123456789.-eEnaifx <&")), max_size=6)


@st.composite
def voc_xml(draw: Any) -> str:
    text = VOC_XML
    for tag in draw(st.lists(st.sampled_from(["xmin", "ymin", "xmax", "ymax", "name", "filename"]), max_size=3)):
        value = draw(xml_values).replace("<", "&lt;").replace("&", "&amp;")
        start = text.index(f"<{tag}>") + len(tag) + 2
        text = text[:start] + value + text[text.index(f"</{tag}>", start):]
    return draw(spliced(text)) if draw(st.booleans()) else text


@SETTINGS
@given(xml=voc_xml())
def voc_reader_on_mutated_xml_examples(xml: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "voc"
        write_image(root / "JPEGImages" / "a.png")
        (root / "Annotations").mkdir(parents=True)
        (root / "Annotations" / "a.xml").write_text(xml, encoding="utf-8", errors="surrogatepass")
        assert_valid_or_one_line_error("roboflow", {"path": root}, Path(tmp) / "home")


def test_voc_reader_on_mutated_xml() -> None:
    requires_valid_pulls(voc_reader_on_mutated_xml_examples)


# -- platform rows: the Nucleus export page, served over HTTP from 127.0.0.1 ------------------

DEEP_MARK = "__deep__"


@st.composite
def nucleus_page(draw: Any, good: dict[str, Any]) -> bytes:
    """A page holding one mutated row (types, deletions, a value nested very deep, a long string)
    and one good row."""
    row = draw(mutated(good))
    if draw(st.booleans()):
        paths = slots(row)
        if paths:
            path = draw(st.sampled_from(paths))
            parent = row
            for key in path[:-1]:
                parent = parent[key]
            parent[path[-1]] = draw(st.sampled_from([DEEP_MARK, "x" * 100_000, 10**18, -1e308, [[[]]]]))
    depth = draw(st.sampled_from([1, 50, 1_500, 100_000]))
    body = json.dumps({"data": [row, good], "nextPageToken": None})
    return body.replace(json.dumps(DEEP_MARK), "[" * depth + "]" * depth).encode()


def _nucleus_rows() -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """One fake Nucleus for every example (a server per example would dominate the run)."""
    from fake_nucleus import FakeNucleus

    fake = FakeNucleus(api_key="prop_key_0123456789").__enter__()
    fake.add_dataset("ds_1", "p")
    fake.add_slice("slc_1", "ds_1", [], name="p")
    fake.add_items("ds_1", 2, slice_id="slc_1")
    items = fake.datasets["ds_1"].items
    first, second = (fake.row("ds_1", items[ref], 1) for ref in ("img_000000", "img_000001"))
    second["polygon"] = [{"label": "dog", "annotation_id": "p1",
                          "geometry": {"vertices": [{"x": 1, "y": 1}, {"x": 9, "y": 7}]}}]
    return fake, first, second


NUCLEUS, GOOD_ROW, MUTABLE_ROW = _nucleus_rows()


@SETTINGS
@given(page=nucleus_page(MUTABLE_ROW), polygons=st.booleans())
def nucleus_reader_on_mutated_rows_examples(page: bytes, polygons: bool) -> None:
    from tlsync.testing.server import Response

    NUCLEUS.page_handler = lambda request: Response(200, page, {"Content-Type": "application/json"})
    saved = {k: os.environ.get(k) for k in ("NUCLEUS_API_KEY", "NUCLEUS_ENDPOINT")}
    os.environ.update(NUCLEUS_API_KEY=NUCLEUS.api_key, NUCLEUS_ENDPOINT=NUCLEUS.endpoint)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            options = {"slice_id": "slc_1", "polygons_as_boxes": polygons}
            assert_valid_or_one_line_error("nucleus", options, Path(tmp) / "home")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_nucleus_reader_on_mutated_rows() -> None:
    requires_valid_pulls(nucleus_reader_on_mutated_rows_examples)


LS_TASK = {"id": 1, "data": {"image": "a.png"}, "predictions": [],
           "annotations": [{"id": 1, "updated_at": "2024-01-01T00:00:00Z", "result": [
               {"id": "r1", "type": "rectanglelabels", "original_width": 64, "original_height": 48,
                "value": {"x": 10, "y": 10, "width": 20, "height": 20, "rectanglelabels": ["cat"]}}]}]}


@SETTINGS
@given(tasks=st.lists(mutated(LS_TASK), min_size=1, max_size=3))
def labelstudio_reader_on_mutated_tasks_examples(tasks: list[Any]) -> None:
    """The Label Studio plugin's rows, mutated the same way."""
    import tlsync_labelstudio

    from tlsync.testing import isolated_plugins

    with tempfile.TemporaryDirectory() as tmp, isolated_plugins(tlsync_labelstudio):
        write_image(Path(tmp) / "a.png")
        for n, task in enumerate(tasks):
            if isinstance(task, dict) and task.get("id") == 1:
                task["id"] = n + 1  # distinct ids, unless a mutation changed them
        (Path(tmp) / "export.json").write_text(json.dumps(tasks))
        assert_valid_or_one_line_error("labelstudio", {"path": Path(tmp) / "export.json"}, Path(tmp) / "home")


def test_labelstudio_reader_on_mutated_tasks() -> None:
    pytest.importorskip("tlsync_labelstudio")
    requires_valid_pulls(labelstudio_reader_on_mutated_tasks_examples)
