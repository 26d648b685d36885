"""The dataset store: deterministic splits, versions, atomicity, locking, the datasets CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tlsync
from tlsync.errors import TlsyncError
from tlsync.format import Box, ImageRef, Item
from tlsync.plugins import get_source
from tlsync.pull import pull
from tlsync.sources import PullContext, Source
from tlsync.splits import assign_split, parse_ratios
from tlsync.store import Store


def test_adding_items_never_moves_an_existing_item(store):
    synthetic = get_source("synthetic")
    pull(store, synthetic, {"items": 30, "size": 64}, "s")
    pull(store, synthetic, {"items": 60, "size": 64}, "s")
    before = {i.id: i.split for i in store.open("s@1").items()}
    after = {i.id: i.split for i in store.open("s@2").items()}
    assert all(after[k] == v for k, v in before.items())
    assert set(after.values()) == {"train", "val", "test"}


def test_the_synthetic_source_draws_the_same_images_every_time(tmp_path: Path):
    # Its noise once came from C's rand(), which any earlier draw in the process moved: the same
    # dataset pulled into a second home in one process had other pixels (and other sha256s).
    from PIL import Image

    def pulled(home: Path) -> dict[str, str]:
        other = Store(home)
        pull(other, get_source("synthetic"), {"items": 4, "size": 48}, "same")
        return {i.id: i.image.sha256 for i in other.open("same@1").items()}

    first = pulled(tmp_path / "a")
    Image.effect_noise((8, 8), 30)  # anything else drawing noise in between
    assert pulled(tmp_path / "b") == first


def test_split_ratios_are_honoured_and_validated(store):
    result = pull(store, get_source("synthetic"), {"items": 40, "size": 64}, "s", split_ratios=(1.0, 0.0, 0.0))
    assert store.open(result.ref).info["counts"]["splits"].keys() == {"train"}
    splits = [assign_split(f"id-{n}") for n in range(2000)]
    assert 0.75 < splits.count("train") / 2000 < 0.85
    with pytest.raises(TlsyncError, match="sum"):
        parse_ratios("0.5,0.5,0.5")


class _Copies(Source):
    """Two augmented copies of each photo, sharing a group, plus a crash switch."""

    name = "copies"

    def __init__(self, image: Path, crash_after: int | None = None, photos: list[Path] | None = None):
        self.image, self.crash_after, self.photos = image, crash_after, photos

    def items(self, ctx: PullContext, **_: Any) -> Iterator[Item]:
        for n in range(40):
            if self.crash_after is not None and n == self.crash_after:
                raise KeyboardInterrupt
            for copy in ("a", "b"):
                image = self.photos[n] if self.photos else self.image
                yield Item(f"photo{n}_{copy}.jpg", ImageRef(str(image)), [Box("x", 1, 1, 5, 5)],
                           metadata={"group": f"photo{n}"})


@pytest.fixture
def png(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "p.png"
    Image.new("RGB", (32, 32)).save(path)
    return path


def test_copies_of_one_photo_share_a_split(store, png: Path, tmp_path: Path):
    from PIL import Image

    photos = [tmp_path / f"photo{n}.png" for n in range(40)]  # distinct pictures: identical ones share a split anyway
    for n, path in enumerate(photos):
        Image.new("RGB", (32, 32), (n, 0, 0)).save(path)
    pull(store, _Copies(png, photos=photos), {}, "c")
    by_group: dict[str, set[str]] = {}
    for item in store.open("c").items():
        by_group.setdefault(item.group, set()).add(item.split)
    assert all(len(splits) == 1 for splits in by_group.values())
    assert len({s for splits in by_group.values() for s in splits}) > 1


def test_interrupted_pull_leaves_previous_version_intact(store, png: Path):
    pull(store, get_source("synthetic"), {"items": 5, "size": 64}, "d")
    before = [i.to_dict() for i in store.open("d").items()]
    with pytest.raises(KeyboardInterrupt):
        pull(store, _Copies(png, crash_after=10), {}, "d")
    assert store.versions("d") == [1]
    assert [i.to_dict() for i in store.open("d").items()] == before
    assert not list((store.datasets_dir / "d").glob(".staging-*"))


def test_concurrent_pulls_into_one_dataset_do_not_corrupt_it(store):
    synthetic = get_source("synthetic")
    errors: list[BaseException] = []

    def run(n: int) -> None:
        try:
            pull(store, synthetic, {"items": 10 + n, "size": 48}, "race")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.versions("race") == [1, 2, 3]
    assert sorted(store.open(f"race@{v}").info["counts"]["items"] for v in (1, 2, 3)) == [10, 11, 12]


def test_datasets_cli(store, run_cli):
    run_cli("pull", "--source", "synthetic", "--items", "12", "--size", "64", "--dataset", "shapes")
    listing = run_cli("datasets", "list")
    assert listing.exit_code == 0
    row = next(line for line in listing.stdout.splitlines() if line.startswith("shapes"))
    assert row.split()[:5] == ["shapes", "@1", "12", str(store.open("shapes").info["counts"]["boxes"]), "3"]
    assert "synthetic" in row
    shown = run_cli("datasets", "show", "shapes@1")
    version, lines = store.open("shapes@1"), [line.split() for line in shown.stdout.splitlines()]
    counts = version.info["counts"]
    assert ["content", "hash", version.content_hash] in lines
    assert ["12", "items", "(0", "without", "boxes),", str(counts["boxes"]), "boxes"] in lines
    assert ["train", "12", "items", str(counts["splits"]["train"]["boxes"]), "boxes"] in lines
    assert set(counts["classes"]) == {"circle", "square", "triangle"}
    for name, boxes in counts["classes"].items():  # each class with its own count, not just its name
        assert [name, str(boxes), "boxes"] in lines
    missing = run_cli("datasets", "show", "shapes@7")
    assert missing.exit_code == 1 and "has no version 7" in missing.stderr
    declined = run_cli("datasets", "rm", "shapes", input="n\n")
    assert declined.exit_code == 0, declined.output  # declining is an answer, not an error
    assert "kept shapes: nothing removed" in declined.stdout and "Aborted" not in declined.output
    assert store.versions("shapes") == [1]
    removed = run_cli("datasets", "rm", "shapes", input="y\n")
    assert removed.exit_code == 0 and "removed shapes@1" in removed.stdout and store.versions("shapes") == []


def test_bad_dataset_names_are_refused(run_cli):
    result = run_cli("pull", "--source", "synthetic", "--dataset", "../evil")
    assert result.exit_code == 1 and "dataset name" in result.stderr


def test_sources_lists_builtins_with_options(run_cli):
    result = run_cli("sources")
    assert result.exit_code == 0
    assert "coco:" in result.stdout and "synthetic:" in result.stdout and "--path" in result.stdout
    assert ("synthetic: Generated shapes (circle, square, triangle) on textured backgrounds; no download. "
            f"(built-in tlsync.connectors.synthetic, tlsync {tlsync.__version__})") in result.stdout
    help_text = run_cli("pull", "--source", "coco", "--help")
    assert "--annotations" in help_text.stdout and "--on-error" in help_text.stdout
    unknown = run_cli("pull", "--source", "nope", "--dataset", "x")
    assert unknown.exit_code == 1 and "unknown source 'nope'" in unknown.stderr


def test_commands_that_do_not_train_never_import_torch(tmp_path: Path):
    code = (
        "import sys\n"
        "from tlsync.cli import main\n"
        "for args in (['--help'], ['sources'], ['pull', '--source', 'synthetic', '--items', '3', '--dataset', 'x'],"
        " ['datasets', 'list']):\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as e:\n"
        "        assert not e.code, (args, e.code)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env = {**os.environ, "TLSYNC_HOME": str(tmp_path / "home")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_version_and_help_everywhere(run_cli):
    from tlsync import __version__

    assert __version__ in run_cli("--version").stdout
    for command in ("sources", "pull", "datasets", "export", "quickstart", "plugins"):
        result = run_cli(command, "--help")
        assert result.exit_code == 0 and "Usage:" in result.stdout, command
