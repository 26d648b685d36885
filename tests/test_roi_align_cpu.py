"""The CPU RoIAlign backward (trainer/training/roi_align_cpu.py) gives torchvision's gradients, faster.

A wrong gradient here would not crash anything: Faster R-CNN would just learn worse on the
CPU. So it is compared with torchvision's own kernel, in float64 (where only the order of the
additions differs, ~1e-15) and float32, on the cases its rules treat apart: boxes that hang
over or lie off the map, ``aligned`` both ways, fixed and adaptive sampling grids.
"""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from tlsync.trainer import build_model
from tlsync.trainer.training.roi_align_cpu import faster_backward


def boxes(n: int, batch: int, height: int, width: int, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """RoIs in image pixels: some inside the map, some over its edges, a few off it, some tiny."""
    gen = torch.Generator().manual_seed(n)
    corner = torch.rand(n, 2, generator=gen, dtype=dtype) * torch.tensor([width, height], dtype=dtype) / scale * 1.4 - 8
    size = torch.rand(n, 2, generator=gen, dtype=dtype) ** 2 * 48 / scale
    image = torch.randint(0, batch, (n, 1), generator=gen).to(dtype)
    return torch.cat([image, corner, corner + size], 1)


def input_gradient(features: torch.Tensor, rois: torch.Tensor, upstream: torch.Tensor, **kwargs) -> torch.Tensor:
    x = features.clone().requires_grad_()
    roi_align(x, rois, (7, 7), **kwargs).backward(upstream)
    assert x.grad is not None
    return x.grad


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("sampling_ratio,aligned", [(2, False), (2, True), (0, False), (-1, True), (3, False)])
def test_the_gradient_is_torchvisions(dtype: torch.dtype, tolerance: float, sampling_ratio: int,
                                      aligned: bool) -> None:
    batch, channels, height, width, scale = 3, 8, 11, 19, 0.125
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(batch, channels, height, width, generator=gen, dtype=dtype)
    rois = boxes(60, batch, height, width, scale, dtype)
    upstream = torch.randn(60, channels, 7, 7, generator=gen, dtype=dtype)
    kwargs = dict(spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)
    theirs = input_gradient(features, rois, upstream, **kwargs)
    with faster_backward():
        ours = input_gradient(features, rois, upstream, **kwargs)
    assert theirs.abs().max() > 1  # the case is not all zeros
    assert torch.allclose(ours, theirs, rtol=0, atol=tolerance * theirs.abs().max().item())
    assert torch.equal(input_gradient(features, rois, upstream, **kwargs), theirs)  # torchvision's again after


def test_no_rois_give_a_zero_gradient() -> None:
    features = torch.randn(2, 4, 5, 5)
    with faster_backward():
        grad = input_gradient(features, torch.zeros(0, 5), torch.zeros(0, 4, 7, 7), spatial_scale=1.0,
                              sampling_ratio=2)
    assert grad.shape == features.shape and not grad.any()


def test_a_faster_rcnn_step_gets_the_same_gradients() -> None:
    torch.manual_seed(0)
    model = build_model("fasterrcnn_mobilenet_v3_large_320_fpn", 3, "none", 128).train()
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 60.0, 70.0], [50.0, 40.0, 120.0, 90.0]]),
                "labels": torch.tensor([1, 2])} for _ in images]

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        torch.manual_seed(1)  # the same RoIs sampled both times
        sum(model(images, targets).values()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    theirs = gradients()
    with faster_backward():
        ours = gradients()
    assert theirs.keys() == ours.keys() and any("box_head" in n for n in ours)
    largest = max(grad.abs().max().item() for grad in theirs.values())
    for name, grad in theirs.items():  # float rounding only: some gradients are ~1e-8 noise either way
        assert torch.allclose(ours[name], grad, rtol=1e-3, atol=1e-6 * largest), name
