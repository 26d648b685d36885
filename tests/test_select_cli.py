"""``tlsync select`` end to end: the session's tiny trained run, pools from a folder
and from the fake Nucleus, and the Nucleus slice target on a real loopback HTTP server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fake_nucleus import API, FakeNucleus

from tlsync.connectors.nucleus import NucleusTarget
from tlsync.format import ImageRef, Item
from tlsync.targets import Selection
from tlsync.testing import run_cli, write_image
from tlsync.testing.server import Request, Response

KEY = "nucleus_live_5e3a1b7c9d"


@pytest.fixture(scope="module")
def home(trained_home: Path) -> Path:
    """A store holding a synthetic dataset (``shapes``) and a 1-epoch run on it: the session's trained parent
    (tlsync.testing.fixtures), copied for this module."""
    return trained_home


@pytest.fixture
def cli(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("TLSYNC_HOME", str(home))
    monkeypatch.chdir(tmp_path)

    def select(*args: str):
        return run_cli("select", "--run", str(home / "runs" / "shapes-1"), "--workers", "0", "--device", "cpu", *args)
    return select


def folder_pool(home: Path, folder: Path) -> Path:
    """Five new images, a copy of a training image, a duplicate, and a file that is no image."""
    for seed in range(5):
        write_image(folder / f"new-{seed}.png", 64, 48, seed=100 + seed)
    trained = next((home / "images").rglob("*.png"))
    shutil.copy(trained, folder / "already-labelled.png")
    shutil.copy(folder / "new-0.png", folder / "new-0-copy.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg at all")
    return folder


def test_select_from_a_folder_writes_a_ranked_selection_and_never_overwrites(cli, home, tmp_path) -> None:
    pool = folder_pool(home, tmp_path / "photos")
    first = cli("--pool-path", str(pool), "--budget", "3", "--strategy", "hybrid")
    assert first.exit_code == 0, first.stderr
    folder = tmp_path / "selections" / "pool-photos-1"
    assert "selected 3 of 5 candidates from pool-photos@1 (hybrid, seed 0)" in first.stdout
    assert first.stdout.strip().endswith("selections/pool-photos-1")
    assert "skipped 1 unreadable files" in first.stderr
    assert "1 already labelled, 1 duplicate images" in first.stderr
    rows = [json.loads(line) for line in (folder / "selection.jsonl").read_text().splitlines()]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert {"item_id", "sha256", "uri", "score", "components", "boxes"} <= set(rows[0])
    picked = {r["item_id"] for r in rows}
    assert not picked & {"already-labelled.png", "broken.jpg"}
    assert not {"new-0.png", "new-0-copy.png"} <= picked  # one image under two names counts once
    meta = json.loads((folder / "selection.json").read_text())
    assert (meta["pool"], meta["strategy"], meta["budget"], meta["candidates"], meta["already_labelled"]) == \
        ("pool-photos@1", "hybrid", 3, 5, 1)
    assert set(meta["predicted_classes"]) == {"selection", "pool"}
    assert (folder / "selection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = cli("--pool-path", str(pool), "--budget", "3", "--strategy", "hybrid")
    assert again.exit_code == 0, again.stderr
    second = tmp_path / "selections" / "pool-photos-2"
    assert (second / "selection.jsonl").read_text() == (folder / "selection.jsonl").read_text()  # deterministic


def test_bad_budgets_and_an_empty_pool_get_one_line_each(cli, home, tmp_path) -> None:
    pool = folder_pool(home, tmp_path / "more")
    zero = cli("--pool-path", str(pool), "--budget", "0")
    assert zero.exit_code == 1 and "--budget 0: nothing to select" in zero.stderr
    big = cli("--pool-path", str(pool), "--budget", "99", "--strategy", "random")
    assert big.exit_code == 0, big.stderr
    assert "--budget 99 is larger than the pool's 5 candidates; selecting all 5" in big.stderr
    empty = cli("--pool", "shapes", "--budget", "2")  # the run's own data: everything is labelled
    assert empty.exit_code == 1
    (error,) = [line for line in empty.stderr.splitlines() if line.startswith("Error:")]
    assert "no candidates left after exclusions" in error
    named = cli("--pool-path", str(pool), "--budget", "1", "--exclude", "pool-more", "--strategy", "random")
    assert named.exit_code == 1 and "no candidates left" in named.stderr


def slice_routes(fake: FakeNucleus, fail_create: bool = False) -> None:
    """create_slice, append and the slice list, as the scale-nucleus client calls them."""
    counter = iter(range(1, 1000))

    @fake.server.route("POST", API + "/dataset/{dataset_id}/create_slice")
    def create(request: Request) -> Response:
        if fail_create:
            return Response.json({"error": "reference ids must be strings"}, 400)
        body = request.json()
        slice_id = f"slc_new{next(counter)}"
        fake.add_slice(slice_id, request.params["dataset_id"], body["reference_ids"], name=body["name"])
        return Response.json({"slice_id": slice_id})

    @fake.server.route("POST", API + "/slice/{slice_id}/append")
    def append(request: Request) -> Response:
        fake.slices[request.params["slice_id"]].ref_ids.extend(request.json()["reference_ids"])
        return Response.json({"slice_id": request.params["slice_id"]})

    @fake.server.route("GET", API + "/dataset/{dataset_id}/slices")
    def slices(request: Request) -> Response:
        return Response.json([sid for sid, s in fake.slices.items() if s.dataset_id == request.params["dataset_id"]])


@pytest.fixture
def nucleus(monkeypatch: pytest.MonkeyPatch):
    with FakeNucleus(api_key=KEY) as fake:
        fake.add_dataset("ds_1", "horses")
        monkeypatch.setenv("NUCLEUS_API_KEY", KEY)
        monkeypatch.setenv("NUCLEUS_ENDPOINT", fake.endpoint)
        yield fake


def test_a_selection_from_nucleus_becomes_a_slice_and_a_rerun_adds_nothing(cli, nucleus) -> None:
    nucleus.add_items("ds_1", 8)
    slice_routes(nucleus)
    pulled = run_cli("pull", "--source", "nucleus", "--dataset-id", "ds_1", "--dataset", "horses-all")
    assert pulled.exit_code == 0, pulled.stderr
    args = ("--pool", "horses-all", "--budget", "3", "--target", "nucleus", "--dataset-id", "ds_1",
            "--slice-name", "to-label-2", "--with-predictions")
    first = cli(*args)
    assert first.exit_code == 0, first.stderr
    summary_line, target_line = first.stdout.strip().splitlines()
    folder = Path(summary_line.rsplit(": ", 1)[1])
    selected = [json.loads(line)["item_id"] for line in (folder / "selection.jsonl").read_text().splitlines()]
    (slice_id,) = [sid for sid, s in nucleus.slices.items() if s.name == "to-label-2"]
    assert nucleus.slices[slice_id].ref_ids == selected
    assert target_line.startswith(f"nucleus: slice_id {slice_id}") and "sent 3" in target_line
    assert {a["reference_id"] for body in nucleus.uploads for a in body["annotations"]} <= set(selected)
    assert KEY not in first.stdout + first.stderr

    again = cli(*args)
    assert again.exit_code == 0, again.stderr
    assert "sent 0" in again.stdout and "already_there 3" in again.stdout
    assert nucleus.slices[slice_id].ref_ids == selected
    assert len(nucleus.server.requests("POST", API + "/dataset/ds_1/create_slice")) == 1


def selection(ids: list[str], tmp_path: Path) -> Selection:
    items = [Item(i, ImageRef(f"https://cdn.example/{i}.png", sha256=f"{n:064x}", width=64, height=48))
             for n, i in enumerate(ids)]
    return Selection("s-1", items, [0.5] * len(items), "horses@1", "random", tmp_path, lambda item: tmp_path)


def test_more_than_10000_ids_are_sent_as_create_then_append(nucleus, tmp_path) -> None:
    ids = nucleus.add_items("ds_1", 10_005)
    slice_routes(nucleus)
    summary = NucleusTarget().send_selection(selection(ids, tmp_path), {"name": "r"}, dataset_id="ds_1",
                                             slice_name="big")
    creates = nucleus.server.requests("POST", API + "/dataset/ds_1/create_slice")
    appends = nucleus.server.requests("POST", API + f"/slice/{summary['slice_id']}/append")
    assert (len(creates), len(appends), summary["requests"]) == (1, 1, 2)
    assert nucleus.slices[summary["slice_id"]].ref_ids == ids


def test_a_400_from_nucleus_is_one_clear_error_without_the_key(nucleus, tmp_path) -> None:
    from tlsync.errors import TlsyncError

    ids = nucleus.add_items("ds_1", 3)
    slice_routes(nucleus, fail_create=True)
    with pytest.raises(TlsyncError) as error:
        NucleusTarget().send_selection(selection(ids, tmp_path), {"name": "r"}, dataset_id="ds_1", slice_name="x")
    message = str(error.value)
    assert "HTTP 400" in message and "create_slice" in message
    assert "sent 0 of the 3 missing items, 3 not sent" in message
    assert KEY not in message
