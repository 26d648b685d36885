"""The store trusts nothing it reads: manifests, dataset.json and image bytes, edited after the pull."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from tlsync.store import Store
from tlsync.testing import write_image


@pytest.fixture
def pulled(tmp_path: Path, run_cli: Any, store: Store) -> Path:
    """Dataset 'shop' (3 images, COCO) and a healthy 'other'; returns the version folder of shop@1."""
    folder = tmp_path / "coco"
    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 48} for i in (1, 2, 3)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 10, 10]} for i in (1, 2, 3)]
    for i in (1, 2, 3):
        write_image(folder / f"{i}.png", seed=i)
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                       "categories": [{"id": 1, "name": "cat"}]}))
    for name in ("shop", "other"):
        result = run_cli("pull", "--source", "coco", "--path", str(folder), "--dataset", name)
        assert result.exit_code == 0, result.stderr
    return store.datasets_dir / "shop" / "1"


def edit_items(version: Path, change: Any) -> None:
    lines = [orjson.loads(line) for line in (version / "items.jsonl").read_bytes().splitlines()]
    change(lines)
    (version / "items.jsonl").write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in lines))


def one_line(result: Any, *needles: str) -> str:
    assert result.exit_code != 0, result.stdout
    text = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in text, text
    return text


def test_a_manifest_path_naming_a_file_outside_the_store_is_never_read(pulled: Path, run_cli: Any,
                                                                       tmp_path: Path) -> None:
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"PRIVATE KEY MATERIAL" * 10)

    def point_outside(lines: list[dict]) -> None:
        lines[0]["image"]["path"] = os.path.relpath(secret, pulled.parents[2])
        lines[1]["image"]["path"] = "../../../../../../../../etc/passwd"

    edit_items(pulled, point_outside)
    result = run_cli("export", "--dataset", "shop", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.stderr
    for file in (tmp_path / "out").iterdir():
        assert b"PRIVATE KEY" not in file.read_bytes() and b"root:" not in file.read_bytes()
    verify = run_cli("datasets", "verify", "shop")
    one_line(verify, "shop@1", "2 problem(s)")
    assert "names image path" in verify.stderr and "etc/passwd" in verify.stderr


def test_an_image_changed_in_the_store_is_refused_naming_both_hashes(pulled: Path, run_cli: Any, store: Store,
                                                                     tmp_path: Path) -> None:
    item = next(store.open("shop").items())
    image = store.home / str(item.image.path)
    image.chmod(0o644)
    write_image(image, seed=99)  # a valid image, other bytes

    text = one_line(run_cli("export", "--dataset", "shop", "--out", str(tmp_path / "out")),
                    f"item '{item.id}'", str(item.image.sha256), "changed")
    assert len([h for h in text.split() if len(h.strip("(),")) == 64]) >= 2, text
    assert not (tmp_path / "out").exists()
    verify = run_cli("datasets", "verify", "shop@1")
    one_line(verify, "1 problem(s)")
    assert "changed after the pull" in verify.stderr


@pytest.mark.parametrize("kind", ["fifo", "symlink", "deleted"])
def test_an_image_swapped_for_a_special_file_or_link(pulled: Path, run_cli: Any, store: Store, tmp_path: Path,
                                                     kind: str) -> None:
    item = next(store.open("shop").items())
    image = store.home / str(item.image.path)
    image.unlink()
    if kind == "fifo":
        os.mkfifo(image)
    elif kind == "symlink":
        outside = write_image(tmp_path / "elsewhere.png", seed=7)
        image.symlink_to(outside)
    one_line(run_cli("export", "--dataset", "shop", "--out", str(tmp_path / "out")), f"item '{item.id}'")
    one_line(run_cli("datasets", "verify", "shop"), "problem(s)")


def test_a_manifest_sha256_that_is_a_path_is_refused(pulled: Path, run_cli: Any, tmp_path: Path) -> None:
    edit_items(pulled, lambda lines: lines[0]["image"].update(sha256="../../../../etc/passwd"))
    one_line(run_cli("export", "--dataset", "shop", "--out", str(tmp_path / "out")), "no valid sha256")


def test_edited_boxes_are_found_by_verify(pulled: Path, run_cli: Any) -> None:
    edit_items(pulled, lambda lines: lines[0]["annotations"][0].update(x=30))
    verify = run_cli("datasets", "verify", "shop")
    one_line(verify, "problem(s)")
    assert "content_hash" in verify.stderr
    ok = run_cli("datasets", "verify", "other")
    assert ok.exit_code == 0 and "other@1: 3 items, 3 images checked: OK" in ok.stdout


@pytest.mark.parametrize("garbage, reason", [
    (os.urandom(64) + b"\xff\xfe", "not"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deep"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"version": 1}', "field 'categories'"),
    (b'{"version": 1, "categories": [1], "counts": {}, "content_hash": "x", "source": {}}', "class names"),
])
def test_an_unreadable_dataset_json_is_listed_as_such_and_the_rest_are_listed(pulled: Path, run_cli: Any,
                                                                             garbage: bytes, reason: str) -> None:
    (pulled / "dataset.json").write_bytes(garbage)
    result = run_cli("datasets", "list")
    assert result.exit_code == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
    assert "UNREADABLE" in rows["shop"] and "coco" in rows["other"]
    assert reason in result.stderr and "dataset.json" in result.stderr
    one_line(run_cli("datasets", "verify", "shop"), "problem(s)")
    one_line(run_cli("export", "--dataset", "shop", "--out", str(pulled.parent / "out")), "dataset.json")


def test_a_last_pull_record_nested_too_deep_does_not_stop_a_pull(pulled: Path, run_cli: Any, tmp_path: Path) -> None:
    (pulled.parent / "last-pull.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    result = run_cli("pull", "--source", "coco", "--path", str(tmp_path / "coco"), "--dataset", "shop")
    assert result.exit_code == 0, result.stderr
    assert "unchanged" in result.stdout


def test_training_refuses_an_image_changed_after_the_pull(store: Store, run_cli: Any, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from tlsync.connectors.synthetic import SyntheticSource
    from tlsync.pull import pull as pull_source

    monkeypatch.chdir(tmp_path)
    pull_source(store, SyntheticSource(), {"items": 6, "size": 64, "seed": 0}, "shapes", split_ratios=(0.5, 0.5, 0.0))
    item = next(i for i in store.open("shapes").items() if i.split == "train")
    image = store.home / str(item.image.path)
    image.chmod(0o644)
    image.write_bytes(image.read_bytes()[:-1] + b"\x00")
    result = run_cli("train", "--dataset", "shapes", "--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--weights",
                     "none", "--img-size", "64", "--epochs", "1", "--workers", "0", "--device", "cpu")
    one_line(result, f"item '{item.id}'", str(item.image.sha256), "changed")
    assert not list(tmp_path.glob("runs/*/weights/*.pt"))
