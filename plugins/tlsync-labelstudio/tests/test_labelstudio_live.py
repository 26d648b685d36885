"""The plugin against a real Label Studio (``label_studio`` in conftest): the pull with a Personal
Access Token and with a legacy token, ``--use-predictions``, and ``select --target labelstudio``.

One server serves the session; each test makes its own project, so they do not see each other's tasks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from ls_server import CONFIG, LabelStudio
from tlsync_labelstudio_client import LabelStudioClient

from tlsync.http import HttpClient
from tlsync.secrets import redact
from tlsync.store import Store
from tlsync.testing import LoopbackServer, Response, isolated_plugins, run_cli, write_image

W, H = 160, 120


def rectangle(label: str, x: float, y: float, w: float, h: float, score: float | None = None) -> dict[str, Any]:
    """One box, given in pixels, as Label Studio stores it (percent of the image)."""
    return {"type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": W,
            "original_height": H, **({"score": score} if score is not None else {}),
            "value": {"x": 100 * x / W, "y": 100 * y / H, "width": 100 * w / W, "height": 100 * h / H,
                      "rotation": 0, "rectanglelabels": [label]}}


def new_project(server: LabelStudio, title: str) -> int:
    return int(server.api("POST", "/api/projects", json={"title": title, "label_config": CONFIG})["id"])


def upload(server: LabelStudio, project: int, image: Path) -> int:
    """An image uploaded as a user drags it in: one task whose image is under /data/upload/."""
    with open(image, "rb") as f:
        answer = server.api("POST", f"/api/projects/{project}/import", params={"return_task_ids": "true"},
                            files={"file": (image.name, f, "image/png")})
    (task,) = answer["task_ids"]
    return int(task)


@pytest.fixture(scope="module")
def cells(label_studio: LabelStudio, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A project of four uploaded images: two annotated (one with a skipped annotation too), one with only
    a model prediction, one untouched."""
    folder = tmp_path_factory.mktemp("cells")
    project = new_project(label_studio, "cells")
    images = [write_image(folder / f"cell-{i}.png", W, H, seed=40 + i) for i in range(4)]
    tasks = [upload(label_studio, project, image) for image in images]
    label_studio.api("POST", f"/api/tasks/{tasks[0]}/annotations/", json={
        "result": [rectangle("cell", 16, 12, 40, 30), rectangle("debris", 80, 60, 20, 24)]})
    label_studio.api("POST", f"/api/tasks/{tasks[1]}/annotations/", json={"result": [], "was_cancelled": True})
    label_studio.api("POST", f"/api/tasks/{tasks[1]}/annotations/", json={"result": [rectangle("cell", 8, 8, 64, 48)]})
    label_studio.api("POST", "/api/predictions", json={"task": tasks[2], "model_version": "m1", "score": 0.7,
                                                        "result": [rectangle("debris", 32, 24, 48, 36, 0.7)]})
    return {"project": project, "tasks": tasks, "sha256": [hashlib.sha256(i.read_bytes()).hexdigest() for i in images]}


def pull(server: LabelStudio, key: str, project: int, dataset: str, monkeypatch: pytest.MonkeyPatch,
         *extra: str) -> Any:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", key)
    monkeypatch.setenv("TLSYNC_LOAD_PLUGINS", "labelstudio")
    with isolated_plugins():
        return run_cli("pull", "--source", "labelstudio", "--project", str(project), "--url", server.url,
                       "--dataset", dataset, *extra)


def boxes(dataset: str) -> dict[str, list[tuple[Any, ...]]]:
    version = Store().open(dataset)
    return {item.id: sorted((b.label, round(b.x, 6), round(b.y, 6), round(b.width, 6), round(b.height, 6))
                            for b in item.annotations) for item in version.items()}


def test_pull_with_a_personal_access_token_gets_boxes_in_pixels_and_the_uploaded_bytes(
        label_studio, cells, tlsync_home, monkeypatch) -> None:
    result = pull(label_studio, label_studio.pat, cells["project"], "cells", monkeypatch)
    assert result.exit_code == 0, result.stderr
    first, second = (str(t) for t in cells["tasks"][:2])
    assert boxes("cells") == {first: [("cell", 16, 12, 40, 30), ("debris", 80, 60, 20, 24)],
                              second: [("cell", 8, 8, 64, 48)]}
    version = Store().open("cells")
    stored = {item.id: hashlib.sha256(version.image_path(item).read_bytes()).hexdigest() for item in version.items()}
    assert stored == {first: cells["sha256"][0], second: cells["sha256"][1]}
    assert "Label Studio project" in result.stdout and ": 4 tasks" in result.stdout
    assert "2 x tasks without a usable annotation" in result.stdout
    assert label_studio.pat not in result.stdout + result.stderr


def test_predictions_are_used_when_asked_and_counted(label_studio, cells, tlsync_home, monkeypatch) -> None:
    result = pull(label_studio, label_studio.pat, cells["project"], "cells-p", monkeypatch, "--use-predictions")
    assert result.exit_code == 0, result.stderr
    predicted = str(cells["tasks"][2])
    assert boxes("cells-p")[predicted] == [("debris", 32, 24, 48, 36)]
    assert len(boxes("cells-p")) == 3
    assert "1 of 4 tasks used a model prediction" in result.stdout
    assert "1 x tasks without a usable annotation" in result.stdout
    snapshots = label_studio.api("GET", f"/api/projects/{cells['project']}/exports/")
    assert snapshots == []  # the export snapshot it made for the predictions is gone


def test_a_legacy_token_is_refused_with_the_servers_reason_until_the_organisation_enables_them(
        label_studio, cells, tlsync_home, monkeypatch) -> None:
    refused = pull(label_studio, label_studio.legacy, cells["project"], "cells-l", monkeypatch)
    assert refused.exit_code == 1
    assert "legacy token authentication has been disabled for this organization" in refused.stderr
    assert "refused a legacy token in LABEL_STUDIO_API_KEY" in refused.stderr
    assert "create a Personal Access Token" in refused.stderr
    assert label_studio.legacy not in refused.stderr
    label_studio.api("POST", "/api/jwt/settings", json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": True})
    try:
        result = pull(label_studio, label_studio.legacy, cells["project"], "cells-l", monkeypatch)
    finally:
        label_studio.api("POST", "/api/jwt/settings",
                         json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": False})
    assert result.exit_code == 0, result.stderr
    assert len(boxes("cells-l")) == 2


def test_a_wrong_pat_names_the_servers_reason_and_the_key_kind(label_studio, cells, tlsync_home,
                                                              monkeypatch) -> None:
    head, payload, signature = label_studio.pat.split(".")
    forged = f"{head}.{payload}.{signature[::-1]}"
    refused = pull(label_studio, forged, cells["project"], "cells-x", monkeypatch)
    assert refused.exit_code == 1
    assert "refused a Personal Access Token in LABEL_STUDIO_API_KEY" in refused.stderr
    assert "POST /api/token/refresh: HTTP 401: Token is invalid" in refused.stderr
    missing = pull(label_studio, label_studio.pat, 99999, "cells-x", monkeypatch)
    assert missing.exit_code == 1 and "Label Studio project 99999 not found" in missing.stderr


def test_access_tokens_are_renewed_once_on_a_401_and_scrubbed_like_keys(label_studio, monkeypatch) -> None:
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.pat)
    client = LabelStudioClient(HttpClient(), label_studio.url)
    access = client.headers()["Authorization"].removeprefix("Bearer ")
    assert redact(f"sent {access}") == "sent ***"
    client._access = ("not-an-access-token", 4e9)  # one the server no longer takes
    assert client.json("GET", "/api/current-user/whoami")["email"] == "annotator@example.com"
    later = LabelStudioClient(HttpClient(), label_studio.url, clock=lambda: 4e9)  # every token looks expired
    assert later.json("GET", "/api/current-user/whoami")["email"] == "annotator@example.com"


def test_images_on_other_hosts_never_see_the_token(label_studio, tlsync_home, tmp_path, monkeypatch) -> None:
    project = new_project(label_studio, "elsewhere")
    cdn = LoopbackServer()
    image = write_image(tmp_path / "b.png", W, H, seed=7).read_bytes()

    @cdn.route("GET", "/b.png")
    def serve(request: Any) -> Response:
        return Response(200, image, {"Content-Type": "image/png"})

    with cdn:
        label_studio.api("POST", f"/api/projects/{project}/import", json=[{
            "data": {"image": f"{cdn.url}/b.png"},
            "annotations": [{"result": [rectangle("cell", 10, 10, 20, 20)]}]}])
        result = pull(label_studio, label_studio.pat, project, "elsewhere", monkeypatch)
        assert result.exit_code == 0, result.stderr
        assert [r.headers.get("Authorization") for r in cdn.requests("GET", "/b.png")] == [None]
    assert list(boxes("elsewhere").values()) == [[("cell", 10, 10, 20, 20)]]


def pool(folder: Path) -> Path:
    for seed in range(3):
        write_image(folder / f"new-{seed}.png", 96, 96, seed=300 + seed)
    return folder


def test_select_sends_tasks_with_predictions_once_and_a_failed_send_makes_no_stray_folder(
        label_studio, tiny_run, tmp_path, monkeypatch) -> None:
    project = new_project(label_studio, "next")
    monkeypatch.setenv("TLSYNC_HOME", str(tiny_run.parent.parent))
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", label_studio.pat)
    monkeypatch.setenv("TLSYNC_LOAD_PLUGINS", "labelstudio")
    monkeypatch.chdir(tmp_path)
    photos = pool(tmp_path / "photos")

    def select(ls_project: int) -> Any:
        with isolated_plugins():
            return run_cli("select", "--run", str(tiny_run), "--pool-path", str(photos), "--budget", "2",
                           "--conf", "0", "--workers", "0", "--device", "cpu", "--target", "labelstudio",
                           "--ls-project", str(ls_project), "--url", label_studio.url)

    first = select(project)
    assert first.exit_code == 0, first.stderr
    assert f"labelstudio: project {project}, tasks 2, sent 2, already_there 0, uploaded 2" in first.stdout
    tasks = label_studio.api("GET", "/api/tasks", params={"project": project, "fields": "all"})["tasks"]
    assert len(tasks) == 2 and all(t["data"]["image"].startswith("/data/upload/") for t in tasks)
    predictions = [p for t in tasks for p in label_studio.api("GET", "/api/predictions", params={"task": t["id"]})]
    assert len(predictions) == 2 and {p["model_version"] for p in predictions} == {"shapes-1"}
    again = select(project)
    assert again.exit_code == 0, again.stderr
    assert "sent 0, already_there 2" in again.stdout
    assert len(label_studio.api("GET", "/api/tasks", params={"project": project})["tasks"]) == 2

    failed = select(99999)
    assert failed.exit_code == 1
    assert "Label Studio project 99999 not found" in failed.stderr
    assert "the selection itself is written: selections/" in failed.stderr
    assert not (tmp_path / "99999").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "selections"]

