"""What the kit's checks share: the error they raise, options parsed as the CLI parses them, test images.

Apart from the package's ``__init__`` so that each check module (``escapes``) can use them
without importing the package that imports it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..sources import Source


class ContractError(AssertionError):
    """A source or plugin broke the contract; the message names it and the item at fault."""


def resolve_options(source: Source, given: dict[str, Any]) -> dict[str, Any]:
    """Every option of the source as ``tlsync pull`` would pass it to ``items``.

    The given values are turned back into command-line arguments and parsed by click, so
    conversion, defaults, environment variables and required options behave as in the CLI.
    """
    known = {opt.name: opt for opt in source.options}
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise TypeError(f"source '{source.name}' has no option {', '.join(map(repr, unknown))}; "
                        f"its options: {', '.join(sorted(filter(None, known))) or 'none'}")
    args = [arg for name, value in given.items() if value is not None for arg in _as_args(known[name], value)]
    command = click.Command("pull", params=list(source.options))
    return dict(command.make_context("pull", args).params)


def _as_args(opt: click.Option, value: Any) -> list[str]:
    if opt.is_flag:
        if not value:
            return [opt.secondary_opts[0]] if opt.secondary_opts else []
        return [opt.opts[0]]
    values = value if opt.multiple else [value]
    return [arg for v in values for arg in (opt.opts[0], str(v))]


def write_image(path: str | Path, width: int = 64, height: int = 48, seed: int = 0) -> Path:
    """A small image with distinct pixels per ``seed`` (format from the suffix), for test data."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = ((seed * 67) % 256, (seed * 131 + 40) % 256, (seed * 197 + 90) % 256)
    image = Image.new("RGB", (width, height), colour)
    image.putpixel((seed % width, (seed // width) % height), (255, 255, 255))
    image.save(path)
    return path
