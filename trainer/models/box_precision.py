"""Box geometry in fp32 under mixed precision, whatever dtype the network computes in.

Under autocast the backbone's feature maps and the heads' box regressions come out in
bf16 or fp16, and torchvision takes its box dtype from them: ``AnchorGenerator`` and
SSD's ``DefaultBoxGenerator`` build the anchors in the feature maps' dtype, and
``BoxCoder``/``BoxLinearCoder`` cast the anchors to the regression's dtype before
decoding. bf16 keeps 8 significant bits, so at 640 px a coordinate is rounded to 2-4 px
(4 px between 512 and 1024): every proposal and predicted box moves by that much, which
costs exactly the localisation that mAP50-95 rewards. fp16 (11 bits) rounds to 0.25-0.5 px.

``keep_boxes_fp32`` swaps those objects' classes for subclasses that do the same
arithmetic in fp32 when (and only when) they are handed half-precision tensors: an fp32
model, and so an exported (traced) one, runs exactly the code it ran before. The network
itself stays in reduced precision; only the few element-wise box operations, a tiny part
of a step, move to fp32.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder, BoxLinearCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList

HALF = (torch.float16, torch.bfloat16)


def _fp32_shapes(feature_maps: list[Tensor]) -> list[Tensor]:
    """Stand-ins with the maps' shapes and device in fp32, without copying them (the generators read only
    the shape, dtype and device)."""
    return [torch.empty((), dtype=torch.float32, device=f.device).expand(f.shape) for f in feature_maps]


class Fp32AnchorGenerator(AnchorGenerator):
    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        if feature_maps and feature_maps[0].dtype in HALF:
            feature_maps = _fp32_shapes(feature_maps)
        return AnchorGenerator.forward(self, image_list, feature_maps)


class Fp32DefaultBoxGenerator(DefaultBoxGenerator):
    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        if feature_maps and feature_maps[0].dtype in HALF:
            feature_maps = _fp32_shapes(feature_maps)
        return DefaultBoxGenerator.forward(self, image_list, feature_maps)


class Fp32BoxCoder(BoxCoder):
    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        if rel_codes.dtype in HALF:
            rel_codes, boxes = rel_codes.float(), boxes.float()
        return BoxCoder.decode_single(self, rel_codes, boxes)


class Fp32BoxLinearCoder(BoxLinearCoder):
    def decode(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        if rel_codes.dtype in HALF:
            rel_codes, boxes = rel_codes.float(), boxes.float()
        return BoxLinearCoder.decode(self, rel_codes, boxes)


SWAPS: dict[type, type] = {AnchorGenerator: Fp32AnchorGenerator, DefaultBoxGenerator: Fp32DefaultBoxGenerator,
                           BoxCoder: Fp32BoxCoder, BoxLinearCoder: Fp32BoxLinearCoder}


def keep_boxes_fp32(model: nn.Module) -> int:
    """Give every anchor generator and box coder in ``model`` its fp32 subclass; returns how many changed.

    Coders are plain attributes (``rpn.box_coder``, ``roi_heads.box_coder``, a head's
    ``box_coder``), not submodules, so each module's attributes are searched too.
    """
    changed = 0
    for module in model.modules():
        for value in [module, *vars(module).values()]:
            swap = SWAPS.get(type(value))
            if swap is not None:
                value.__class__ = swap
                changed += 1
    return changed
