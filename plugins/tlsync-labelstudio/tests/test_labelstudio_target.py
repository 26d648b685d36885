"""``tlsync select --target labelstudio``: URL tasks on the real server, and a failure midway against a
loopback stand-in (a real server cannot be made to fail on the second upload).

The stand-in keeps tasks the way Label Studio does: JSON imports become tasks with their
predictions, a multipart upload becomes a task whose image is ``/data/upload/...``, the
task list is paged and answers 404 past the last page, and every call needs the token.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from ls_server import CONFIG
from tlsync_labelstudio_target import LabelStudioTarget

from tlsync.errors import TlsyncError
from tlsync.format import Box, ImageRef, Item
from tlsync.targets import Selection
from tlsync.testing import LoopbackServer, Request, Response, write_image

KEY = "ls-token-5a5a5a5a5a5a"
RUN = {"name": "cells-1"}


class StandIn:
    def __init__(self, server: LoopbackServer, page_size_cap: int = 100):
        self.tasks: dict[int, dict] = {}
        self.predictions: list[dict] = []
        self.fail_uploads_after: int | None = None
        self._ids = itertools.count(1)
        self.server = server
        route = server.route

        def authed(handler):
            def guarded(request: Request) -> Response:
                if request.headers.get("Authorization") != f"Token {KEY}":
                    return Response.json({"detail": "Authentication credentials were not provided."}, 401)
                return handler(request)
            return guarded

        @route("GET", "/api/tasks")
        @authed
        def list_tasks(request: Request) -> Response:
            page, size = int(request.query["page"][0]), min(int(request.query["page_size"][0]), page_size_cap)
            ours = [t for t in self.tasks.values() if str(t["project"]) == request.query["project"][0]]
            chunk = ours[(page - 1) * size:page * size]
            if page > 1 and not chunk:
                return Response.json({"detail": "Invalid page."}, 404)
            return Response.json({"tasks": chunk, "total": len(ours)})

        @route("POST", "/api/projects/{project}/import")
        @authed
        def import_(request: Request) -> Response:
            project = int(request.params["project"])
            if request.headers.get("Content-Type", "").startswith("multipart/form-data"):
                if self.fail_uploads_after is not None and self.uploads() >= self.fail_uploads_after:
                    return Response.json({"detail": "storage full"}, 400)
                task_id = next(self._ids)
                self.tasks[task_id] = {"id": task_id, "project": project, "predictions": [],
                                       "data": {"image": f"/data/upload/{project}/f{task_id}.png"},
                                       "upload_bytes": len(request.body)}
                return Response.json({"task_count": 1, "task_ids": [task_id]}, 201)
            ids = []
            for task in request.json():
                task_id = next(self._ids)
                self.tasks[task_id] = {"id": task_id, "project": project, **task}
                ids.append(task_id)
            return Response.json({"task_count": len(ids)}, 201)

        @route("GET", "/api/tasks/{task}")
        @authed
        def get_task(request: Request) -> Response:
            return Response.json(self.tasks[int(request.params["task"])])

        @route("PATCH", "/api/tasks/{task}")
        @authed
        def patch_task(request: Request) -> Response:
            self.tasks[int(request.params["task"])]["data"] = request.json()["data"]
            return Response.json(self.tasks[int(request.params["task"])])

        @route("POST", "/api/predictions")
        @authed
        def predict(request: Request) -> Response:
            body = request.json()
            self.predictions.append(body)
            self.tasks[body["task"]]["predictions"].append(body)
            return Response.json({"id": len(self.predictions), **body}, 201)

    def uploads(self) -> int:
        return sum("upload_bytes" in t for t in self.tasks.values())


@pytest.fixture
def ls(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", KEY)
    with LoopbackServer() as server:
        yield StandIn(server, page_size_cap=2)  # small pages, so listing really pages


def items(tmp_path: Path, remote: bool, n: int = 3) -> list[Item]:
    out = []
    for i in range(n):
        local = tmp_path / f"img{i}.png"
        uri = f"https://cdn.example.org/img{i}.png" if remote else str(write_image(local, 200, 100, i))
        box = Box("cell" if i % 2 else "debris", 20, 10, 50, 40, confidence=0.6 + i / 10)
        out.append(Item(f"img{i}.png", ImageRef(uri, sha256=f"{i:064x}", width=200, height=100), [box]))
    return out


def selection(tmp_path: Path, chosen: list[Item]) -> Selection:
    return Selection("pool-1", chosen, [0.9 - i / 10 for i in range(len(chosen))], "pool@1", "uncertainty",
                     tmp_path, lambda item: Path(item.image.uri))


def send(ls: StandIn, chosen: Selection) -> dict:
    return LabelStudioTarget().send_selection(chosen, RUN, ls_project=3, url=ls.server.url)


def test_images_with_urls_become_tasks_with_predictions_once(label_studio, tmp_path, monkeypatch) -> None:
    """On the real server: URL tasks are imported as JSON with their predictions, and only once."""
    project = label_studio.api("POST", "/api/projects", json={"title": "by-url", "label_config": CONFIG})["id"]
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.pat)
    chosen = selection(tmp_path, items(tmp_path, remote=True))
    target = LabelStudioTarget()
    assert target.send_selection(chosen, RUN, ls_project=project, url=label_studio.url)["sent"] == 3
    listed = label_studio.api("GET", "/api/tasks", params={"project": project, "fields": "all"})["tasks"]
    tasks = sorted(listed, key=lambda t: t["id"])
    for task in tasks:
        task["predictions"] = label_studio.api("GET", "/api/predictions", params={"task": task["id"]})
    assert [t["data"]["image"] for t in tasks] == [f"https://cdn.example.org/img{i}.png" for i in range(3)]
    assert tasks[0]["data"]["tlsync_sha256"] == f"{0:064x}" and tasks[0]["data"]["tlsync_item"] == "img0.png"
    (predicted,) = tasks[1]["predictions"]
    assert predicted["model_version"] == "cells-1"
    (result,) = predicted["result"]
    assert (result["type"], result["from_name"], result["to_name"]) == ("rectanglelabels", "label", "image")
    assert (result["original_width"], result["original_height"]) == (200, 100)
    value = result["value"]
    assert value["rectanglelabels"] == ["cell"] and value["rotation"] == 0
    # Box (20, 10, 50, 40) px on a 200x100 image, in percent.
    assert [value[k] for k in ("x", "y", "width", "height")] == pytest.approx([10.0, 10.0, 25.0, 40.0])

    again = target.send_selection(chosen, RUN, ls_project=project, url=label_studio.url)
    listed = label_studio.api("GET", "/api/tasks", params={"project": project})["tasks"]
    assert (again["sent"], again["already_there"], len(listed)) == (0, 3, 3)


def test_a_failure_says_what_was_sent_and_a_rerun_sends_only_the_rest(ls, tmp_path) -> None:
    chosen = selection(tmp_path, items(tmp_path, remote=False, n=3))
    ls.fail_uploads_after = 1
    with pytest.raises(TlsyncError) as error:
        send(ls, chosen)
    assert "sent 1 of 3 missing tasks, 2 not sent" in str(error.value) and "HTTP 400" in str(error.value)
    assert KEY not in str(error.value)
    ls.fail_uploads_after = None
    assert send(ls, chosen)["sent"] == 2
    assert sorted(t["data"]["tlsync_item"] for t in ls.tasks.values()) == ["img0.png", "img1.png", "img2.png"]
