"""``tlsync serve`` as the ML backend of a real Label Studio: connected with ``POST /api/ml`` (basic auth),
its "Retrieve predictions" action stores the boxes ``tlsync predict`` finds on the same images, a config
that cannot show the run's classes is refused saying which, and one bad image fails only its task.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from ls_server import CONFIG, LabelStudio

from tlsync.testing import LoopbackServer, Response, run_cli, write_image

USER, PASSWORD = "ls", "serve-secret-123"
CONF = "0.2"


@pytest.fixture(scope="module")
def backend(label_studio: LabelStudio, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``tlsync serve --run`` in its own process, as a user starts it; its URL. Stopped with SIGTERM."""
    env = {**os.environ, "TLSYNC_HOME": str(tiny_run.parent.parent), "LABEL_STUDIO_URL": label_studio.url,
           "LABEL_STUDIO_API_KEY": label_studio.pat, "TLSYNC_SERVE_PASSWORD": PASSWORD,
           "TLSYNC_LOAD_PLUGINS": "labelstudio"}
    log = tmp_path_factory.mktemp("serve") / "stderr.log"
    with open(log, "wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "tlsync", "serve", "--run", str(tiny_run), "--port", "0",
                                    "--conf", CONF, "--device", "cpu", "--basic-auth-user", USER],
                                   env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    assert process.stdout is not None
    try:
        first = process.stdout.readline()
        assert first.startswith("serving shapes-1 (3 classes: circle, square, triangle) at http://127.0.0.1:"), \
            first + log.read_text()
        assert "ML_BLOCK_LOCAL_IP=false" in log.read_text()
        yield first.rsplit(" at ", 1)[1].strip()
    finally:
        process.send_signal(signal.SIGTERM)
        closing, _ = process.communicate(timeout=60)
        assert process.returncode == 0 and closing.startswith("served "), closing + log.read_text()


def images(folder: Path) -> list[Path]:
    folder.mkdir()
    return [write_image(folder / f"p{i}.png", 96, 96, seed=300 + i) for i in range(3)]


def test_label_studio_retrieves_predictions_from_serve_equal_to_tlsync_predict(
        label_studio, backend, tiny_run, tmp_path, monkeypatch) -> None:
    project = int(label_studio.api("POST", "/api/projects", json={"title": "serve", "label_config": CONFIG})["id"])
    pictures = images(tmp_path / "pool")
    tasks = {}
    for picture in pictures:
        with open(picture, "rb") as f:
            answer = label_studio.api("POST", f"/api/projects/{project}/import", params={"return_task_ids": "true"},
                                      files={"file": (picture.name, f, "image/png")})
        tasks[answer["task_ids"][0]] = picture.name
    connect = {"url": backend, "project": project, "title": "tlsync", "auth_method": "BASIC_AUTH",
               "basic_auth_user": USER, "basic_auth_pass": PASSWORD}
    made = requests.post(f"{label_studio.url}/api/ml", json=connect, timeout=120,
                         headers={"Authorization": f"Bearer {_access(label_studio)}"})
    assert made.status_code in (201, 403), made.text  # 1.23.2 may answer 403 and keep the backend all the same
    (connected,) = label_studio.api("GET", "/api/ml", params={"project": project})
    assert connected["state"] == "CO", connected
    done = label_studio.api("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
                            json={"selectedItems": {"all": True, "excluded": []}})
    assert done["processed_items"] == 3

    stored = {}
    for task, name in tasks.items():
        (prediction,) = label_studio.api("GET", "/api/predictions", params={"task": task})
        assert prediction["model_version"] == "shapes-1"
        stored[name] = sorted(_pixels(r) for r in prediction["result"])
    monkeypatch.setenv("TLSYNC_HOME", str(tiny_run.parent.parent))
    predicted = run_cli("predict", "--run", str(tiny_run), str(tmp_path / "pool"), "--conf", CONF, "--device", "cpu",
                        "--out", str(tmp_path / "preds"))
    assert predicted.exit_code == 0, predicted.stderr
    expected = _coco(tmp_path / "preds")
    assert sum(len(b) for b in expected.values()) > 0
    assert stored.keys() == expected.keys()
    for name, boxes in expected.items():
        assert [b[0] for b in stored[name]] == [b[0] for b in boxes]
        assert [v for b in stored[name] for v in b[1:]] == pytest.approx([v for b in boxes for v in b[1:]], abs=1e-6)


def test_setup_names_the_classes_a_config_lacks_and_basic_auth_is_required(backend) -> None:
    lacking = CONFIG.replace('<Label value="triangle"/>', "")
    refused = requests.post(f"{backend}/setup", json={"schema": lacking}, auth=(USER, PASSWORD), timeout=30)
    assert refused.status_code == 400
    assert "RectangleLabels 'label' lacks 'triangle' (the run's classes: circle, square, triangle)" in refused.reason
    assert requests.post(f"{backend}/setup", json={"schema": CONFIG}, timeout=30).status_code == 401
    fine = requests.post(f"{backend}/setup", json={"schema": CONFIG}, auth=(USER, PASSWORD), timeout=30)
    assert fine.json() == {"model_version": "shapes-1"}
    assert requests.get(f"{backend}/versions", auth=(USER, PASSWORD), timeout=30).json() == {"versions": ["shapes-1"]}


def test_one_bad_image_is_an_error_for_its_task_only(backend, tmp_path) -> None:
    good = write_image(tmp_path / "good.png", 96, 96, seed=301).read_bytes()
    cdn = LoopbackServer()

    @cdn.route("GET", "/{name}")
    def serve(request: Any) -> Response:
        bodies = {"good.png": good, "cut.png": good[: len(good) // 2], "text.png": b"not an image"}
        return Response(200, bodies[request.params["name"]], {"Content-Type": "image/png"})

    with cdn:
        tasks = [{"id": n, "data": {"image": f"{cdn.url}/{name}"}} for n, name in
                 enumerate(["good.png", "cut.png", "text.png", "good.png"], 1)]
        tasks.append({"id": 5, "data": {"image": "/etc/passwd"}})
        answer = requests.post(f"{backend}/predict", json={"tasks": tasks, "label_config": CONFIG},
                               auth=(USER, PASSWORD), timeout=120).json()
        assert [r.headers.get("Authorization") for r in cdn.requests("GET", "/")] == [None] * 4  # the key stays home
    results = answer["results"]
    assert [("result" in r, "error" in r) for r in results] == [(True, False), (False, True), (False, True),
                                                                (True, False), (False, True)]
    assert results[0]["result"] == results[3]["result"]
    assert "task 2: " in results[1]["error"] and "task 5: image /etc/passwd is a local path" in results[4]["error"]
    assert requests.get(f"{backend}/health", auth=(USER, PASSWORD), timeout=30).json()["status"] == "UP"


def _access(server: LabelStudio) -> str:
    answer = requests.post(f"{server.url}/api/token/refresh/", json={"refresh": server.pat}, timeout=30)
    return str(answer.json()["access"])


def _pixels(result: dict[str, Any]) -> tuple[Any, ...]:
    value, w, h = result["value"], result["original_width"], result["original_height"]
    return (value["rectanglelabels"][0], value["x"] * w / 100, value["y"] * h / 100, value["width"] * w / 100,
            value["height"] * h / 100, result["score"])


def _coco(out: Path) -> dict[str, list[tuple[Any, ...]]]:
    meta = json.loads((out / "images.json").read_text())
    names = {c["id"]: c["name"] for c in meta["categories"]}
    files = {i["id"]: Path(i["file_name"]).name for i in meta["images"]}
    found: dict[str, list[tuple[Any, ...]]] = {name: [] for name in files.values()}
    for p in json.loads((out / "predictions.json").read_text()):
        found[files[p["image_id"]]].append((names[p["category_id"]], *p["bbox"], p["score"]))
    return {name: sorted(boxes) for name, boxes in found.items()}
