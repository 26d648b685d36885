"""Property: whatever an export's files say, a pull succeeds with valid items or fails with one line.

Hypothesis mutates a valid COCO JSON, YOLO export (data.yaml and label files) and VOC XML:
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
from pathlib import Path
from typing import Any

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
            continue
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
def test_coco_reader_on_mutated_json(doc: Any, cut: int | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        for i in (1, 2):
            write_image(folder / f"{i}.png", seed=i)
        if cut is not None:  # an image cut short, anywhere
            data = (folder / "2.png").read_bytes()
            (folder / "2.png").write_bytes(data[:cut])
        (folder / "instances.json").write_text(json.dumps(doc))
        assert_valid_or_one_line_error("coco", {"path": folder}, Path(tmp) / "home")


YOLO_CONFIG = {"names": ["cat", "dog"], "nc": 2, "train": "../train/images", "val": "../valid/images"}
label_tokens = st.sampled_from(["0", "1", "2", "-1", "0.5", "0.25", "1.5", "nan", "inf", "1e309", "x", "0.1", "1"])
label_text = st.lists(st.lists(label_tokens, max_size=7).map(" ".join), max_size=4).map("\n".join)


@SETTINGS
@given(config=mutated(YOLO_CONFIG), labels=label_text, yaml_text=st.none() | spliced(yaml.safe_dump(YOLO_CONFIG)))
def test_yolo_reader_on_mutated_yaml_and_labels(config: Any, labels: str, yaml_text: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "export"
        for split in ("train", "valid"):
            write_image(root / split / "images" / "a.png", seed=len(split))
            (root / split / "labels").mkdir(parents=True)
            (root / split / "labels" / "a.txt").write_text(labels if split == "train" else "0 0.5 0.5 0.2 0.2\n")
        (root / "data.yaml").write_text(yaml_text if yaml_text is not None else yaml.safe_dump(config))
        assert_valid_or_one_line_error("roboflow", {"path": root}, Path(tmp) / "home")


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
def test_voc_reader_on_mutated_xml(xml: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "voc"
        write_image(root / "JPEGImages" / "a.png")
        (root / "Annotations").mkdir(parents=True)
        (root / "Annotations" / "a.xml").write_text(xml, encoding="utf-8", errors="surrogatepass")
        assert_valid_or_one_line_error("roboflow", {"path": root}, Path(tmp) / "home")
