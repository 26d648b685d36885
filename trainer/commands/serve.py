"""``tlsync serve``: pre-labels from a run, live in Label Studio (an ML backend).

Loaded lazily by ``tlsync.cli`` (it imports torch). Runs until Ctrl-C and then prints one line
of what it served. Label Studio refuses ML backends on loopback and private addresses unless it
runs with ``ML_BLOCK_LOCAL_IP=false``, which is said at start, since that is how most people first
try it (both on one machine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tlsync.console import echo, info
from tlsync.errors import TlsyncError
from tlsync.secrets import get_secret

from ..training.device import resolve_device

PASSWORD = "TLSYNC_SERVE_PASSWORD"


@click.command()
@click.option("--run", "run", default=None, type=click.Path(path_type=Path),
              help="A run directory (uses weights/best.pt) or a checkpoint file.")
@click.option("--model", "model_file", default=None, type=click.Path(path_type=Path),
              help="An exported model file (tlsync export-model), run by onnxruntime or torch.jit.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(0, 65535), default=9090, show_default=True, help="Port (0: any free one).")
@click.option("--conf", type=click.FloatRange(0, 1), default=0.25, show_default=True,
              help="Send boxes at least this confident.")
@click.option("--batch-size", type=click.IntRange(1, 256), default=4, show_default=True,
              help="Images per forward pass, gathered across requests.")
@click.option("--url", envvar="LABEL_STUDIO_URL", default=None,
              help="Label Studio's URL, for task images under /data/ (read with $LABEL_STUDIO_API_KEY).")
@click.option("--images-root", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Allow tasks whose image is a local path, inside this folder only.")
@click.option("--max-image-bytes", default="64MB", show_default=True, help="Refuse a larger image (that task only).")
@click.option("--download-timeout", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              help="Seconds one image download may take, retries included.")
@click.option("--basic-auth-user", default=None,
              help=f"Require HTTP basic auth with this user and the password in ${PASSWORD}.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
def serve(run: Path | None, model_file: Path | None, host: str, port: int, conf: float, batch_size: int,
          url: str | None, images_root: Path | None, max_image_bytes: str, download_timeout: float,
          basic_auth_user: str | None, device: str) -> None:
    """Serve a run's boxes to Label Studio as pre-labels (an ML backend)."""
    from tlsync.archives import parse_size

    from ..serve.batcher import Batcher
    from ..serve.images import ImageFetcher
    from ..serve.server import Backend, make_server, serve_until_stopped

    try:
        from tlsync_labelstudio_target import prediction
    except ImportError:
        raise TlsyncError("tlsync serve speaks to Label Studio through its plugin: "
                          "pip install ./plugins/tlsync-labelstudio") from None
    model, categories, version, dev = _load(run, model_file, device)
    fetcher = ImageFetcher(url, images_root, parse_size(max_image_bytes, "--max-image-bytes"), download_timeout)
    auth = (basic_auth_user, get_secret(PASSWORD)) if basic_auth_user else None
    backend = Backend(Batcher(model, categories, dev, conf, batch_size), fetcher, version, categories, prediction,
                      auth)
    server = make_server(backend, host, port)
    address = f"http://{host}:{server.server_address[1]}"
    info(f"in Label Studio: project Settings > Model > Connect Model, URL {address}"
         f"{' with basic auth' if auth else ''}. Label Studio refuses ML backends on loopback and private "
         f"addresses unless it runs with ML_BLOCK_LOCAL_IP=false (set it where you start label-studio).")
    if not url:
        info("no --url / LABEL_STUDIO_URL: tasks whose image is under Label Studio's /data/ (uploads) will fail")
    echo(f"serving {version} ({len(categories)} classes: {', '.join(categories)}) at {address}")  # last: ready
    done = serve_until_stopped(server, backend)
    echo(f"served {done['tasks']} tasks ({done['errors']} errors) in {done['requests']} requests, "
         f"{done['batches']} model batches, {done['seconds']:.0f}s")


def _load(run: Path | None, model_file: Path | None, device: str) -> tuple[Any, list[str], str, Any]:
    """The model, its classes, its name for ``model_version``, and where it runs."""
    if (run is None) == (model_file is None):
        raise TlsyncError("give --run RUN or --model FILE (an exported model)")
    if model_file is not None:
        from ..deploy.runner import load_exported

        exported = load_exported(model_file)
        # export-model writes RUN/export/model.onnx: name it after the run, as --run would be
        beside_run = model_file.parent.name == "export" and model_file.parent.parent.name
        return exported, exported.categories, beside_run or model_file.stem, "cpu"
    assert run is not None
    if not run.exists():
        raise TlsyncError(f"run '{run}' not found")
    from ..training.checkpoint import load_model

    dev = resolve_device(device)
    model, categories, _config = load_model(run, device=dev)
    return model, categories, (run.name if run.is_dir() else run.parent.parent.name), dev
