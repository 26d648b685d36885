"""A vectorised CPU backward for torchvision's RoIAlign, used while training on the CPU.

torchvision's CPU kernel for ``roi_align``'s backward walks every RoI, channel, bin and
sample point in scalar C++ on one thread: about 1 ms per RoI at 256 channels, so a
Faster R-CNN step of 4 images x 128 sampled RoIs spent ~0.5 s there, more than the rest
of its backward pass together. The gradient is the same sum of bilinear weights, and the
weights are separable: sample ``(y, x)`` gives its four neighbours ``wy(row) * wx(col)``,
zero for both when the point lies outside the map. So with ``Ay`` (``PH x Kh``: row
weights over a ``Kh``-row window around the RoI) and ``Ax`` likewise, window pixel
``(k, w)`` takes ``sum over bins (p, q) of Ay[p, k] * Ax[q, w] * G[p, q]`` (``G``: the
RoI's output gradient): one batched matrix product per chunk of RoIs, added into the
input gradient with one ``index_add_``. Sample positions,
clamping and the outside-the-map rule follow torchvision's ``roi_align_kernel.cpp``
(``bilinear_interpolate_gradient``); only the order of the additions differs (float
rounding, ~1e-7 relative).

``faster_backward()`` registers it for CPU tensors for the duration of a ``with`` block
(``torch.library``; leaving the block restores torchvision's kernel). The forward pass, and
anything on CUDA, is torchvision's own.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch

Axis = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # what ``_axis`` returns
CHUNK = 64  # RoIs per batched product: enough to keep the matmul busy, few enough to share a window size


def _axis(start: torch.Tensor, bin_size: torch.Tensor, pooled: int, grid: int, size: int) -> Axis:
    """Along one axis, for ``R`` RoIs: each sample's low/high neighbour and their weights.

    Returns ``(low, high, w_low, w_high, bin_of_sample)``, each ``R x (pooled * grid)``; a sample
    outside ``[-1, size]`` has both weights zero (torchvision adds nothing for it).
    """
    bins = torch.arange(pooled, dtype=start.dtype).repeat_interleave(grid)
    steps = (torch.arange(grid, dtype=start.dtype) + 0.5).repeat(pooled)
    # The kernel's order of operations: start + p * bin + (i + .5) * bin / grid.
    pos = start[:, None] + bins[None] * bin_size[:, None] + steps[None] * bin_size[:, None] / grid
    inside = (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, size - 1, low + 1)
    pos = torch.where(at_edge, low.to(pos.dtype), pos)
    frac = pos - low
    w_high = torch.where(inside, frac, 0)
    w_low = torch.where(inside, 1 - frac, 0)
    return low, high, w_low, w_high, bins.long().expand_as(low)


def _extent(axis: Axis, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each RoI's first and last row (or column) with a non-zero weight (``size - 1, 0`` for none)."""
    low, high, w_low, w_high, _ = axis
    used = (w_low != 0) | (w_high != 0)
    return torch.where(used, low, size).amin(dim=1).clamp(max=size - 1), torch.where(used, high, 0).amax(dim=1)


def _window(axis: Axis, pooled: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each RoI's weight matrix ``R x pooled x K`` over a ``K``-wide window, and the window's first index."""
    low, high, w_low, w_high, bins = axis
    first, last = _extent(axis, size)
    width = int((last - first).clamp(min=0).max()) + 1
    first = first.clamp(max=size - width)
    weights = low.new_zeros((low.shape[0], pooled, width), dtype=w_low.dtype)
    rois = torch.arange(low.shape[0])[:, None].expand_as(low)
    used = (w_low != 0) | (w_high != 0)
    for at, w in ((low, w_low), (high, w_high)):  # unused samples (weight 0) may lie outside the window
        weights.index_put_((rois, bins, torch.where(used, at - first[:, None], 0)), w, accumulate=True)
    return weights, first


def _take(axis: Axis, rois: torch.Tensor) -> Axis:
    low, high, w_low, w_high, bins = axis
    return low[rois], high[rois], w_low[rois], w_high[rois], bins[rois]


def _span(axis: Axis, size: int) -> torch.Tensor:
    """How many rows (or columns) each RoI's samples touch."""
    first, last = _extent(axis, size)
    return (last - first).clamp(min=0) + 1


def roi_align_backward(grad: torch.Tensor, rois: torch.Tensor, spatial_scale: float, pooled_height: int,
                       pooled_width: int, batch_size: int, channels: int, height: int, width: int,
                       sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """``torchvision::_roi_align_backward``: the gradient of ``roi_align`` with respect to its input."""
    out = grad.new_zeros((batch_size * height * width, channels))
    if rois.shape[0] and height and width:
        offset = 0.5 if aligned else 0.0
        boxes = rois.to(grad.dtype)
        start_w, start_h = boxes[:, 1] * spatial_scale - offset, boxes[:, 2] * spatial_scale - offset
        roi_w, roi_h = boxes[:, 3] * spatial_scale - offset - start_w, boxes[:, 4] * spatial_scale - offset - start_h
        if not aligned:
            roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
        bin_h, bin_w = roi_h / pooled_height, roi_w / pooled_width
        if sampling_ratio > 0:
            grids = torch.full((rois.shape[0], 2), sampling_ratio, dtype=torch.long)
        else:  # adaptive: ceil(roi / pooled) samples per bin, RoI by RoI
            grids = torch.stack([torch.ceil(roi_h / pooled_height), torch.ceil(roi_w / pooled_width)], 1).long()
        # A channels-last copy of the output gradient: each RoI's part is then one matrix, bins x C.
        bins_by_channel = grad.flatten(2).transpose(1, 2)
        for grid in torch.unique(grids, dim=0).tolist():
            rows = torch.nonzero((grids == torch.tensor(grid)).all(dim=1)).flatten()
            _add(out, bins_by_channel[rows], boxes[rows, 0].long(), (start_h[rows], bin_h[rows]),
                 (start_w[rows], bin_w[rows]), (pooled_height, pooled_width), (max(grid[0], 1), max(grid[1], 1)),
                 (height, width))
    return out.view(batch_size, height, width, channels).permute(0, 3, 1, 2).contiguous()


def _add(out: torch.Tensor, grad: torch.Tensor, image: torch.Tensor, ys: tuple[torch.Tensor, torch.Tensor],
         xs: tuple[torch.Tensor, torch.Tensor], pooled: tuple[int, int], grid: tuple[int, int],
         size: tuple[int, int]) -> None:
    """Add the gradient of RoIs that share one sampling grid into ``out`` (``B*H*W x C``).

    ``grad`` is ``R x (PH*PW) x C``. RoIs go in chunks of similar size, each with a window
    just big enough for its largest, so that small RoIs do not pay for a large one's window.
    """
    along_y, along_x = _axis(*ys, pooled[0], grid[0], size[0]), _axis(*xs, pooled[1], grid[1], size[1])
    order = torch.argsort(_span(along_y, size[0]) * _span(along_x, size[1]))
    channels = grad.shape[2]
    for part in torch.split(order, CHUNK):
        n = len(part)
        ay, top = _window(_take(along_y, part), pooled[0], size[0])
        ax, left = _window(_take(along_x, part), pooled[1], size[1])
        kh, kw = ay.shape[2], ax.shape[2]
        # Sample (row k, column w) of a window takes bin (p, q)'s gradient times Ay[p, k] * Ax[q, w],
        # over the bin's grid[0] * grid[1] samples: one batched matmul, (kh*kw x PH*PW) @ (PH*PW x C).
        weights = torch.einsum("npk,nqw->nkwpq", ay, ax).reshape(n, kh * kw, -1) / (grid[0] * grid[1])
        local = torch.bmm(weights, grad[part])
        index = ((image[part, None, None] * size[0] + top[:, None, None] + torch.arange(kh)[None, :, None])
                 * size[1] + left[:, None, None] + torch.arange(kw)[None, None, :])
        out.index_add_(0, index.flatten(), local.reshape(-1, channels))


@contextmanager
def faster_backward() -> Iterator[None]:
    """Use ``roi_align_backward`` for CPU tensors inside the block (torchvision's kernel again after)."""
    if not hasattr(torch.ops.torchvision, "_roi_align_backward"):  # a torchvision without it: nothing to speed up
        yield
        return
    library = torch.library.Library("torchvision", "IMPL")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Overriding a previously registered kernel.*")
        library.impl("_roi_align_backward", roi_align_backward, "CPU")
    try:
        yield
    finally:
        library._destroy()  # what torch.library's own scoped registrations use to undo one
