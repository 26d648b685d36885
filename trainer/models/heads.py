"""Head swapping: fit a built detector to a class count, and move class rows between class lists.

``replace_head`` swaps only the layers whose shape depends on the number of classes, so
every other pretrained weight is kept, and lists them in ``model.tlsync_class_layers`` with
their row layout; ``remap_rows`` (used by ``checkpoint.transfer_weights``) reads that layout
to carry a shared class's rows into a model built for another class list.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from tlsync.errors import TlsyncError


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the class-count-dependent layers for fresh ones with ``num_classes`` + background."""

    classes = num_classes + 1  # torchvision counts the background as class 0
    if isinstance(model, detection.FasterRCNN):
        old = model.roi_heads.box_predictor
        model.roi_heads.box_predictor = FastRCNNPredictor(old.cls_score.in_features, classes)
        layers = {"roi_heads.box_predictor.cls_score": (1, 1), "roi_heads.box_predictor.bbox_pred": (1, 4)}
    elif isinstance(model, (detection.RetinaNet, detection.FCOS)):
        head = model.head.classification_head
        anchors = head.cls_logits.out_channels // head.num_classes
        head.cls_logits = _fresh_conv(head.cls_logits, anchors * classes, "prior")
        head.num_classes = classes
        layers = {"head.classification_head.cls_logits": (anchors, 1)}
    elif isinstance(model, SSD):
        head = model.head.classification_head
        layers = {}
        for i, block in enumerate(head.module_list):
            conv_name, conv = _last_conv(block)
            anchors = conv.out_channels // head.num_columns
            init = "normal" if isinstance(model.head, SSDLiteHead) else "xavier"
            new = _fresh_conv(conv, anchors * classes, init)
            prefix = f"head.classification_head.module_list.{i}"
            if conv_name:
                _set_submodule(block, conv_name, new)
                prefix += f".{conv_name}"
            else:
                head.module_list[i] = new
            layers[prefix] = (anchors, 1)
        head.num_columns = classes
    else:
        raise TlsyncError(f"cannot replace the head of a {type(model).__name__}")
    model.tlsync_class_layers = layers


def _last_conv(block: nn.Module) -> tuple[str, nn.Conv2d]:
    convs = [(name, m) for name, m in block.named_modules() if isinstance(m, nn.Conv2d)]
    return convs[-1]


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _fresh_conv(conv: nn.Module, out_channels: int, init: str) -> nn.Conv2d:
    """A conv like ``conv`` with a new output width, initialised as torchvision does for that head."""
    if not isinstance(conv, nn.Conv2d):
        raise TlsyncError(f"cannot replace a {type(conv).__name__} class layer (expected a Conv2d)")
    kernel, stride = cast(tuple[int, int], conv.kernel_size), cast(tuple[int, int], conv.stride)
    padding = conv.padding if isinstance(conv.padding, str) else cast(tuple[int, int], conv.padding)
    new = nn.Conv2d(conv.in_channels, out_channels, kernel, stride, padding,
                    groups=conv.groups, bias=conv.bias is not None)
    if init == "prior":  # RetinaNet/FCOS: start every class at probability 0.01
        nn.init.normal_(new.weight, std=0.01)
        bias = -math.log((1 - 0.01) / 0.01)
    elif init == "xavier":
        nn.init.xavier_uniform_(new.weight)
        bias = 0.0
    else:
        nn.init.normal_(new.weight, std=0.03)
        bias = 0.0
    if new.bias is not None:  # torchvision's class convs all have one
        nn.init.constant_(new.bias, bias)
    return new.to(device=conv.weight.device, dtype=conv.weight.dtype)


def set_fixed_size(model: nn.Module, img_size: int) -> None:
    """SSD resizes every image to one square; anchors follow the feature maps at sizes but 300."""
    old, anchors = model.transform, model.anchor_generator
    if not isinstance(old, GeneralizedRCNNTransform) or not isinstance(anchors, DefaultBoxGenerator):
        raise TlsyncError(f"a {type(model).__name__} has no SSD transform and default boxes to resize")
    model.transform = GeneralizedRCNNTransform(img_size, img_size, old.image_mean, old.image_std,
                                               size_divisible=1, fixed_size=(img_size, img_size))
    if anchors.steps is not None and img_size != 300:
        anchors.steps = None


def remap_rows(old: torch.Tensor, fresh: torch.Tensor, rows: list[int | None],
                layout: tuple[int, int]) -> torch.Tensor:
    """Rows are laid out as (outer, class, inner): anchors x classes for conv logits, classes x 4 for boxes."""
    outer, inner = layout
    rest = fresh.shape[1:]
    old_view = old.reshape(outer, -1, inner, *rest)
    new = fresh.detach().clone().reshape(outer, len(rows), inner, *rest)
    for j, i in enumerate(rows):
        if i is not None:
            new[:, j] = old_view[:, i]
    return new.reshape(fresh.shape)
