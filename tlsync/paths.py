"""Paths an export names must stay inside the export.

An annotation file is untrusted text: a COCO ``file_name`` of ``../../.ssh/id_rsa.jpg``, a
YOLO ``data.yaml`` whose ``train:`` is ``/home/me/private``, or a symlink in the folder that
points elsewhere would otherwise pull the user's own files into a dataset, from where
``tlsync export`` and ``tlsync push`` carry them on. Every local source therefore checks
each image and split folder it reads through one ``ExportRoot``: the path is resolved the
way the OS will open it (symlinks and ``..`` included) and must land inside the root.

A user whose images really live elsewhere opts in per pull with ``--allow-outside-root``
(``ALLOW_OUTSIDE_OPTION``), for folders they gave on the command line only: an archive or
a download never gets that trust.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from .errors import SourceError

ALLOW_OUTSIDE_OPTION = click.Option(
    ["--allow-outside-root"], is_flag=True, default=False,
    help="Read images and split folders the export names outside its own folder (folders only, never archives).")


class PathOutsideExport(SourceError):
    """An export names a path outside its root; the pull stops and writes nothing."""


class ExportRoot:
    """The folder a local export may read from, and the check every path it names goes through.

    Resolving a path costs one ``lstat`` per component; images share a handful of folders,
    so each folder is resolved once and each file costs one ``lstat`` (is it a symlink?).
    """

    def __init__(self, root: Path, allow_outside: bool = False, archive: bool = False):
        if allow_outside and archive:
            raise SourceError("--allow-outside-root applies to export folders only; an archive or a download "
                              "may only refer to its own files")
        self.root = Path(root)
        self.allow_outside = allow_outside
        self.archive = archive
        self._real_root = os.path.realpath(self.root)
        self._prefix = self._real_root.rstrip(os.sep) + os.sep
        self._folders: dict[str, str] = {}

    def real(self, path: Path | str) -> str:
        """Where ``path`` really is: symlinks and ``..`` resolved as ``open`` would."""
        # Not abspath: it drops "link/.." lexically, where the OS follows the link first.
        text = os.fspath(path) if os.path.isabs(path) else os.path.join(os.getcwd(), path)
        folder, name = os.path.split(text)
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._folders[folder] = os.path.realpath(folder)
        target = os.path.join(real_folder, name)
        if name in ("", ".", "..") or os.path.islink(target):
            target = os.path.realpath(target)
        return target

    def contains(self, path: Path | str) -> bool:
        return self._inside(self.real(path))

    def _inside(self, real: str) -> bool:
        return real == self._real_root or real.startswith(self._prefix)

    def check(self, path: Path | str, where: str) -> Path:
        """``path`` itself when it resolves inside the root; else a one-line refusal.

        ``where`` names what referred to it (the annotation file and field, the yaml key).
        """
        text = os.fspath(path)
        if "\x00" in text:
            raise SourceError(f"{where}: the path holds a NUL byte; refused")
        if self.allow_outside:
            return Path(path)
        real = self.real(text)
        if self._inside(real):
            return path if isinstance(path, Path) else Path(path)
        shown = f"{path} (-> {real})" if os.path.normpath(os.path.abspath(path)) != real else str(path)
        hint = ("an archive or download may only refer to its own files" if self.archive
                else "pass --allow-outside-root if you keep the images elsewhere on purpose")
        raise PathOutsideExport(f"{where}: {shown} lies outside the export folder {self.root}; refused, "
                                f"nothing was written ({hint})")

