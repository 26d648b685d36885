"""One model, many requests: images from concurrent ``/predict`` calls are run together.

Label Studio sends a task per request when a person opens it and many at once for "Retrieve
predictions"; either way the model sees batches of up to ``batch_size`` images, gathered for at
most ``wait`` seconds. The model runs on one thread (the only one that touches it), and each
image's outcome, boxes or the error that image caused, goes back to the request that sent it.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tlsync.errors import TlsyncError
from tlsync.format import Box, ImageRef, Item

from ..evaluation.predict import predict_items


@dataclass
class _Job:
    item: Item
    path: Path
    done: threading.Event = field(default_factory=threading.Event)
    result: list[Box] | TlsyncError | None = None


class Batcher:
    def __init__(self, model: Any, categories: list[str], device: Any, conf: float, batch_size: int,
                 wait: float = 0.002):
        self.model, self.categories, self.device = model, categories, device
        self.conf, self.batch_size, self.wait = conf, batch_size, wait
        self._jobs: queue.Queue[_Job] = queue.Queue()
        self._ids = itertools.count()
        self.batches = 0
        threading.Thread(target=self._run, name="tlsync-serve-model", daemon=True).start()

    def boxes(self, images: list[tuple[Path, int, int]]) -> list[list[Box] | TlsyncError]:
        """Each image's boxes (pixels, ``confidence`` set), or the error it caused, in the order given."""
        jobs = [_Job(Item(str(next(self._ids)), ImageRef(str(path), width=w, height=h)), path)
                for path, w, h in images]
        for job in jobs:
            self._jobs.put(job)
        for job in jobs:
            job.done.wait()
        return [job.result if job.result is not None else TlsyncError("no result") for job in jobs]

    def _run(self) -> None:
        while True:
            batch = [self._jobs.get()]
            ends = time.monotonic() + self.wait
            while len(batch) < self.batch_size:
                try:
                    batch.append(self._jobs.get(timeout=max(0.0, ends - time.monotonic())))
                except queue.Empty:
                    break
            self._predict(batch)

    def _predict(self, batch: list[_Job]) -> None:
        """Run a batch; when it fails, run its images one by one so that only the bad one is an error."""
        self.batches += 1
        paths = {job.item.id: job.path for job in batch}
        try:
            found = predict_items(self.model, [job.item for job in batch], lambda item: paths[item.id],
                                  self.categories, self.device, len(batch), self.conf)
            for job, predicted in zip(batch, found, strict=True):
                job.result = predicted.annotations
        except Exception as e:  # noqa: BLE001  an image that breaks the model must not stop the server
            if len(batch) > 1:
                for job in batch:
                    self._predict([job])
                return
            batch[0].result = e if isinstance(e, TlsyncError) else TlsyncError(f"the model failed on this image "
                                                                                 f"({type(e).__name__}: {e})")
        for job in batch:
            job.done.set()
