"""The contract kit's path rule: it passes the built-in sources and fails one that reads outside its export."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest

from tlsync import plugins
from tlsync.format import Box, ImageRef, Item
from tlsync.sources import Source
from tlsync.testing import ContractError, check_path_escapes, check_source, write_image


def coco_export(folder: Path, name: str) -> dict[str, Any]:
    (folder / "instances.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": name}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 8, 8]}],
        "categories": [{"id": 1, "name": "cat"}]}))
    return {"path": folder}


class Naive(Source):
    """Joins the folder and the name it is given, as a first plugin draft would."""

    name = "naive"
    description = "reads folder/NAME without checking where it leads"
    options = [click.Option(["--folder"], type=click.Path(path_type=Path)), click.Option(["--name"])]

    def items(self, ctx: Any, folder: Path, name: str, **_: Any) -> Iterator[Item]:
        yield Item("one", ImageRef(str(folder / name)), [Box("cat", 1, 1, 8, 8)])


def naive_export(folder: Path, name: str) -> dict[str, Any]:
    return {"folder": folder, "name": name}


def test_the_coco_source_refuses_every_escape_the_kit_plants():
    check_path_escapes(plugins.get_source("coco"), coco_export)


def test_the_kit_fails_a_source_that_follows_names_out_of_its_export():
    with pytest.raises(ContractError, match="an image named by a symlink leading out of the export .* was pulled "
                                            "from outside the export"):
        check_path_escapes(Naive(), naive_export)


def test_check_source_fails_a_source_that_reads_outside_the_folders_its_options_name(tmp_path):
    write_image(tmp_path / "export" / "ok.png")
    secret = write_image(tmp_path / "private" / "secret.png")
    with pytest.raises(ContractError, match=r"item 'one': read image .*secret.png.* which lies outside every folder"):
        check_source(Naive(), folder=tmp_path / "export", name="../private/secret.png")
    check_source(Naive(), folder=tmp_path / "export", name="ok.png")  # the same source, kept inside: passes
    assert secret.exists()
