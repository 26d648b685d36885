"""``tlsync weights``: which pretrained files a model starts from, for offline machines.

tlsync never downloads weights. On a machine with internet, fetch the file from the URL
shown; on one without, copy it into the directory shown (the torch hub cache, which
honours ``$TORCH_HOME``) and ``--weights coco`` or ``imagenet`` finds it there.
"""

from __future__ import annotations

import click

from tlsync.console import echo


@click.group()
def weights() -> None:
    """Where pretrained weights live, for offline machines."""


@weights.command()
@click.argument("model")
def where(model: str) -> None:
    """Print the COCO/ImageNet weight files MODEL can start from, their URLs and where they go."""
    from ..models.weights import weights_where

    files = weights_where(model)
    if not files:
        echo(f"{model}: no pretrained weights known; train it with --weights none")
        return
    for f in files:
        status = "present" if f.present else "MISSING"
        echo(f"{model} --weights {f.what}: {status}\n  file: {f.path}\n  from: {f.url}")


@weights.command(name="list")
def list_models() -> None:
    """List the detectors `tlsync train --model` accepts and which pretrained starts this machine has."""
    from tlsync.plugins import get_models

    for name, spec in sorted(get_models().items()):
        files = spec.where() if spec.where else []
        starts = ", ".join(f"{f.what} {'present' if f.present else 'missing'}" for f in files) or "scratch only"
        echo(f"{name}: {spec.description} [{starts}]")
