"""``tlsync datasets derive`` on the real shared datasets, driven through the CLI.

bccd (VOC: Platelets, RBC, WBC), chess (COCO train split, read with the plain COCO source so
that Roboflow's empty ``pieces`` super-category is still there, plus the lone ``bishop``) and
thermal (YOLO: dog, person). Every derived version is checked for what a user would check:
item and box counts, classes, the provenance in dataset.json, and that its items point at
the very image files the sources' items do (nothing copied).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tlsync.store import Store


@pytest.fixture
def pulled(run_cli, shared_datasets: Path):
    """Pull the named shared datasets into the test's store (each once per test)."""
    def pull(*names: str) -> None:
        for name in names:
            args = {
                "bccd": ("--source", "roboflow", "--path", shared_datasets / "bccd-voc"),
                "thermal": ("--source", "roboflow", "--path", shared_datasets / "thermal-dogs-people-yolo"),
                "chess": ("--source", "coco", "--annotations",
                          shared_datasets / "chess-pieces-coco" / "train" / "_annotations.coco.json"),
            }[name]
            result = run_cli("pull", *args, "--dataset", name)
            assert result.exit_code == 0, result.stderr
    return pull


def images_in_store(store: Store) -> int:
    return sum(1 for p in store.images_dir.rglob("*") if p.is_file())


def test_merge_two_classes_shares_images_and_records_provenance(run_cli, pulled, store: Store) -> None:
    pulled("bccd")
    images_before = images_in_store(store)
    result = run_cli("datasets", "derive", "cells", "--from", "bccd", "--class-map", "RBC=cell,WBC=cell")
    assert result.exit_code == 0, result.stderr
    assert "RBC + WBC -> cell" in result.stdout
    assert "cells@1 (new version): 364 items, 4886 boxes, 2 classes: Platelets, cell" in result.stdout

    source, derived = store.open("bccd@1"), store.open("cells@1")
    assert derived.categories == ["Platelets", "cell"]
    classes = derived.info["counts"]["classes"]
    assert classes["cell"] == source.info["counts"]["classes"]["RBC"] + source.info["counts"]["classes"]["WBC"]
    assert classes["Platelets"] == source.info["counts"]["classes"]["Platelets"]
    assert derived.info["counts"]["splits"] == source.info["counts"]["splits"]  # splits kept
    provenance = derived.info["derived_from"]
    assert provenance["sources"] == [{"ref": "bccd@1", "content_hash": source.content_hash, "items": 364,
                                      "boxes": 4886}]
    assert provenance["class_map"] == {"RBC": "cell", "WBC": "cell"}
    assert provenance["classes_merged"] == {"cell": ["RBC", "WBC"]}
    assert derived.info["source"]["name"] == "derive"

    # the same files, not copies: every derived item names its source item's image path
    paths = {i.id: i.image.path for i in source.items()}
    assert {i.id: i.image.path for i in derived.items()} == paths
    assert images_in_store(store) == images_before
    assert all(i.metadata["derived_from"] == [f"bccd@1:{i.id}"] for i in derived.items())

    again = run_cli("datasets", "derive", "cells", "--from", "bccd", "--class-map", "RBC=cell,WBC=cell")
    assert again.exit_code == 0, again.stderr
    assert "cells@1 (unchanged)" in again.stdout and store.versions("cells") == [1]


def test_drop_empty_super_class_and_a_class(run_cli, pulled, store: Store) -> None:
    pulled("chess")
    source = store.open("chess@1")
    assert {"pieces", "bishop"} <= set(source.categories)  # the export's own quirks, as pulled by --source coco
    result = run_cli("datasets", "derive", "chess-clean", "--from", "chess", "--drop-class", "pieces",
                     "--drop-class", "bishop")
    assert result.exit_code == 0, result.stderr
    derived = store.open("chess-clean")
    assert "pieces" not in derived.categories and "bishop" not in derived.categories
    assert len(derived.categories) == len(source.categories) - 2
    dropped = source.info["counts"]["classes"].get("bishop", 0)
    assert dropped == 1 and "boxes dropped: 1 bishop" in result.stdout
    assert derived.info["counts"]["boxes"] == source.info["counts"]["boxes"] - dropped
    assert derived.info["counts"]["items"] == source.info["counts"]["items"]  # images stay, as negatives if need be
    assert derived.info["derived_from"]["boxes_dropped"] == {"bishop": 1}

    keep = run_cli("datasets", "derive", "chess-kings", "--from", "chess", "--keep-class", "white-king",
                   "--keep-class", "black-king")
    assert keep.exit_code == 0, keep.stderr
    kings = store.open("chess-kings")
    assert kings.categories == ["black-king", "white-king"]
    assert kings.info["counts"]["boxes"] == sum(source.info["counts"]["classes"][c] for c in kings.categories)


def test_union_of_two_datasets(run_cli, pulled, store: Store) -> None:
    pulled("thermal", "bccd")
    result = run_cli("datasets", "derive", "both", "--from", "thermal", "--from", "bccd@1")
    assert result.exit_code == 0, result.stderr
    thermal, bccd, both = store.open("thermal"), store.open("bccd"), store.open("both")
    assert both.categories == ["dog", "person", "Platelets", "RBC", "WBC"]
    for key in ("items", "boxes"):
        assert both.info["counts"][key] == thermal.info["counts"][key] + bccd.info["counts"][key]
    ids = [i.id for i in both.items()]
    assert len(set(ids)) == len(ids) and ids[0].startswith("thermal/") and ids[-1].startswith("bccd/")
    splits = Counter(i.split for i in both.items())
    expected = Counter(i.split for i in thermal.items()) + Counter(i.split for i in bccd.items())
    assert splits == expected
    assert [s["ref"] for s in both.info["derived_from"]["sources"]] == ["thermal@1", "bccd@1"]


def test_map_and_rule_mistakes_are_one_line_errors(run_cli, pulled, store: Store, tmp_path: Path) -> None:
    pulled("bccd")
    typo = run_cli("datasets", "derive", "x", "--from", "bccd", "--class-map", "rbc=cell")
    assert typo.exit_code != 0 and "'rbc', which no source has" in typo.stderr
    assert "Traceback" not in typo.stderr
    bad = run_cli("datasets", "derive", "x", "--from", "bccd", "--class-map", "RBC")
    assert bad.exit_code != 0 and "is not old=new" in bad.stderr
    yaml_map = tmp_path / "map.yaml"
    yaml_map.write_text("RBC: [not, a, name]\n")
    nested = run_cli("datasets", "derive", "x", "--from", "bccd", "--class-map", yaml_map)
    assert nested.exit_code != 0 and "must be non-empty strings" in nested.stderr
    yaml_map.write_text("RBC: red\nWBC: white\n")
    strict = run_cli("datasets", "derive", "x", "--from", "bccd", "--class-map", yaml_map, "--strict")
    assert strict.exit_code == 0, strict.stderr
    assert store.open("x").categories == ["red", "white"]  # Platelets, left out of a --strict map, dropped
    same_name = run_cli("datasets", "derive", "bccd", "--from", "bccd")
    assert same_name.exit_code != 0 and "a name of its own" in same_name.stderr
    assert store.versions("bccd") == [1]


def test_one_picture_in_two_splits_needs_split_from_and_dedupe_merges(run_cli, pulled, store: Store) -> None:
    pulled("bccd")
    # a second dataset holding the same pictures, their splits changed and RBC renamed: what a re-export gives
    ok = run_cli("datasets", "derive", "moved", "--from", "bccd", "--class-map", "WBC=white")
    assert ok.exit_code == 0, ok.stderr
    moved_dir = store.datasets_dir / "moved" / "1"
    lines = [json.loads(line) for line in (moved_dir / "items.jsonl").read_text().splitlines()]
    first_train = next(d for d in lines if d["split"] == "train")
    first_train["split"] = "test"
    (moved_dir / "items.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines))

    clash = run_cli("datasets", "derive", "merged", "--from", "bccd", "--from", "moved")
    assert clash.exit_code != 0 and "one picture in two splits" in clash.stderr
    assert first_train["id"] in clash.stderr and "--split-from" in clash.stderr

    result = run_cli("datasets", "derive", "merged", "--from", "bccd", "--from", "moved", "--split-from", "bccd",
                     "--dedupe")
    assert result.exit_code == 0, result.stderr
    merged, bccd = store.open("merged"), store.open("bccd")
    assert merged.info["counts"]["items"] == 364  # one item per picture
    provenance = merged.info["derived_from"]
    assert provenance["items_merged"] == 364 and provenance["splits_changed"] == 1
    # RBC and Platelets boxes are the same objects with the same labels: merged; WBC vs white: conflicts
    wbc = bccd.info["counts"]["classes"]["WBC"]
    assert provenance["conflicts"] == wbc and provenance["boxes_merged"] == 4886 - wbc
    assert merged.info["counts"]["classes"] == bccd.info["counts"]["classes"]  # the first source's labels win
    assert f"{wbc} conflicting label(s)" in result.stdout
    assert Counter(i.split for i in merged.items()) == Counter(i.split for i in bccd.items())
