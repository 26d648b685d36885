"""The contract kit's path checks: a local source reads nothing from outside its export.

See ``tlsync.paths`` for the rule and ``tlsync.testing`` for the rest of the kit.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import TlsyncError
from ..pull import pull
from ..sources import Source
from ..store import Store
from .shared import ContractError, resolve_options, write_image


def check_reads_inside(read: list[tuple[str, str]], values: dict[str, Any], store: Store, who: str) -> None:
    """Every local image fetched lies (symlinks resolved) inside a folder the options name, or the store."""
    if values.get("allow_outside_root") or not read:
        return
    roots = [os.path.realpath(store.home)]
    for value in values.values():
        if isinstance(value, (str, Path)) and value and "\x00" not in str(value) and os.path.exists(value):
            roots.append(os.path.realpath(value if os.path.isdir(value) else os.path.dirname(os.path.abspath(value))))
    for item_id, path in read:
        real = os.path.realpath(path)
        if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots):
            raise ContractError(f"{who}: item '{item_id}': read image {path} (really {real}), which lies outside "
                                f"every folder its options name; check paths with tlsync.paths.ExportRoot")


def check_path_escapes(source: Source, write_export: Callable[[Path, str], dict[str, Any]], *,
                       images: str = "", **options: Any) -> None:
    """Fail ``source`` unless it refuses images that resolve outside its export.

    ``write_export(folder, name)`` writes into ``folder`` a valid export of one image whose
    file name is ``name`` (relative to ``folder / images``, or absolute), and returns the
    options that pull it (merged over ``options``). Four pulls: ``ok.png`` (must work), a
    symlink in the image folder leading out, ``../../outside/secret.png``, and the secret's
    absolute path. Each escape must end the pull with a ``TlsyncError`` or drop the item,
    and the outside image's bytes must never be copied into the store.
    """
    who = f"source '{getattr(source, 'name', '?')}'"
    work = Path(tempfile.mkdtemp(prefix="tlsync-escape-"))
    try:
        secret = write_image(work / "outside" / "secret.png", seed=99)
        digest = hashlib.sha256(secret.read_bytes()).hexdigest()
        cases = [("ok.png", "a plain file name"), ("link.png", "a symlink leading out of the export"),
                 ("../../outside/secret.png", "a '..' path"), (str(secret), "an absolute path")]
        for n, (name, what) in enumerate(cases):
            folder = work / f"export-{n}"
            image_dir = folder / images
            write_image(image_dir / "ok.png", seed=n)
            if name == "link.png":
                (image_dir / "link.png").symlink_to(secret)
            values = resolve_options(source, {**options, **write_export(folder, name)})
            store = Store(work / f"store-{n}")
            try:
                result = pull(store, source, values, "escape")
            except TlsyncError as e:
                if n == 0:
                    raise ContractError(f"{who}: the plain export of check_path_escapes failed: {e}") from None
                continue
            if n == 0:
                continue
            leaked = any(p.name.startswith(digest) for p in store.images_dir.rglob("*"))
            if leaked or result.items:
                raise ContractError(f"{who}: an image named by {what} ({name}) was pulled from outside the export; "
                                    f"resolve every path a source reads with tlsync.paths.ExportRoot.check")
    finally:
        shutil.rmtree(work, ignore_errors=True)
