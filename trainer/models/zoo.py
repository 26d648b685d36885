"""The built-in detectors, registered through the same hook as a plugin's.

Every torchvision detection model is built by torchvision's own builder (so pretrained
starts get torchvision's frozen batch norm and trainable-layer defaults), then only the
layers whose shape depends on the class count are replaced; every other pretrained
weight is kept. Replaced layers are listed in ``model.tlsync_class_layers`` with their
row layout, which lets ``checkpoint.transfer_weights`` move rows between class lists.

torch is imported inside functions: ``tlsync.plugins`` imports this module to list the
models, and ``tlsync --help`` must not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tlsync.errors import TlsyncError
from tlsync.hookspecs import hookimpl
from tlsync.models import WEIGHTS, ModelSpec
from tlsync.plugins import get_model

from .lite0 import DESCRIPTION as LITE0_DESCRIPTION
from .lite0 import LITE0
from .lite0 import where as lite0_where

if TYPE_CHECKING:
    from torch import nn

TORCHVISION = {
    "fasterrcnn_resnet50_fpn": ("Faster R-CNN, ResNet-50 FPN", 64),
    "fasterrcnn_resnet50_fpn_v2": ("Faster R-CNN v2, ResNet-50 FPN, trainable batch norm", 64),
    "fasterrcnn_mobilenet_v3_large_fpn": ("Faster R-CNN, MobileNetV3-Large FPN (fast on CPU)", 64),
    "fasterrcnn_mobilenet_v3_large_320_fpn": ("Faster R-CNN, MobileNetV3-Large FPN for ~320 px (fastest)", 64),
    "retinanet_resnet50_fpn": ("RetinaNet, ResNet-50 FPN", 64),
    "retinanet_resnet50_fpn_v2": ("RetinaNet v2, ResNet-50 FPN, GIoU loss", 64),
    "fcos_resnet50_fpn": ("FCOS (anchor-free), ResNet-50 FPN", 64),
    "ssdlite320_mobilenet_v3_large": ("SSDLite, MobileNetV3-Large, fixed square input", 64),
    "ssd300_vgg16": ("SSD, VGG-16, fixed square input", 268),
}
FREEZE = ("backbone", "none")
# torchvision drops region proposals scored under 0.05 in these two, tuned for its COCO-trained RPN.
# An RPN that is not yet trained (from scratch or ImageNet) scores every proposal under that for a
# while: a scratch MobileNet-320 run then scored val mAP50 0.000 with 0.158 under a threshold of 0, and
# its curve fell to 0 between epochs. The pre-NMS top-n still bounds how many proposals go on.
RPN_SCORE_THRESH_05 = ("fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_mobilenet_v3_large_320_fpn")


@hookimpl
def tlsync_register_models(register: Any) -> None:
    for name, (description, min_size) in TORCHVISION.items():
        register(ModelSpec(name, _torchvision_builder(name), description, min_size, _torchvision_where(name)))
    register(ModelSpec(LITE0, build_lite0, LITE0_DESCRIPTION, 64, lite0_where))


def build_lite0(num_classes: int, weights: str, img_size: int) -> nn.Module:
    """EfficientNet-Lite0 Faster R-CNN (``lite0_net`` holds it; torch is imported only when one is built)."""
    from .lite0_net import build_network

    return build_network(num_classes, weights, img_size)


def build_model(name: str, num_classes: int, weights: str = "none", img_size: int = 640) -> nn.Module:
    """Any registered model with a head for ``num_classes`` (background excluded).

    The result remembers how it was built (``model.tlsync_build``) so that a checkpoint
    can rebuild the same architecture later.
    """
    spec = get_model(name)
    if weights not in WEIGHTS:
        raise TlsyncError(f"--weights must be one of {', '.join(WEIGHTS)} or a run/checkpoint path (got {weights!r})")
    if num_classes < 1:
        raise TlsyncError(f"model '{name}' needs at least one class (got {num_classes})")
    if img_size < spec.min_size:
        raise TlsyncError(f"--img-size {img_size} is too small for '{name}' (minimum {spec.min_size})")
    from .box_precision import keep_boxes_fp32  # torch: imported only when a model is built

    model = spec.build(num_classes, weights, img_size)
    keep_boxes_fp32(model)  # anchors and box decoding stay fp32 under bf16/fp16 autocast (box_precision.py)
    model.tlsync_build = {"model": name, "weights": weights, "img_size": img_size}
    return model


def _torchvision_builder(name: str) -> Any:
    def build(num_classes: int, weights: str, img_size: int) -> nn.Module:
        import torchvision

        from .heads import replace_head, set_fixed_size
        from .weights import hub_weights, torchvision_weights

        is_ssd = name.startswith("ssd")
        options: dict[str, Any] = {} if is_ssd else {"min_size": img_size, "max_size": img_size}
        if name in RPN_SCORE_THRESH_05 and weights != "coco":
            options["rpn_score_thresh"] = 0.0  # see RPN_SCORE_THRESH_05
        with hub_weights():
            model = torchvision.models.get_model_builder(name)(**torchvision_weights(name, weights), **options)
        replace_head(model, num_classes)
        if is_ssd:
            set_fixed_size(model, img_size)
        return model

    return build


def _torchvision_where(name: str) -> Any:
    def where() -> list:
        from .weights import torchvision_where

        return torchvision_where(name)

    return where


def freeze(model: nn.Module, what: str) -> None:
    """``--freeze backbone``: train the heads only; ``none``: back to the builder's defaults.

    Frozen parameters get ``requires_grad=False`` (build the optimizer over all
    parameters: ones without gradients are skipped, so unfreezing later just works), and
    the backbone's batch-norm layers stay in eval mode so their statistics stay frozen too.
    """
    from torch import nn

    if what not in FREEZE:
        raise TlsyncError(f"--freeze must be one of {', '.join(FREEZE)} (got {what!r})")
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, nn.Module):
        raise TlsyncError(f"cannot freeze the backbone of a {type(model).__name__}: it has no .backbone")
    defaults = model.__dict__.setdefault(
        "_tlsync_trainable", {n for n, p in model.named_parameters() if p.requires_grad})
    for name, param in model.named_parameters():
        param.requires_grad = name in defaults and not (what == "backbone" and name.startswith("backbone."))
    hook = model.__dict__.pop("_tlsync_freeze_hook", None)
    if hook is not None:
        hook.remove()
    if what == "backbone":
        # A plain attribute (nn.Module.__setattr__ would put it in __dict__ too), popped above.
        model.__dict__["_tlsync_freeze_hook"] = backbone.register_forward_pre_hook(_batchnorm_eval)


def _batchnorm_eval(module: nn.Module, _inputs: Any) -> None:
    from torch import nn

    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
