"""``tlsync select --target labelstudio``: the selected images become Label Studio tasks,
pre-annotated with the run's boxes.

    LABEL_STUDIO_URL=https://ls.example.com LABEL_STUDIO_API_KEY=... \\
        tlsync select --run runs/cells-1 --pool-path new-photos --budget 50 --target labelstudio --ls-project 3

Requests are those of ``label-studio-sdk``: ``POST /api/projects/{id}/import`` with a JSON
list of tasks (``data`` + ``predictions``) for images that have a URL; for local images a
multipart upload to the same route (``return_task_ids=true``), then the task's data is
marked and ``POST /api/predictions`` attaches the boxes. Boxes go in Label Studio's
``rectanglelabels`` form: percentages of the image, classes by name, ``model_version`` the
run's name. Every task's data carries ``tlsync_sha256``; before sending, the project's
tasks are listed and images already there are skipped, so a re-run never duplicates a
task and, after a failure, sends only what is missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from tlsync_labelstudio_client import URL, LabelStudioClient

from tlsync.errors import TlsyncError
from tlsync.format import Box, Item
from tlsync.http import HttpClient, HttpError
from tlsync.targets import Selection, Target

MARK = "tlsync_sha256"
PAGE = 100  # tasks per listing page
IMPORT_BATCH = 200  # URL tasks per import request


def prediction(item: Item, run_name: str, from_name: str, to_name: str, score: float | None = None) -> dict[str, Any]:
    """The run's boxes for one image as a Label Studio prediction (percent coordinates)."""
    width, height = item.image.width, item.image.height
    if not width or not height:
        raise TlsyncError(f"item '{item.id}': image size unknown, so its boxes cannot become percentages")
    result = [_rectangle(n, box, width, height, from_name, to_name) for n, box in enumerate(item.annotations)]
    mean = sum(b.confidence or 0.0 for b in item.annotations) / len(item.annotations) if item.annotations else 0.0
    return {"model_version": run_name, "score": round(mean if score is None else score, 5), "result": result}


def _rectangle(n: int, box: Box, width: int, height: int, from_name: str, to_name: str) -> dict[str, Any]:
    return {"id": f"tlsync{n}", "type": "rectanglelabels", "from_name": from_name, "to_name": to_name,
            "original_width": width, "original_height": height, "image_rotation": 0,
            "score": box.confidence,
            "value": {"x": 100 * box.x / width, "y": 100 * box.y / height, "width": 100 * box.width / width,
                      "height": 100 * box.height / height, "rotation": 0, "rectanglelabels": [box.label]}}


class LabelStudioTarget(Target):
    name = "labelstudio"
    description = "Label Studio: import selected images as tasks with the run's boxes as predictions."
    selection_options = [
        # Not --project: that is select's own (the folder of selections), and a clash is refused at registration.
        click.Option(["--ls-project"], type=click.IntRange(min=1), required=True,
                     help="Label Studio project id to add the tasks to."),
        click.Option(["--url"], envvar=URL, help=f"Label Studio server URL (default: ${URL})."),
        click.Option(["--image-key"], default="image", show_default=True,
                     help="Task data field the labelling config reads the image from ($image)."),
        click.Option(["--from-name"], default="label", show_default=True,
                     help="Name of the RectangleLabels control in the labelling config."),
        click.Option(["--to-name"], default="image", show_default=True,
                     help="Name of the Image object in the labelling config."),
    ]

    def __init__(self, http: HttpClient | None = None):
        self.http = http or HttpClient()

    def push(self, predictions: Iterator[Item], run: dict[str, Any], **options: Any) -> dict[str, Any]:
        raise TlsyncError("target 'labelstudio' receives selections (tlsync select --target labelstudio), "
                          "not tlsync push")

    def send_selection(self, selection: Selection, run: dict[str, Any], ls_project: int | None = None,
                       url: str | None = None, image_key: str = "image", from_name: str = "label",
                       to_name: str = "image", **_: Any) -> dict[str, Any]:
        if not url:
            raise TlsyncError(f"labelstudio: pass --url or set {URL}")
        if not ls_project:
            raise TlsyncError("labelstudio: pass --ls-project ID (the Label Studio project to add the tasks to)")
        project = ls_project
        api = _Api(LabelStudioClient(self.http, url), project)
        there = api.marked()
        todo = [item for item in selection.items if item.image.sha256 not in there]
        by_url = [item for item in todo if item.image.uri.startswith(("http://", "https://"))]
        uploads = [item for item in todo if not item.image.uri.startswith(("http://", "https://"))]
        sent = 0
        try:
            for start in range(0, len(by_url), IMPORT_BATCH):
                batch = by_url[start:start + IMPORT_BATCH]
                api.import_tasks([{"data": _data(item, item.image.uri, image_key, selection),
                                   "predictions": [prediction(item, run["name"], from_name, to_name)],
                                   **_review(selection, item, from_name, to_name)}
                                  for item in batch])
                sent += len(batch)
            for item in uploads:
                api.upload(item, selection.image_path(item), image_key, selection,
                           prediction(item, run["name"], from_name, to_name),
                           _review(selection, item, from_name, to_name))
                sent += 1
        except TlsyncError as e:
            raise TlsyncError(f"Label Studio project {project}: sent {sent} of {len(todo)} missing tasks, "
                              f"{len(todo) - sent} not sent: {e}") from None
        return {"project": project, "tasks": len(selection.items), "sent": sent,
                "already_there": len(selection.items) - len(todo), "uploaded": len(uploads)}


def _data(item: Item, image: str, image_key: str, selection: Selection) -> dict[str, Any]:
    return {image_key: image, MARK: item.image.sha256, "tlsync_item": item.id, "tlsync_selection": selection.name}


def _review(selection: Selection, item: Item, from_name: str, to_name: str) -> dict[str, Any]:
    """For ``tlsync audit``: the image's current labels as the task's annotation, beside the suggestion.

    The reviewer sees the label as it is (the annotation) and the audit's suggested labelling
    (the prediction) on one task, and keeps or corrects it. A selection has no labels: nothing.
    """
    labelled = next((i for i in selection.labels or [] if i.id == item.id), None)
    if labelled is None:
        return {}
    width, height = labelled.image.width, labelled.image.height
    if not width or not height:
        raise TlsyncError(f"item '{item.id}': image size unknown, so its boxes cannot become percentages")
    result = [_rectangle(n, box, width, height, from_name, to_name) for n, box in enumerate(labelled.annotations)]
    return {"annotations": [{"result": result, "ground_truth": False}]}


class _Api:
    """The few Label Studio calls the target makes; the token goes to this server only."""

    def __init__(self, client: LabelStudioClient, project: int):
        self.client, self.server, self.project = client, client.server, project

    def _call(self, method: str, route: str, **kwargs: Any) -> Any:
        return self.client.json(method, route, "Label Studio", **kwargs)

    def marked(self) -> set[str]:
        """The ``tlsync_sha256`` of every task already in the project (listed page by page)."""
        found: set[str] = set()
        page, seen = 1, 0
        while True:
            try:
                answer = self._call("GET", "/api/tasks", params={"project": self.project, "page": page,
                                                                 "page_size": PAGE})
            except HttpError as e:
                if e.status == 404 and page > 1:
                    return found  # Label Studio answers 404 for the page after the last
                if e.status == 404:
                    raise TlsyncError(f"Label Studio project {self.project} not found at {self.server}") from None
                raise
            tasks = answer.get("tasks", []) if isinstance(answer, dict) else answer
            if not isinstance(tasks, list):
                raise TlsyncError(f"Label Studio: GET {self.server}/api/tasks returned no task list")
            found.update(str(t["data"][MARK]) for t in tasks
                         if isinstance(t, dict) and isinstance(t.get("data"), dict) and t["data"].get(MARK))
            seen += len(tasks)
            total = answer.get("total") if isinstance(answer, dict) else None
            # The server may cap page_size below ours: trust its total when it gives one.
            if not tasks or (seen >= total if isinstance(total, int) else len(tasks) < PAGE):
                return found
            page += 1

    def import_tasks(self, tasks: list[dict[str, Any]]) -> None:
        self._call("POST", f"/api/projects/{self.project}/import", json=tasks)

    def upload(self, item: Item, path: Path, image_key: str, selection: Selection,
               predicted: dict[str, Any], review: dict[str, Any] | None = None) -> None:
        """Upload one image as a task, mark its data, attach the prediction (and, for a review, the labels)."""
        with open(path, "rb") as f:
            answer = self._call("POST", f"/api/projects/{self.project}/import", params={"return_task_ids": "true"},
                                files={"file": (Path(item.id).name or path.name, f)})
        ids = answer.get("task_ids") if isinstance(answer, dict) else None
        if not isinstance(ids, list) or len(ids) != 1:
            raise TlsyncError(f"item '{item.id}': the upload returned no single task id")
        task = self._call("GET", f"/api/tasks/{ids[0]}")
        stored = task.get("data", {}).get(image_key) if isinstance(task, dict) else None
        if not isinstance(stored, str):
            raise TlsyncError(f"item '{item.id}': uploaded task {ids[0]} has no data.{image_key}")
        self._call("PATCH", f"/api/tasks/{ids[0]}", json={"data": _data(item, stored, image_key, selection)})
        self._call("POST", "/api/predictions", json={"task": ids[0], **predicted})
        for annotation in (review or {}).get("annotations", []):
            self._call("POST", f"/api/tasks/{ids[0]}/annotations", json=annotation)
