"""Label Studio JSON export files: real BCCD boxes round-trip, annotation choice, bad exports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as ET
import pytest
import tlsync_labelstudio

from tlsync.errors import SourceError
from tlsync.pull import pull
from tlsync.testing import check_plugin, check_source, write_image


def voc_to_label_studio(root: Path, stems: list[str] | None = None, drop_empty: bool = True):
    """A Label Studio export of BCCD (boxes in percent of the image), and its VOC boxes in pixels.

    Images are referenced as Label Studio's local storage does (``/data/local-files/?d=``),
    so ``--images`` is the BCCD folder itself.
    """
    tasks, expected = [], {}
    xmls = [root / "Annotations" / f"{s}.xml" for s in stems] if stems else sorted((root / "Annotations").glob("*.xml"))
    for task_id, xml in enumerate(xmls, 1):
        voc = ET.parse(xml).getroot()
        width, height = int(voc.findtext("size/width")), int(voc.findtext("size/height"))
        results, boxes = [], []
        for k, obj in enumerate(voc.iter("object")):
            x0, y0, x1, y1 = (float(obj.findtext(f"bndbox/{c}")) for c in ("xmin", "ymin", "xmax", "ymax"))
            if drop_empty and (x1 <= x0 or y1 <= y0):
                continue
            boxes.append((obj.findtext("name"), x0, y0, x1 - x0, y1 - y0))
            results.append({
                "id": f"r{task_id}-{k}", "type": "rectanglelabels", "from_name": "label", "to_name": "image",
                "original_width": width, "original_height": height, "image_rotation": 0,
                "value": {"x": x0 / width * 100, "y": y0 / height * 100, "width": (x1 - x0) / width * 100,
                          "height": (y1 - y0) / height * 100, "rotation": 0, "rectanglelabels": [obj.findtext("name")]},
            })
        tasks.append({
            "id": task_id, "data": {"image": f"/data/local-files/?d=JPEGImages/{voc.findtext('filename')}"},
            "annotations": [{"id": 1000 + task_id, "completed_by": 1, "result": results, "was_cancelled": False,
                             "created_at": "2024-03-01T10:00:00.000000Z", "updated_at": "2024-03-01T10:00:00.000000Z"}],
            "predictions": [],
        })
        expected[str(task_id)] = boxes
    return tasks, expected


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_bccd_boxes_come_back_in_pixels_within_half_a_pixel(bccd, tmp_path, tlsync_store):
    tasks, expected = voc_to_label_studio(bccd)
    export = write_json(tmp_path / "export.json", tasks)
    checked = check_source(tlsync_labelstudio.LabelStudioSource(), store=tlsync_store, path=export, images=bccd)
    items = checked.by_id()
    assert len(items) == 364 and checked.result.boxes == 4886
    assert sorted(checked.dataset.categories) == ["Platelets", "RBC", "WBC"]
    for task_id, boxes in expected.items():
        got = [(b.label, b.x, b.y, b.width, b.height) for b in items[task_id].annotations]
        assert [g[0] for g in got] == [e[0] for e in boxes], task_id
        for g, e in zip(got, boxes, strict=True):
            assert max(abs(a - b) for a, b in zip(g[1:], e[1:], strict=True)) <= 0.5, (task_id, g, e)


def test_bccd_zero_size_boxes_are_bad_input_naming_file_task_and_result(bccd, tmp_path, tlsync_store):
    tasks, _ = voc_to_label_studio(bccd, ["BloodImage_00338", "BloodImage_00343"], drop_empty=False)
    export = write_json(tmp_path / "export.json", tasks)
    source = tlsync_labelstudio.LabelStudioSource()
    with pytest.raises(SourceError, match=rf"^{export}: task 1: annotation 1001: result r1-\d+ 'RBC' has no area"):
        pull(tlsync_store, source, {"path": export, "images": bccd}, "cells")
    result = pull(tlsync_store, source, {"path": export, "images": bccd}, "cells", on_error="skip")
    assert sum(result.skipped.values()) == 2 and result.items == 2


def rect(rid: str, label: str, x: float, y: float, w: float = 10, h: float = 10, **extra: Any) -> dict:
    return {"id": rid, "type": "rectanglelabels", "original_width": 200, "original_height": 100,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}, **extra}


def annotation(aid: int, updated: str, *results: dict, cancelled: bool = False) -> dict:
    return {"id": aid, "result": list(results), "was_cancelled": cancelled, "created_at": "2024-01-01T00:00:00Z",
            "updated_at": updated}


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """Label Studio's media folder: uploads live in upload/<project>/."""
    for seed, name in enumerate(("a.png", "b.png", "c.png", "d.png")):
        write_image(tmp_path / "media" / "upload" / "3" / name, 200, 100, seed=seed)
    return tmp_path / "media"


TASKS = [
    {"id": 11, "data": {"image": "/data/upload/3/a.png"}, "annotations": [
        annotation(1, "2024-02-01T09:00:00Z", rect("old", "cat", 10, 10)),
        annotation(2, "2024-02-03T09:00:00.5+00:00", rect("new", "dog", 50, 20, 25, 50),
                   {"id": "poly", "type": "polygonlabels", "value": {"points": [[1, 1], [2, 2], [1, 2]]}}),
        annotation(3, "2024-02-09T09:00:00Z", rect("skipped", "cat", 0, 0), cancelled=True),
    ], "predictions": [{"id": 7, "result": [rect("p", "bird", 5, 5)], "created_at": "2024-03-01T00:00:00Z"}]},
    {"id": 12, "data": {"image": "/data/upload/3/b.png"}, "annotations": [
        annotation(4, "2024-02-01T09:00:00Z", rect("x", "cat", 1, 1), cancelled=True)]},
    {"id": 13, "data": {"image": "/data/upload/3/c.png"}, "annotations": [],
     "predictions": [{"id": 8, "result": [rect("p1", "bird", 0, 0, 50, 50)], "created_at": "2024-01-01T00:00:00Z"},
                     {"id": 9, "result": [rect("p2", "cat", 50, 50, 50, 50)], "created_at": "2024-01-05T00:00:00Z"}]},
    {"id": 14, "data": {"image": "/data/upload/3/d.png"}, "annotations": [annotation(5, "2024-01-01T00:00:00Z")]},
]


def test_latest_non_cancelled_annotation_wins_and_predictions_wait_to_be_asked(tmp_path, media, tlsync_store):
    export = write_json(tmp_path / "export.json", TASKS)
    source = tlsync_labelstudio.LabelStudioSource()
    plain = check_source(source, store=tlsync_store, path=export, images=media)
    items = plain.by_id()
    assert sorted(items) == ["11", "14"]  # 12 was skipped by its annotator, 13 has only predictions
    (dog,) = items["11"].annotations
    assert (dog.label, dog.x, dog.y, dog.width, dog.height) == ("dog", 100, 20, 50, 50)
    assert items["14"].annotations == [] and items["11"].metadata == {"task": 11, "annotation": 2}
    assert plain.result.not_used == {"polygonlabels results": 1}
    assert plain.result.skipped == {"tasks without a usable annotation (unlabelled or skipped)": 2}

    predicted = check_source(source, store=tlsync_store, path=export, images=media, use_predictions=True).by_id()
    assert sorted(predicted) == ["11", "13", "14"]
    assert [b.label for b in predicted["11"].annotations] == ["dog"]  # an annotation beats any prediction
    (cat,) = predicted["13"].annotations
    assert (cat.label, cat.x, cat.y, predicted["13"].metadata["prediction"]) == ("cat", 100, 50, 9)


@pytest.mark.parametrize("content, message", [
    ("[{]", "not valid JSON"),
    ('{"tasks": []}', "expected a list of tasks"),
    ('[{"data": {"image": "a.png"}}]', "task #0: field 'id' is missing"),
    ('[{"id": 5, "data": {"img": "a.png"}}]', "task 5: data.image is missing (name the image field with --image-key)"),
    ('[{"id": 5, "data": {"image": "s3://bucket/a.png"}, "annotations": [{"id": 1, "result": []}]}]',
     "task 5: image 's3://bucket/a.png': s3:// cloud storage is not supported"),
    ('[{"id": 5, "data": {"image": "../../a.png"}, "annotations": [{"id": 1, "result": []}]}]',
     "task 5: image '../../a.png' must be a path inside --images"),
    ('[{"id": 5, "data": {"image": "a.png"}, "annotations": [{"id": 1, "result": [{"id": "r", '
     '"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 5, "height": 5, "rectanglelabels": ["cat"]}}]}]}]',
     "task 5: annotation 1: result r: original_width/original_height missing"),
])
def test_a_bad_export_is_reported_with_file_and_task(tmp_path, tlsync_store, content, message):
    export = tmp_path / "export.json"
    export.write_text(content)
    with pytest.raises(SourceError) as failed:
        pull(tlsync_store, tlsync_labelstudio.LabelStudioSource(), {"path": export}, "cells")
    assert str(failed.value).startswith(str(export)) and message in str(failed.value)


def test_plugin_registers_one_valid_source():
    assert list(check_plugin(tlsync_labelstudio)) == ["labelstudio"]


def test_cli_pulls_an_export_with_its_media_folder(tmp_path, media, tlsync_plugins, run_cli):
    tlsync_plugins(tlsync_labelstudio)
    assert "labelstudio: Label Studio" in run_cli("sources").stdout
    export = write_json(tmp_path / "export.json", TASKS)
    pulled = run_cli("pull", "--source", "labelstudio", "--path", export, "--images", media, "--dataset", "cells")
    assert pulled.exit_code == 0, pulled.stderr
    assert "2 items, 1 boxes" in pulled.stdout and "new version cells@1" in pulled.stdout
    neither = run_cli("pull", "--source", "labelstudio", "--dataset", "cells")
    assert neither.exit_code == 1 and "give --path EXPORT.json or --project ID" in neither.stderr


def test_images_named_outside_the_media_folder_are_refused(tmp_path):
    """The kit plants a symlink leading out, a '..' name and an absolute name; each must be refused."""
    from tlsync.testing import check_path_escapes

    def export(folder: Path, name: str) -> dict:
        task = {"id": 1, "data": {"image": f"/data/local-files/?d={name}"},
                "annotations": [{"id": 2, "result": [{"type": "rectanglelabels", "original_width": 64,
                                                      "original_height": 48, "value": {
                                                          "x": 10, "y": 10, "width": 20, "height": 20,
                                                          "rectanglelabels": ["cat"]}}]}]}
        return {"path": write_json(folder / "export.json", [task]), "images": folder / "media"}

    check_path_escapes(tlsync_labelstudio.LabelStudioSource(), export, images="media")
