"""The coco source on the real chess export, versions, and the COCO round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tlsync.plugins import get_source
from tlsync.pull import pull


def test_chess_splits_through_coco_source(store, shared_datasets: Path):
    expected = {"train": (202, 2108), "valid": (58, 386), "test": (29, 376)}
    for folder, (items, boxes) in expected.items():
        result = pull(store, get_source("coco"), {"path": shared_datasets / "chess-pieces-coco" / folder},
                      f"chess-{folder}")
        assert (result.items, result.boxes) == (items, boxes)
        ds = store.open(f"chess-{folder}")
        # the plain coco source keeps Roboflow's empty super-category as a class without boxes
        assert len(ds.categories) == 14
        assert ds.categories[0] == "pieces"
    test = store.open("chess-test")
    with_boxes = [c for c, n in test.info["counts"]["classes"].items() if n]
    all_boxes = {c for name in ("chess-train", "chess-valid", "chess-test")
                 for c, n in store.open(name).info["counts"]["classes"].items() if n}
    assert len(all_boxes) == 13 and "pieces" not in all_boxes and with_boxes
    negatives = [item for item in test.items() if not item.annotations]
    assert len(negatives) == 1, "the one test image without boxes is kept as a negative"
    item = next(test.items())
    assert (item.image.width, item.image.height) == (2048, 1371)
    assert test.image_path(item).exists()


def _copy_small_coco(src: Path, dst: Path, n: int = 6) -> Path:
    data = json.loads((src / "_annotations.coco.json").read_text())
    keep = data["images"][:n]
    ids = {img["id"] for img in keep}
    data["images"] = keep
    data["annotations"] = [a for a in data["annotations"] if a["image_id"] in ids]
    dst.mkdir(parents=True)
    for img in keep:
        shutil.copy(src / img["file_name"], dst / img["file_name"])
    (dst / "_annotations.coco.json").write_text(json.dumps(data))
    return dst


def test_unchanged_pull_makes_no_version_and_a_change_makes_v2(store, shared_datasets: Path, tmp_path: Path, run_cli):
    folder = _copy_small_coco(shared_datasets / "chess-pieces-coco" / "train", tmp_path / "coco")
    first = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "chess")
    assert first.exit_code == 0, first.stderr
    assert "new version chess@1" in first.stdout
    again = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "chess")
    assert again.exit_code == 0 and "unchanged, still chess@1" in again.stdout
    assert store.versions("chess") == [1]
    v1_items = [i.to_dict() for i in store.open("chess@1").items()]

    data = json.loads((folder / "_annotations.coco.json").read_text())
    data["annotations"][0]["bbox"][0] += 5
    (folder / "_annotations.coco.json").write_text(json.dumps(data))
    changed = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "chess")
    assert "new version chess@2" in changed.stdout
    assert store.versions("chess") == [1, 2]
    assert [i.to_dict() for i in store.open("chess@1").items()] == v1_items, "@1 must stay readable and unchanged"
    assert store.open("chess").version == 2


def test_round_trip_coco_export_and_pull(store, shared_datasets: Path, tmp_path: Path, run_cli):
    src = shared_datasets / "chess-pieces-coco" / "test"
    assert run_cli("pull", "--source", "coco", "--path", src, "--dataset", "chess").exit_code == 0
    out = tmp_path / "exported"
    result = run_cli("export", "--dataset", "chess@1", "--format", "coco", "--out", out)
    assert result.exit_code == 0, result.stderr
    assert (out / "annotations.json").exists()
    assert run_cli("pull", "--source", "coco", "--path", out, "--dataset", "again").exit_code == 0

    def comparable(ref: str):
        return [(i.id, i.split, i.image.sha256, i.image.width, i.image.height,
                 [b.to_dict() for b in i.annotations]) for i in store.open(ref).items()]

    assert comparable("again@1") == comparable("chess@1")
    assert store.open("again@1").categories == store.open("chess@1").categories


def test_export_refuses_non_empty_target(store, tmp_path: Path, run_cli):
    run_cli("pull", "--source", "synthetic", "--items", "3", "--dataset", "syn")
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli("export", "--dataset", "syn", "--out", out)
    assert result.exit_code == 1
    assert "not empty" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
