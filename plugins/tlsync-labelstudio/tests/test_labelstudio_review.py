"""``tlsync audit --target labelstudio``: one task per suspect image, on the real Label Studio server.

The task holds the image's current labels as its annotation and the audit's suggested
labelling as its prediction, so a reviewer sees both side by side; a re-run sends nothing.
"""

from __future__ import annotations

from pathlib import Path

from ls_server import CONFIG
from test_labelstudio_target import items
from tlsync_labelstudio_target import LabelStudioTarget

from tlsync.format import Box, Item
from tlsync.targets import Selection

RUN = {"name": "audit-cells-1"}


def review(tmp_path: Path, remote: bool) -> Selection:
    """Three suspect images: the current label, and a suggestion that moves it and changes its class."""
    labelled = items(tmp_path, remote)
    suggested = [Item(i.id, i.image, [Box("cell", 30, 20, 50, 40, confidence=0.8)], i.split) for i in labelled]
    for item in labelled:
        item.annotations = [Box("debris", 20, 10, 50, 40)]
    return Selection("cells-1", suggested, [0.9, 0.8, 0.7], "cells@1", "audit", tmp_path,
                     lambda item: Path(item.image.uri), labels=labelled)


def tasks_of(label_studio, project: int) -> list[dict]:
    listed = label_studio.api("GET", "/api/tasks", params={"project": project, "fields": "all"})["tasks"]
    out = sorted(listed, key=lambda t: t["id"])
    for task in out:
        task["annotations"] = label_studio.api("GET", f"/api/tasks/{task['id']}/annotations")
        task["predictions"] = label_studio.api("GET", "/api/predictions", params={"task": task["id"]})
    return out


def test_a_review_puts_the_label_and_the_suggestion_on_one_task_once(label_studio, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.pat)
    for remote in (True, False):  # JSON import of URL tasks, and uploads of local images
        project = label_studio.api("POST", "/api/projects", json={"title": f"review-{remote}",
                                                                  "label_config": CONFIG})["id"]
        chosen = review(tmp_path / str(remote), remote)
        sent = LabelStudioTarget().send_selection(chosen, RUN, ls_project=project, url=label_studio.url)
        assert sent["sent"] == 3
        tasks = tasks_of(label_studio, project)
        assert len(tasks) == 3
        for task in tasks:
            (annotation,) = task["annotations"]
            (label,) = annotation["result"]
            assert label["value"]["rectanglelabels"] == ["debris"] and label["value"]["x"] == 10.0  # 20 of 200 px
            (predicted,) = task["predictions"]
            (suggestion,) = predicted["result"]
            assert suggestion["value"]["rectanglelabels"] == ["cell"] and suggestion["value"]["x"] == 15.0
            assert predicted["model_version"] == "audit-cells-1"
        again = LabelStudioTarget().send_selection(chosen, RUN, ls_project=project, url=label_studio.url)
        assert again["sent"] == 0 and again["already_there"] == 3
        assert len(tasks_of(label_studio, project)) == 3
