"""``tlsync pull/push`` with Nucleus against a real HTTP server on 127.0.0.1 (the fake Nucleus API)."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from fake_nucleus import FakeNucleus, serving_slice

from tlsync.connectors.nucleus import NucleusSource, NucleusTarget
from tlsync.format import Box, ImageRef, Item
from tlsync.testing import check_source
from tlsync.testing.server import Faults

KEY = "nucleus_live_8d1f0c9e2a7b"


@pytest.fixture
def nucleus(monkeypatch: pytest.MonkeyPatch):
    """A fake Nucleus with dataset ds_1 and slice slc_1 holding 20 items; env points tlsync at it."""
    with serving_slice(monkeypatch, KEY, 20, "horses", "horses train") as fake:
        yield fake


def pull_args(*extra: str) -> list[str]:
    return ["pull", "--source", "nucleus", "--slice", "slc_1", "--dataset", "horses", "--page-size", "7", *extra]


def assert_store_matches_server(store, fake: FakeNucleus, ref: str, expected_items: int) -> None:
    """Every item is there, and every stored image has exactly the server's bytes."""
    version = store.open(ref)
    items = list(version.items())
    assert len(items) == expected_items
    for item in items:
        data = version.image_path(item).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item.image.sha256 == fake.image_sha256(item.id), item.id
        assert (item.image.width, item.image.height) == fake.image_size


def test_pull_repull_and_incremental_pull(nucleus, run_cli, store):
    first = run_cli(*pull_args())
    assert first.exit_code == 0, first.stderr
    assert "Nucleus slice 'horses train' (slc_1) of dataset ds_1" in first.stdout
    assert "new version horses@1" in first.stdout
    assert sorted(nucleus.image_requests()) == sorted(nucleus.slices["slc_1"].ref_ids)
    assert_store_matches_server(store, nucleus, "horses@1", 20)

    nucleus.server.clear_log()
    again = run_cli(*pull_args())
    assert again.exit_code == 0, again.stderr
    assert "unchanged, still horses@1" in again.stdout
    assert nucleus.image_requests() == []  # though every image URL's signature changed

    added = nucleus.add_items("ds_1", 3, prefix="new", slice_id="slc_1")
    nucleus.server.clear_log()
    third = run_cli(*pull_args())
    assert third.exit_code == 0, third.stderr
    assert "new version horses@2" in third.stdout
    assert sorted(nucleus.image_requests()) == added
    assert_store_matches_server(store, nucleus, "horses@2", 23)


def test_the_key_is_sent_to_the_api_only(nucleus, run_cli, store):
    assert run_cli(*pull_args()).exit_code == 0
    for request in nucleus.server.log:
        assert ("Authorization" in request.headers) == request.path.startswith("/v1/nucleus/"), request.path
    written = "".join(p.read_text() for p in store.datasets_dir.rglob("*.json*"))
    assert KEY not in written


def test_pull_survives_429_503_and_resets(nucleus, run_cli, store):
    nucleus.add_items("ds_1", 20, prefix="more", slice_id="slc_1")
    nucleus.server.faults = Faults(rate=0.2, seed=7)

    result = run_cli(*pull_args())

    assert result.exit_code == 0, result.stderr
    faults = [r.fault for r in nucleus.server.log if r.fault]
    assert len(faults) >= 0.1 * len(nucleus.server.log) and set(faults) == {"429", "503", "reset"}
    assert any(r.fault and r.path.endswith("exportForTrainingPage") for r in nucleus.server.log)
    assert_store_matches_server(store, nucleus, "horses@1", 40)


def test_a_killed_pull_resumes_without_refetching(nucleus, run_cli, store):
    assert run_cli(*pull_args()).exit_code == 0
    before = store.open("horses@1").content_hash
    added = nucleus.add_items("ds_1", 40, prefix="late", slice_id="slc_1")
    nucleus.server.clear_log()
    nucleus.server.latency = 0.05

    child = subprocess.Popen([sys.executable, "-m", "tlsync", *pull_args("--concurrency", "2")],
                             env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(nucleus.image_requests()) < 12 and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()

    assert store.versions("horses") == [1] and store.open("horses@1").content_hash == before
    finished = finished_images(store)
    assert 0 < len(finished & set(added)) < len(added)
    for path in store.images_dir.glob("??/*"):  # only whole images under real names
        assert hashlib.sha256(path.read_bytes()).hexdigest() == path.stem

    nucleus.server.latency = 0
    nucleus.server.clear_log()
    rerun = run_cli(*pull_args())
    assert rerun.exit_code == 0, rerun.stderr
    assert "new version horses@2" in rerun.stdout
    assert sorted(nucleus.image_requests()) == sorted(set(added) - finished)
    assert not list((store.images_dir / ".tmp").iterdir())
    assert_store_matches_server(store, nucleus, "horses@2", 60)


def finished_images(store) -> set[str]:
    """Reference ids whose image the fetch cache records as stored."""
    with sqlite3.connect(store.home / "fetch-cache.sqlite") as db:
        keys = [k for (k,) in db.execute("SELECT key FROM fetched")]
    return {k.split(":")[1] for k in keys if k.startswith("nucleus:")}


def test_cli_errors_are_one_line_without_the_key(nucleus, run_cli, monkeypatch):
    missing = run_cli("pull", "--source", "nucleus", "--slice", "slc_gone", "--dataset", "horses")
    assert missing.exit_code == 1
    assert missing.stderr.strip() == "Error: slice slc_gone not found"

    monkeypatch.setenv("NUCLEUS_API_KEY", "wrong_key_0000")
    wrong = run_cli(*pull_args())
    assert wrong.exit_code == 1
    assert wrong.stderr.startswith("Error: invalid Nucleus API key (HTTP 401")
    assert "wrong_key_0000" not in wrong.stdout + wrong.stderr

    monkeypatch.delenv("NUCLEUS_API_KEY")
    unset = run_cli(*pull_args())
    assert unset.exit_code == 1 and "NUCLEUS_API_KEY is not set" in unset.stderr


def test_whole_dataset_pull_keeps_the_source_contract(nucleus):
    nucleus.add_items("ds_1", 5, prefix="not_in_slice")
    checked = check_source(NucleusSource(), dataset_id="ds_1")
    assert len(checked.items) == 25
    assert checked.result.notes == ["Nucleus dataset 'horses' (ds_1)"]


def test_push_uploads_predictions_for_the_slice_items_only(nucleus):
    nucleus.add_slice("slc_val", "ds_1", ["img_000001", "img_000004"])
    target = NucleusTarget()
    wanted = target.item_filter(slice_id="slc_val")
    items = [Item(f"img_{i:06d}", ImageRef("x.png"), [Box("horse", 1, 1, 4, 4, confidence=0.9)]) for i in range(6)]

    summary = target.push((i for i in items if wanted(i)), {"name": "horses-1", "categories": ["horse"]},
                          dataset_id="ds_1", model_name="horse-frcnn")

    assert summary["predictions_processed"] == 2 and summary["predictions_ignored"] == 0
    (model,) = nucleus.models.values()
    assert model["name"] == "horse-frcnn" and model["metadata"]["categories"] == ["horse"]
    assert [a["reference_id"] for a in nucleus.uploads[0]["annotations"]] == ["img_000001", "img_000004"]


def test_push_cli_predicts_the_slice_and_uploads_as_a_model(nucleus, run_cli, store, tmp_path):
    """An untrained tiny detector stands in for a trained one: this checks the plumbing, not accuracy."""
    import torch

    from tlsync.trainer import build_model, load_model, predict_items, save_checkpoint

    assert run_cli(*pull_args()).exit_code == 0
    version = store.open("horses")
    model_name, size = "fasterrcnn_mobilenet_v3_large_320_fpn", 64
    config = {"model": model_name, "img_size": size, "dataset": version.ref, "epochs": 1}
    torch.manual_seed(0)
    run = tmp_path / "runs" / "horses-1"
    save_checkpoint(run / "weights" / "best.pt", build_model(model_name, len(version.categories), "none", size),
                    version.categories, config)
    nucleus.add_slice("slc_val", "ds_1", ["img_000002", "img_000005", "img_000011"])

    result = run_cli("push", "--target", "nucleus", "--run", run, "--dataset-id", "ds_1", "--model-name",
                     "horse-frcnn", "--slice", "slc_val", "--conf", "0", "--device", "cpu")

    assert result.exit_code == 0, result.stderr
    summary = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    (model_id, model), = nucleus.models.items()
    uploaded = [a for body in nucleus.uploads for a in body["annotations"]]
    assert summary["model_id"] == model_id and summary["items"] == "3"
    assert int(summary["boxes"]) == len(uploaded) == int(summary["predictions_processed"])
    assert {a["reference_id"] for a in uploaded} <= {"img_000002", "img_000005", "img_000011"}
    assert all(0 <= a["confidence"] <= 1 and a["label"] in version.categories for a in uploaded)
    # what was uploaded is what the model predicts for the slice's items, box for box (not just "some boxes")
    model_, categories, _ = load_model(run)
    wanted = [i for i in version.items() if i.id in {"img_000002", "img_000005", "img_000011"}]
    expected = {p.id: len(p.annotations) for p in predict_items(model_, wanted, version.image_path, categories)}
    assert sum(expected.values()) > 0, "the untrained model predicted nothing at --conf 0: the upload is untested"
    assert {ref: sum(a["reference_id"] == ref for a in uploaded) for ref in expected} == expected
    assert model["metadata"]["tlsync_run"] == "horses-1"
    assert model["metadata"]["categories"] == version.categories
    assert model["metadata"]["config"]["dataset"] == "horses@1"
