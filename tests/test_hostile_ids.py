"""What a pull accepts, every later command handles: hostile ids pulled, exported, re-pulled, evaluated, predicted.

Ids are normalised where an item is built (integers become strings, control characters are
refused as that item's bad field), and every id that becomes a file name goes through
``tlsync.names.safe_file_name`` (bounded, never a path, unique even on case-insensitive
disks, the mapping recorded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fake_nucleus import FakeItem, FakeNucleus

from tlsync.store import Store

KEY = "nucleus_live_ids_0123456789"
LONG = "r" * 300
HOSTILE_REFS = [LONG, "x" * 1000, "a/b/../../c.png", "../../etc/passwd", "a_b", "a/b", "Photo.PNG", "photo.png",
                "annotations.json", "CON", "nul.txt", ".hidden", "-rf", " spaced name ", "日本語の写真.jpg",
                "e\u0301.png", "\u200bzero-width", "100%.png", "a\\b.jpg", "..", "."]
REFUSED = ["esc\x1b[31mred", "new\nline", "rtl\u202egpj.exe"]


@pytest.fixture
def nucleus(monkeypatch: pytest.MonkeyPatch):
    with FakeNucleus(api_key=KEY) as fake:
        fake.add_dataset("ds_1", "ids")
        fake.add_slice("slc_1", "ds_1", [], name="ids")
        monkeypatch.setenv("NUCLEUS_API_KEY", KEY)
        monkeypatch.setenv("NUCLEUS_ENDPOINT", fake.endpoint)
        yield fake


def add(fake: FakeNucleus, ref: str, row_ref: Any = None, annotation_id: Any = None) -> None:
    """An item whose row says ``row_ref`` (default: ``ref``); its image is served under a plain name."""
    pictures = fake.datasets.setdefault("ds_img", type(fake.datasets["ds_1"])("pictures")).items
    plain = fake.add_items("ds_img", 1, prefix=f"pic{len(pictures)}")[0]
    url = fake.row("ds_img", pictures[plain], 1)["item"]["processed_url"]
    extra: dict[str, Any] = {"item": {"reference_id": ref if row_ref is None else row_ref, "processed_url": url}}
    if annotation_id is not None:
        extra["box"] = [{"label": "dog", "geometry": {"x": 2, "y": 2, "width": 10, "height": 10},
                         "annotation_id": annotation_id}]
    fake.add_item("ds_1", FakeItem(ref, [("dog", 2, 2, 10, 10), ("cat", 20, 10, 15, 20)], extra), slice_id="slc_1")


def test_hostile_ids_pull_export_repull_eval_and_predict(nucleus: FakeNucleus, run_cli: Any, store: Store,
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for n, ref in enumerate(HOSTILE_REFS):
        add(nucleus, ref, annotation_id=[7, 123456789012, "ann-x", 0][n % 4])
    add(nucleus, "int-ref", row_ref=424242)
    for ref in REFUSED:
        add(nucleus, ref)

    failed = run_cli("pull", "--source", "nucleus", "--slice", "slc_1", "--dataset", "ids")
    assert failed.exit_code != 0 and "control character" in failed.stderr
    pulled = run_cli("pull", "--source", "nucleus", "--slice", "slc_1", "--dataset", "ids", "--on-error", "skip",
                     "--split-ratios", "0.5,0.5,0")
    assert pulled.exit_code == 0, pulled.stderr
    ids = {item.id for item in store.open("ids").items()}
    assert ids == {*HOSTILE_REFS, "424242"}, pulled.stdout + pulled.stderr
    assert "control character" in pulled.stdout + pulled.stderr

    out = tmp_path / "export"
    exported = run_cli("export", "--dataset", "ids", "--out", str(out))
    assert exported.exit_code == 0, exported.stderr
    coco = json.loads((out / "annotations.json").read_text())
    names = [image["file_name"] for image in coco["images"]]
    assert len({name.lower() for name in names}) == len(names) == len(ids) == len(list(out.iterdir())) - 1
    for name in names:
        assert "/" not in name and "\\" not in name and len(name.encode()) <= 255 and name not in (".", "..")
        assert not name.startswith((".", "-", " ")) and (out / name).is_file()
    assert {image.get("tlsync_id", image["file_name"]) for image in coco["images"]} == ids
    assert all(isinstance(a["id"], int) for a in coco["annotations"])

    again = run_cli("pull", "--source", "coco", "--path", str(out), "--dataset", "round-trip")
    assert again.exit_code == 0, again.stderr
    assert {item.id for item in store.open("round-trip").items()} == ids

    from test_eval_cli import make_run

    monkeypatch.chdir(tmp_path)
    run = make_run(Path("runs/tiny"), store.open("ids"))
    evaluated = run_cli("eval", "--run", str(run), "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.stderr
    long_file = tmp_path / "photos" / f"{'p' * 250}.png"
    long_file.parent.mkdir()
    long_file.write_bytes((out / names[0]).read_bytes())
    predicted = run_cli("predict", "--run", str(run), str(out), str(long_file), "--out", str(tmp_path / "preds"),
                        "--device", "cpu", "--conf", "0.9")
    assert predicted.exit_code == 0, predicted.stderr
    drawn = json.loads((tmp_path / "preds" / "images.json").read_text())["images"]
    assert len(drawn) == len(ids) + 1 and all(len(d["drawn"].encode()) <= 255 for d in drawn)
    assert all((tmp_path / "preds" / d["drawn"]).is_file() for d in drawn)
