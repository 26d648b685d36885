"""The ``synthetic`` source: a small, seeded detection dataset drawn on the fly.

It needs no download and no labelling, so the quickstart, demos and fast tests run on
a fresh offline machine. Each class has its own shape and hue family on a noisy,
graded background: easy enough for a small detector to learn within a minute on a CPU,
varied enough that it has to learn something.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import click

from tlsync.format import Box, ImageRef, Item
from tlsync.hookspecs import hookimpl
from tlsync.sources import PullContext, Source

CLASSES = ("circle", "square", "triangle")
HUES = {"circle": (220, 60, 50), "square": (50, 190, 70), "triangle": (60, 90, 230)}


def scene(seed: int, index: int, size: int) -> list[tuple[str, int, int, int, int]]:
    """The objects of image ``index``: ``(class, x, y, w, h)``, non-overlapping."""
    rng = random.Random(seed * 1_000_003 + index)
    placed: list[tuple[str, int, int, int, int]] = []
    for _ in range(rng.randint(1, 3)):
        for _attempt in range(20):
            side = rng.randint(size // 6, size // 3)
            x, y = rng.randint(0, size - side), rng.randint(0, size - side)
            if all(x + side <= px or px + pw <= x or y + side <= py or py + ph <= y for _, px, py, pw, ph in placed):
                placed.append((rng.choice(CLASSES), x, y, side, side))
                break
    return placed


def render(seed: int, index: int, size: int) -> bytes:
    """PNG bytes of image ``index`` (deterministic, so re-pulls are 'unchanged')."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(seed * 7_919 + index)
    noise = _noise(seed * 7_919 + index, size, rng.uniform(20, 50)).filter(ImageFilter.GaussianBlur(1))
    base = tuple(rng.randint(90, 170) for _ in range(3))
    image = Image.merge("RGB", [noise.point(lambda v, b=b: (v + b) // 2) for b in base])
    draw = ImageDraw.Draw(image)
    for cls, x, y, w, h in scene(seed, index, size):
        colour = tuple(max(0, min(255, c + rng.randint(-30, 30))) for c in HUES[cls])
        box = (x, y, x + w - 1, y + h - 1)
        if cls == "circle":
            draw.ellipse(box, fill=colour)
        elif cls == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(x + w / 2, y), (x, y + h - 1), (x + w - 1, y + h - 1)], fill=colour)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _noise(seed: int, size: int, sigma: float) -> Any:
    """Grey Gaussian noise around 128, from its own seed.

    Not PIL's ``Image.effect_noise``: that draws from C's ``rand()``, whose state any earlier
    call in the process moves, so the same image came out different the second time.
    """
    import numpy as np
    from PIL import Image

    values = np.random.default_rng(seed).normal(128.0, sigma, (size, size))
    return Image.fromarray(values.clip(0, 255).astype(np.uint8))  # 2-D uint8: mode "L"


class SyntheticSource(Source):
    name = "synthetic"
    description = "Generated shapes (circle, square, triangle) on textured backgrounds; no download."
    options = [
        click.Option(["--items"], type=click.IntRange(1, 100_000), default=64, show_default=True,
                     help="How many images."),
        click.Option(["--size"], type=click.IntRange(32, 2048), default=160, show_default=True,
                     help="Image side in pixels."),
        click.Option(["--seed"], type=int, default=0, show_default=True, help="Random seed (same seed, same data)."),
    ]

    def items(self, ctx: PullContext, items: int = 64, size: int = 160, seed: int = 0, **_: Any) -> Iterator[Item]:
        ctx.set_categories(list(CLASSES))
        for index in range(items):
            boxes = [Box(cls, x, y, w, h) for cls, x, y, w, h in scene(seed, index, size)]
            yield Item(f"synthetic-{seed}-{index:06d}", ImageRef(f"synthetic://{seed}/{index}?size={size}"), boxes)

    def fetch(self, item: Item, out: BinaryIO) -> None:
        seed, rest = item.image.uri[len("synthetic://"):].split("/", 1)
        index, _, size = rest.partition("?size=")
        out.write(render(int(seed), int(index), int(size)))


@hookimpl
def tlsync_register_sources(register: Callable[[Source], None]) -> None:
    register(SyntheticSource())
