"""The EfficientNet-Lite0 FPN Faster R-CNN network itself (``lite0`` holds its name and weights)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, cast

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from tlsync.errors import TlsyncError

from .heads import replace_head
from .lite0 import EXTRA, LITE0, weights_file
from .weights import architecture_only_active, load_state_file

# Blocks whose outputs feed the FPN (strides 8, 16, 32) and the channels they carry.
TAPS = {4: 40, 10: 112, 15: 320}
FROZEN_BLOCKS = 3  # blocks 0-2 run at stride <= 4
# The Lite weights were trained in TensorFlow on (pixel - 127) / 128 ("inception style", kept
# for quantisation), not on torchvision's ImageNet mean/std.
IMAGE_MEAN, IMAGE_STD = [127 / 255] * 3, [128 / 255] * 3


class Lite0Features(nn.Module):
    """The EfficientNet-Lite0 stem and blocks, returning the stride 8/16/32 feature maps."""

    def __init__(self, net: nn.Module):
        super().__init__()
        stem, bn0, blocks = net._conv_stem, net._bn0, net._blocks
        if not (isinstance(stem, nn.Module) and isinstance(bn0, nn.Module) and isinstance(blocks, nn.ModuleList)):
            raise TlsyncError(f"{type(net).__name__} is not an EfficientNet (no _conv_stem, _bn0, _blocks)")
        self.stem = nn.Sequential(stem, bn0, nn.ReLU6(inplace=True))
        self.blocks = blocks
        # A plain namedtuple on the EfficientNet, so nn.Module's Tensor | Module typing does not apply.
        self.drop_connect_rate: float = cast(Any, net)._global_params.drop_connect_rate

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.stem(x)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.drop_connect_rate * i / len(self.blocks))
            if i in TAPS:
                out[str(len(out))] = x
        return out


class Lite0FPN(nn.Module):
    """Same shape as torchvision's ``BackboneWithFPN`` (``body``, ``fpn``, ``out_channels``)."""

    def __init__(self, net: nn.Module, out_channels: int = 256):
        super().__init__()
        self.body: Lite0Features = Lite0Features(net)
        self.fpn = FeaturePyramidNetwork(list(TAPS.values()), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(self.body(x))


def efficientnet_lite0() -> nn.Module:
    """The classification network, with padding computed per input so any image size works."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise TlsyncError(f"{LITE0} needs the EfficientNet-Lite architecture package: {EXTRA}") from None
    return EfficientNet.from_name("efficientnet-lite0", image_size=None)


def load_imagenet(net: nn.Module) -> None:
    path = weights_file()
    if not path.is_file():
        raise TlsyncError(f"{path}: the EfficientNet-Lite0 weights file is missing; reinstall with {EXTRA}")
    state = load_state_file(path, "EfficientNet-Lite0 ImageNet weights")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise TlsyncError(f"{path}: not EfficientNet-Lite0 weights ({str(e).splitlines()[0]})") from None


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d by a FrozenBatchNorm2d holding the same statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.weight.copy_(child.weight.detach())
            frozen.bias.copy_(child.bias.detach())
            frozen.running_mean.copy_(child.running_mean)
            frozen.running_var.copy_(child.running_var)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


def build_network(num_classes: int, weights: str, img_size: int) -> nn.Module:
    if weights == "coco":
        raise TlsyncError(f"{LITE0} has no COCO weights; use --weights imagenet (offline, from {EXTRA}) or none")
    net = efficientnet_lite0()
    pretrained = weights == "imagenet"
    if pretrained:
        if not architecture_only_active():
            load_imagenet(net)
        freeze_batchnorm(net)
    backbone = Lite0FPN(net)
    if pretrained:
        body = backbone.body
        for module in (body.stem, *body.blocks[:FROZEN_BLOCKS]):
            module.requires_grad_(False)
    anchors = AnchorGenerator(((32,), (64,), (128,), (256,)), ((0.5, 1.0, 2.0),) * 4)
    model = FasterRCNN(backbone, num_classes + 1, rpn_anchor_generator=anchors, min_size=img_size, max_size=img_size,
                       image_mean=IMAGE_MEAN, image_std=IMAGE_STD)
    replace_head(model, num_classes)  # the same fresh predictor, and it records the class layers
    return model
