"""The example plugin distributions, installed as a user installs them, work through the CLI.

CI installs them non-editably from plugins/ (see .ci/run); their own tests live beside them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from tlsync import plugins
from tlsync.testing import write_image

EXAMPLES = {"labelstudio": "tlsync-labelstudio", "cvat": "tlsync-cvat"}  # entry point -> distribution


def installed(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


@pytest.fixture
def load_examples(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Load exactly the example plugins (by entry-point and by distribution name), as installed."""
    missing = [dist for dist in EXAMPLES.values() if not installed(dist)]
    if missing:
        pytest.skip("example plugins not installed: " + " ".join(f"pip install ./plugins/{d}" for d in missing))
    monkeypatch.setenv("TLSYNC_LOAD_PLUGINS", "labelstudio,tlsync-cvat")
    plugins.reset()
    yield
    plugins.reset()


def test_both_examples_are_listed_with_versions_and_hooks(load_examples, run_cli):
    listed = run_cli("plugins").stdout
    sources = run_cli("sources").stdout
    for entry, dist in EXAMPLES.items():
        assert f"{entry} ({installed(dist)}): tlsync_register_sources" in listed
        assert f"(plugin {entry} {installed(dist)})" in sources
    assert "BROKEN" not in listed + sources


def test_cli_pull_through_cvat(load_examples, run_cli, store, tmp_path: Path):
    write_image(tmp_path / "images" / "frame_000.png", 100, 80, seed=1)
    (tmp_path / "annotations.xml").write_text(
        '<annotations><version>1.1</version><meta><task><labels><label><name>gear</name></label></labels>'
        '</task></meta><image id="0" name="frame_000.png" width="100" height="80" subset="Train">'
        '<box label="gear" occluded="0" xtl="10" ytl="20" xbr="50.5" ybr="60"/></image></annotations>')
    result = run_cli("pull", "--source", "cvat", "--path", tmp_path / "annotations.xml", "--dataset", "gears")
    assert result.exit_code == 0, result.stderr
    (item,) = store.open("gears").items()
    assert (item.split, [b.to_dict() for b in item.annotations]) == (
        "train", [{"label": "gear", "x": 10.0, "y": 20.0, "width": 40.5, "height": 40.0}])


def test_cli_pull_through_labelstudio(load_examples, run_cli, store, tmp_path: Path):
    write_image(tmp_path / "media" / "upload" / "1" / "cell.png", 200, 100, seed=2)
    result_box = {"id": "r", "type": "rectanglelabels", "original_width": 200, "original_height": 100,
                  "value": {"x": 10, "y": 20, "width": 25, "height": 50, "rectanglelabels": ["RBC"]}}
    (tmp_path / "export.json").write_text(json.dumps([{"id": 4, "data": {"image": "/data/upload/1/cell.png"},
                                                       "annotations": [{"id": 9, "result": [result_box]}]}]))
    result = run_cli("pull", "--source", "labelstudio", "--path", tmp_path / "export.json",
                     "--images", tmp_path / "media", "--dataset", "cells")
    assert result.exit_code == 0, result.stderr
    (item,) = store.open("cells").items()
    assert (item.id, [b.to_dict() for b in item.annotations]) == (
        "4", [{"label": "RBC", "x": 20.0, "y": 20.0, "width": 50.0, "height": 50.0, "id": "r"}])


def test_the_allow_list_leaves_out_an_installed_example(load_examples, run_cli, monkeypatch):
    monkeypatch.setenv("TLSYNC_LOAD_PLUGINS", "cvat")
    plugins.reset()
    result = run_cli("pull", "--source", "labelstudio", "--dataset", "cells")
    assert result.exit_code == 1 and "unknown source 'labelstudio'" in result.stderr
    assert "cvat" in run_cli("sources").stdout
