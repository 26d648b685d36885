"""A re-pull whose source files are unchanged answers "unchanged" without reading them.

The source's fingerprint (names, sizes, times and inodes of the files it reads) is compared
with the one the last pull recorded; any edit, addition, removal or option change must
send the pull back to a full read.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from test_roboflow_local import coco_export, png, yolo_export, zip_folder

from tlsync.connectors.roboflow import RoboflowSource
from tlsync.plugins import get_source
from tlsync.pull import pull


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust files written a moment ago (real pulls wait 2 s; tests should not sleep)."""
    monkeypatch.setattr("tlsync.sources.RACY_SECONDS", 0.0)


def _must_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_, **__):
        raise AssertionError("the source was read although its files are unchanged")

    monkeypatch.setattr(RoboflowSource, "items", refuse)


def test_unchanged_export_is_not_read_again(store, tmp_path: Path, run_cli, no_racy_window, monkeypatch):
    export = coco_export(tmp_path / "export")
    first = run_cli("pull", "--source", "roboflow", "--path", export, "--dataset", "cells")
    assert "new version cells@1" in first.stdout, first.stderr
    _must_not_read(monkeypatch)
    again = run_cli("pull", "--source", "roboflow", "--path", export, "--dataset", "cells")
    assert again.exit_code == 0, again.stderr
    assert "unchanged, still cells@1" in again.stdout
    assert "4 items, 4 boxes, 2 classes" in again.stdout, "the summary repeats what the last pull found"
    assert "not read again" in again.stdout


@pytest.mark.parametrize("edit", ["same-size rewrite, old mtime", "new image", "removed image", "zip replaced"])
def test_any_change_to_the_files_is_noticed(store, tmp_path: Path, no_racy_window, edit: str):
    export = coco_export(tmp_path / "export")
    path = zip_folder(export, tmp_path / "export.zip") if edit == "zip replaced" else export
    source = get_source("roboflow")
    assert pull(store, source, {"path": path}, "cells").version == 1
    train = export / "train" / "_annotations.coco.json"
    doc = json.loads(train.read_text())
    if edit == "same-size rewrite, old mtime":  # as `cp -p` or an rsync that keeps times would
        st = train.stat()
        text = train.read_text().replace('"bbox": [4, 5, 20, 10]', '"bbox": [6, 5, 20, 10]', 1)
        train.write_text(text)
        os.utime(train, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert train.stat().st_size == st.st_size
    elif edit == "new image":
        (export / "train" / "extra_png.rf.1.png").write_bytes(png(shade=200))
        doc["images"].append({"id": 9, "file_name": "extra_png.rf.1.png", "width": 64, "height": 48})
        train.write_text(json.dumps(doc))
    elif edit == "removed image":
        (export / "train" / doc["images"][0]["file_name"]).unlink()
        doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != doc["images"][0]["id"]]
        doc["images"] = doc["images"][1:]
        train.write_text(json.dumps(doc))
    else:
        doc["annotations"][0]["bbox"] = [1, 1, 30, 30]
        train.write_text(json.dumps(doc))
        zip_folder(export, tmp_path / "new.zip").replace(path)
    result = pull(store, source, {"path": path}, "cells")
    assert not result.quick and result.version == 2, f"{edit}: the change was missed"


def test_options_and_reread_force_a_full_read(store, tmp_path: Path, no_racy_window):
    export = coco_export(tmp_path / "export")
    source = get_source("roboflow")
    pull(store, source, {"path": export}, "cells")
    assert pull(store, source, {"path": export}, "cells").quick
    assert not pull(store, source, {"path": export}, "cells", reread=True).quick
    assert pull(store, source, {"path": export}, "cells").quick, "after --reread, the next pull is quick again"
    other_ratios = pull(store, source, {"path": export}, "cells", split_ratios=(0.5, 0.5, 0.0))
    assert not other_ratios.quick and other_ratios.unchanged, "every item has its export split, so same data"
    assert not pull(store, source, {"path": export}, "cells", on_error="skip").quick


def test_files_written_moments_ago_are_read_again(store, tmp_path: Path):
    """A file rewritten within one timestamp tick could look unchanged: such files are never trusted."""
    export = coco_export(tmp_path / "export")
    source = get_source("roboflow")
    pull(store, source, {"path": export}, "cells")
    again = pull(store, source, {"path": export}, "cells")
    assert again.unchanged and not again.quick and again.cached == 4


def test_removing_the_latest_version_makes_the_next_pull_read(store, tmp_path: Path, no_racy_window, run_cli):
    export = coco_export(tmp_path / "export")
    source = get_source("roboflow")
    pull(store, source, {"path": export}, "cells")
    doc_path = export / "valid" / "_annotations.coco.json"
    doc_path.write_text(doc_path.read_text().replace('"bbox": [4, 5, 20, 10]', '"bbox": [3, 5, 20, 10]'))
    assert pull(store, source, {"path": export}, "cells").version == 2
    assert run_cli("datasets", "rm", "cells@2", "--yes").exit_code == 0
    result = pull(store, source, {"path": export}, "cells")
    assert not result.quick and result.version == 2 and store.versions("cells") == [1, 2]


def test_yolo_split_folder_outside_the_export_is_watched(store, tmp_path: Path, no_racy_window):
    """data.yaml may name an absolute folder elsewhere (with --allow-outside-root).

    Editing a label there is a change."""
    export = yolo_export(tmp_path / "export")
    elsewhere = tmp_path / "elsewhere" / "val"
    (elsewhere / "images").mkdir(parents=True)
    (elsewhere / "labels").mkdir()
    shutil.copy(export / "train" / "images" / "a.png", elsewhere / "images" / "b.png")
    (elsewhere / "labels" / "b.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    config = yaml.safe_load((export / "data.yaml").read_text())
    config["val"] = str(elsewhere / "images")
    (export / "data.yaml").write_text(yaml.safe_dump(config))
    source = get_source("roboflow")
    options = {"path": export, "allow_outside_root": True}
    assert pull(store, source, options, "pets").version == 1
    assert pull(store, source, options, "pets").quick
    (elsewhere / "labels" / "b.txt").write_text("1 0.5 0.5 0.5 0.5\n")
    result = pull(store, source, options, "pets")
    assert not result.quick and result.version == 2


def test_coco_source_skips_unchanged_files_too(store, tmp_path: Path, no_racy_window):
    export = coco_export(tmp_path / "export")
    plain = export / "train" / "_annotations.coco.json"  # plain COCO: no Roboflow super-category
    plain.write_text(json.dumps({**json.loads(plain.read_text()), "categories": [{"id": 1, "name": "cells"},
                                                                                {"id": 2, "name": "dirt"}]}))
    source = get_source("coco")
    options = {"path": export / "train"}
    assert pull(store, source, options, "cells").version == 1
    assert pull(store, source, options, "cells").quick
    (export / "train" / "train0_png.rf.00000000000000000000000000000000.png").write_bytes(png(shade=99))
    changed = pull(store, source, options, "cells")
    assert not changed.quick and changed.fetched == 1
