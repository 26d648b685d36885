"""The ``images`` source: a folder of plain, unlabelled images (``tlsync select --pool-path``).

A pool of photos nobody has labelled yet is still a dataset: reading it through the pull
machinery gives it the same content-addressed store, sha256 per image, readability
checks, progress and ``--on-error`` handling as any labelled export, so ``select`` can
exclude what is already labelled by comparing image hashes. Items carry no boxes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from tlsync.errors import SourceError
from tlsync.format import ImageRef, Item
from tlsync.hookspecs import hookimpl
from tlsync.paths import ALLOW_OUTSIDE_OPTION, ExportRoot
from tlsync.sources import PullContext, Source, files_fingerprint
from tlsync.store import EXTENSIONS

SUFFIXES = frozenset({".jpeg", *EXTENSIONS.values(), ".tiff"})


def image_files(root: Path) -> Iterator[Path]:
    """Image files under ``root`` (recursively, hidden files and folders left out), sorted by path.

    Symlinks to folders are not followed, so a link can neither loop nor lead the walk
    outside the folder the user named.
    """
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / name for name in files
                  if not name.startswith(".") and Path(name).suffix.lower() in SUFFIXES]
    yield from sorted(found, key=lambda p: p.relative_to(root).as_posix())


class ImagesSource(Source):
    name = "images"
    description = "A folder of unlabelled images (searched recursively); items have no boxes."
    options = [click.Option(["--path"], type=click.Path(exists=True, file_okay=False, path_type=Path),
                            required=True, help="The folder of images."), ALLOW_OUTSIDE_OPTION]

    def items(self, ctx: PullContext, path: Path | None = None, allow_outside_root: bool = False,
              **_: Any) -> Iterator[Item]:
        if path is None:
            raise SourceError("images: give --path FOLDER")
        ctx.set_categories([])
        root = ExportRoot(path, allow_outside_root)  # a symlinked file must not pull in what lies elsewhere
        found = 0
        for file in image_files(path):
            root.check(file, f"{path}: image {file.relative_to(path).as_posix()}")
            found += 1
            # The path inside the folder is the id: stable across pulls, unique, and what a user recognises.
            if (item := ctx.item(file.relative_to(path).as_posix(), ImageRef(str(file)), where=str(path))) is not None:
                yield item
        if not found:
            raise SourceError(f"{path}: no images in this folder ({', '.join(sorted(SUFFIXES))})")

    def fingerprint(self, ctx: PullContext, path: Path | None = None, **_: Any) -> str | None:
        return files_fingerprint(path) if path is not None else None


@hookimpl
def tlsync_register_sources(register: Callable[[Source], None]) -> None:
    register(ImagesSource())
