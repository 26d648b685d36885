"""The roboflow source on local exports: the three shared datasets, zips, and bad input."""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import yaml

from tlsync.connectors.roboflow import photo_metadata

# -- tiny synthetic exports (also used by test_roboflow_api.py) -------------------------------

def png(width: int = 64, height: int = 48, shade: int = 0) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (width, height), (shade, 255 - shade, 90)).save(out, format="PNG")
    return out.getvalue()


def coco_export(root: Path, splits=("train", "valid"), per_split: int = 2) -> Path:
    """A Roboflow-style COCO export: a super-category 'cells' and a real class also named 'cells'."""
    categories = [{"id": 0, "name": "cells", "supercategory": "none"},
                  {"id": 1, "name": "cells", "supercategory": "cells"},
                  {"id": 2, "name": "dirt", "supercategory": "cells"}]
    shade = 0
    for split in splits:
        folder = root / split
        folder.mkdir(parents=True)
        images, annotations = [], []
        for i in range(per_split):
            name = f"{split}{i}_png.rf.{i:032x}.png"
            (folder / name).write_bytes(png(shade=shade))
            shade += 10
            images.append({"id": i, "file_name": name, "width": 64, "height": 48})
            annotations.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [4, 5, 20, 10],
                                "area": 200, "iscrowd": 0})
        doc = {"images": images, "annotations": annotations, "categories": categories}
        (folder / "_annotations.coco.json").write_text(json.dumps(doc))
    return root


def yolo_export(root: Path, rows: dict[str, str] | None = None, names=None, split_key: str = "train") -> Path:
    """A YOLO export with one train image per entry of ``rows`` (file stem -> label text)."""
    rows = {"a": "0 0.5 0.5 0.5 0.5\n"} if rows is None else rows
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "labels").mkdir(parents=True)
    for i, (stem, text) in enumerate(rows.items()):
        (root / "train" / "images" / f"{stem}.png").write_bytes(png(100, 50, shade=i * 7))
        if text is not None:
            (root / "train" / "labels" / f"{stem}.txt").write_text(text)
    config = {split_key: "../train/images", "nc": 2, "names": names or ["cat", "dog"]}
    (root / "data.yaml").write_text(yaml.safe_dump(config))
    return root


def voc_xml(filename: str, boxes: list[tuple[str, str]]) -> str:
    """``boxes``: (name, inner bndbox XML) pairs, so tests can reorder or break the tags."""
    objects = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox>{b}</bndbox></object>"
                      for n, b in boxes)
    return f"<annotation><filename>{filename}</filename>{objects}</annotation>"


def voc_export(root: Path) -> Path:
    """Roboflow's VOC layout: each XML beside its image in train/ and valid/."""
    for split, shade in (("train", 0), ("valid", 50)):
        (root / split).mkdir(parents=True)
        (root / split / f"{split}_jpg.rf.1.png").write_bytes(png(shade=shade))
        box = "<xmin>2</xmin><ymin>3</ymin><xmax>30</xmax><ymax>40</ymax>"
        (root / split / f"{split}_jpg.rf.1.xml").write_text(voc_xml(f"{split}_jpg.rf.1.png", [("cell", box)]))
    return root


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder).as_posix())
    return archive


# -- the shared datasets -----------------------------------------------------------------------

def _splits(store, ref: str) -> dict[str, int]:
    return {s: c["items"] for s, c in store.open(ref).info["counts"]["splits"].items()}


def test_chess_coco_export_folder(store, shared_datasets: Path, run_cli):
    result = run_cli("pull", "--source", "roboflow", "--path", shared_datasets / "chess-pieces-coco",
                     "--dataset", "chess")
    assert result.exit_code == 0, result.stderr
    ds = store.open("chess")
    assert ds.info["counts"]["items"] == 289 and ds.info["counts"]["boxes"] == 2870
    assert _splits(store, "chess") == {"train": 202, "val": 58, "test": 29}
    assert len(ds.categories) == 13 and "pieces" not in ds.categories
    item = next(ds.items("val"))
    assert item.id.endswith(".jpg") and ".rf." in item.id and "/" not in item.id
    assert item.metadata["group"] == item.id.split(".rf.")[0]
    assert item.id.startswith(item.metadata["original_stem"] + "_jpg.rf.")
    assert (item.image.width, item.image.height) == (2048, 1371)


def test_chess_zip_gives_the_same_dataset_as_the_folder(store, shared_datasets: Path, tmp_path: Path, run_cli):
    archive = zip_folder(shared_datasets / "chess-pieces-coco", tmp_path / "Chess-Pieces.v23.coco.zip")
    assert run_cli("pull", "--source", "roboflow", "--path", shared_datasets / "chess-pieces-coco",
                   "--dataset", "folder").exit_code == 0
    zipped = run_cli("pull", "--source", "roboflow", "--path", archive, "--dataset", "zipped")
    assert zipped.exit_code == 0, zipped.stderr
    folder, from_zip = store.open("folder"), store.open("zipped")
    assert from_zip.content_hash == folder.content_hash
    assert from_zip.categories == folder.categories and from_zip.info["counts"] == folder.info["counts"]
    again = run_cli("pull", "--source", "roboflow", "--path", archive, "--dataset", "zipped")
    assert "unchanged, still zipped@1" in again.stdout and "unpacked" not in again.stdout, "unpacked once only"


def test_thermal_yolo_export(store, shared_datasets: Path, run_cli):
    root = shared_datasets / "thermal-dogs-people-yolo"
    result = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "thermal")
    assert result.exit_code == 0, result.stderr
    ds = store.open("thermal")
    counts = ds.info["counts"]
    assert (counts["items"], counts["boxes"], counts["negatives"]) == (203, 257, 18)
    assert _splits(store, "thermal") == {"train": 142, "val": 41, "test": 20}
    assert ds.categories == ["dog", "person"]
    # first row of this label file: "1 0.6238 0.7993 0.0877 0.1815" on a 416x416 image
    item = next(i for i in ds.items() if i.id == "IMG_0001 2_jpg.rf.a64c70befa56fe10f85e72fee63c4c01.jpg")
    box = item.annotations[0]
    assert box.label == "person"
    assert box.x == pytest.approx((0.6237980769230769 - 0.08774038461538461 / 2) * 416)
    assert box.height == pytest.approx(0.1814903846153846 * 416)
    assert item.metadata == {"group": "IMG_0001 2_jpg", "original_stem": "IMG_0001 2"}


def test_bccd_voc_honours_image_sets_and_counts_zero_area_boxes(store, shared_datasets: Path, run_cli):
    root = shared_datasets / "bccd-voc" / "BCCD"
    result = run_cli("pull", "--source", "roboflow", "--path", root, "--format", "voc", "--dataset", "bccd")
    assert result.exit_code == 0, result.stderr
    assert "2 x zero-area boxes" in result.stdout
    ds = store.open("bccd")
    assert ds.info["counts"]["items"] == 364 and ds.info["counts"]["boxes"] == 4888 - 2
    assert sum(ds.info["skipped"].values()) == 2
    main = root / "ImageSets" / "Main"
    for split in ("train", "val", "test"):
        listed = set(main.joinpath(f"{split}.txt").read_text().split())
        assert {Path(i.id).stem for i in ds.items(split)} == listed


# -- splits and groups -------------------------------------------------------------------------

def test_augmented_copies_of_one_photo_share_a_split(store, tmp_path: Path, run_cli):
    folder = tmp_path / "single"
    folder.mkdir()
    images = []
    for photo in range(30):
        for copy in range(3):
            name = f"photo{photo}_jpg.rf.{photo:04d}{copy:028d}.png"
            (folder / name).write_bytes(png(16, 16, shade=photo * 3 + copy))
            images.append({"id": len(images), "file_name": name})
    doc = {"images": images, "annotations": [], "categories": [{"id": 1, "name": "x", "supercategory": "none"}]}
    (folder / "_annotations.coco.json").write_text(json.dumps(doc))
    assert run_cli("pull", "--source", "roboflow", "--path", folder, "--dataset", "aug").exit_code == 0
    splits_of_group: dict[str, set[str]] = {}
    for item in store.open("aug").items():
        splits_of_group.setdefault(item.metadata["group"], set()).add(item.split)
    assert len(splits_of_group) == 30
    assert all(len(s) == 1 for s in splits_of_group.values()), "copies of one photo leaked across splits"
    assert len(set().union(*splits_of_group.values())) > 1


def test_photo_metadata_from_roboflow_names():
    assert photo_metadata("IMG_0001 2_jpg.rf.a64c.jpg") == {"group": "IMG_0001 2_jpg", "original_stem": "IMG_0001 2"}
    assert photo_metadata("plain.jpg") == {"original_stem": "plain"}


def test_coco_super_category_named_like_a_class_is_dropped_by_id(store, tmp_path: Path, run_cli):
    root = coco_export(tmp_path / "export")
    assert run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "c").exit_code == 0
    ds = store.open("c")
    assert ds.categories == ["cells", "dirt"]
    assert Counter(b.label for i in ds.items() for b in i.annotations) == {"cells": 2, "dirt": 2}


# -- YOLO rows ---------------------------------------------------------------------------------

def test_yolo_polygon_row_uses_its_extent_and_names_map(store, tmp_path: Path, run_cli):
    root = yolo_export(tmp_path / "y", {"poly": "1 0.1 0.2 0.5 0.2 0.5 0.8 0.1 0.8\n", "empty": "", "nolabel": None},
                       names={0: "cat", 1: "dog"})
    result = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "y")
    assert result.exit_code == 0, result.stderr
    items = {i.id: i for i in store.open("y").items()}
    (box,) = items["poly.png"].annotations
    assert (box.label, box.x, box.y, box.width, box.height) == pytest.approx(("dog", 10, 10, 40, 30))
    assert items["empty.png"].annotations == [] and items["nolabel.png"].annotations == []
    assert store.open("y").categories == ["cat", "dog"]


@pytest.mark.parametrize("row, message", [
    ("5 0.5 0.5 0.1 0.1", "class index 5 is not in data.yaml names"),
    ("0 0.5 abc 0.1 0.1", "'abc' is not a number"),
    ("0 0.5 1.5 0.1 0.1", "coordinate 1.5 is outside 0..1"),
    ("0 0.5 0.5 0.1", "expected 'class cx cy w h'"),
])
def test_yolo_bad_row_fails_or_is_counted(store, tmp_path: Path, run_cli, row: str, message: str):
    root = yolo_export(tmp_path / "y", {"good": "0 0.5 0.5 0.2 0.2\n", "bad": f"0 0.2 0.2 0.1 0.1\n{row}\n"})
    failed = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "y")
    assert failed.exit_code == 1
    assert message in failed.stderr and "bad.txt: line 2" in failed.stderr and "Traceback" not in failed.stderr
    assert store.versions("y") == []
    skipped = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "y", "--on-error", "skip")
    assert skipped.exit_code == 0 and "skipped 1:" in skipped.stdout
    assert store.open("y").info["counts"]["boxes"] == 2, "only the bad row is dropped"


def test_yolo_yaml_mistakes_are_named(tmp_path: Path, run_cli):
    root = yolo_export(tmp_path / "y")
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "../train/images", "nc": 3, "names": ["a", "b"]}))
    result = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "y")
    assert result.exit_code == 1 and "data.yaml: nc is 3 but 'names' lists 2 classes" in result.stderr
    (root / "data.yaml").write_text(yaml.safe_dump({"train": "nowhere/images", "names": ["a", "b"]}))
    (root / "train").rename(root / "elsewhere")
    result = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "y")
    assert result.exit_code == 1 and "'train: nowhere/images' is not a folder" in result.stderr


# -- VOC ---------------------------------------------------------------------------------------

def test_voc_tags_in_any_order_and_roboflow_layout(store, tmp_path: Path, run_cli):
    root = voc_export(tmp_path / "v")
    swapped = "<ymax>40</ymax><xmax>30</xmax><ymin>3</ymin><xmin>2</xmin>"
    (root / "train" / "train_jpg.rf.1.xml").write_text(voc_xml("train_jpg.rf.1.png", [("cell", swapped)]))
    result = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "v")
    assert result.exit_code == 0, result.stderr
    assert _splits(store, "v") == {"train": 1, "val": 1}
    boxes = [(b.x, b.y, b.width, b.height) for i in store.open("v").items() for b in i.annotations]
    assert boxes == [(2, 3, 28, 37), (2, 3, 28, 37)]


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">]>
<annotation><filename>valid_jpg.rf.1.png</filename><object><name>&lol9;</name>
<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>
"""


def test_billion_laughs_xml_is_rejected(store, tmp_path: Path, run_cli):
    root = voc_export(tmp_path / "v")
    (root / "valid" / "valid_jpg.rf.1.xml").write_text(BILLION_LAUGHS)
    failed = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "v")
    assert failed.exit_code == 1
    assert "valid_jpg.rf.1.xml: refused: EntitiesForbidden" in failed.stderr and "lollol" not in failed.stderr
    skipped = run_cli("pull", "--source", "roboflow", "--path", root, "--dataset", "v", "--on-error", "skip")
    assert skipped.exit_code == 0 and store.open("v").info["counts"]["items"] == 1


def test_unrecognisable_folder_and_missing_path_are_clear_errors(tmp_path: Path, run_cli):
    (tmp_path / "empty").mkdir()
    result = run_cli("pull", "--source", "roboflow", "--path", tmp_path / "empty", "--dataset", "x")
    assert result.exit_code == 1 and "not a recognisable export" in result.stderr and "--format" in result.stderr
    result = run_cli("pull", "--source", "roboflow", "--path", tmp_path / "nope.zip", "--dataset", "x")
    assert result.exit_code == 1 and "nope.zip: no such file or folder" in result.stderr
    result = run_cli("pull", "--source", "roboflow", "--dataset", "x")
    assert result.exit_code == 1 and "give --path" in result.stderr
