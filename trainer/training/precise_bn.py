"""Precise batch norm: running statistics recomputed for the current weights before they are used.

Batch-norm layers in training mode normalise with each batch's own statistics and keep an
exponential moving average of them (``running_mean``/``running_var``) for evaluation. With
the momenta detection backbones use (0.01 in EfficientNet-Lite and torchvision's
MobileNetV3, TensorFlow's 0.99 decay; 0.03 in SSDLite's heads), that average spans
hundreds of steps, so after the few hundred steps of a small from-scratch run it
describes weights long gone: val mAP collapses to ~0 while the loss falls. Precise BN
(Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"; fvcore's ``update_bn_stats``)
replaces the average by a plain cumulative mean over a fixed set of training batches,
computed with the weights as they are now.

``recompute`` runs before every val evaluation and checkpoint. It is built so a run stays
reproducible and resumable bit for bit: the images are a fixed, seeded sample of the train
split, decoded as evaluation decodes them (whole, unaugmented, no resize before the model's
own) by a loader with its own generator, the forward pass
runs in eval mode (no RPN/RoI sampling, no dropout), and the global random state is
restored afterwards, so the training streams never see it. Under DistributedDataParallel
each rank forwards its share of the batches and the per-layer sums are all-reduced, so
every rank ends with the statistics one process would compute.

Only layers whose statistics training moves are touched: ``BatchNorm`` with running stats
whose affine parameters train. Frozen batch norm (pretrained torchvision and Lite0
backbones) and layers frozen by ``--freeze`` keep theirs, and a model without such layers
costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .data import DetectionDataset, GroupedBatchSampler, eval_transforms
from .settings import TrainConfig

# x batch size images: 200 at the default batch of 4 (fvcore uses 200 x its batch); the default lives in settings
DEFAULT_BATCHES: int = TrainConfig.precise_bn_batches
_SAMPLE_SEED = 0x5EED_B4  # mixed with the run's seed: the sample is fixed for a run, not shared with training


def live_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers whose running statistics training updates (and so can go stale)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and (m.weight is None or m.weight.requires_grad)]


def sample_batches(dataset: DetectionDataset, batches: int, batch_size: int, seed: int,
                   world_size: int = 1, rank: int = 0) -> list[list[int]]:
    """This rank's share of one seeded sample of at most ``batches`` x ``batch_size`` images.

    Batches keep one orientation, as in training. Every rank gets as many batches (the
    share is padded by wrapping round), because SyncBatchNorm layers need every rank in
    each forward pass.
    """
    generator = torch.Generator().manual_seed(_SAMPLE_SEED + seed)
    order = torch.randperm(len(dataset), generator=generator)[: batches * batch_size].tolist()
    everyone = list(GroupedBatchSampler(order, dataset.aspect_groups(), batch_size))  # type: ignore[arg-type]
    if len(everyone) > 1 and len(everyone[-1]) == 1:  # batch norm cannot normalise one 1x1 map: join the last two
        everyone[-2:] = [everyone[-2] + everyone[-1]]
    mine = everyone[rank::world_size]
    per_rank = -(-len(everyone) // world_size)
    while everyone and len(mine) < per_rank:
        mine.append(everyone[len(mine) % len(everyone)])
    return mine


def recompute(model: nn.Module, dataset: DetectionDataset, batches: int, batch_size: int, seed: int,
              device: torch.device, workers: int = 0) -> int:
    """Give ``model``'s live batch-norm layers the mean statistics of a seeded sample of ``dataset``.

    ``dataset`` is the training set; only its image paths and orientations are used. The
    images are decoded as evaluation and prediction decode them (whole, unresized, by
    ``evaluation.loader.EvalImages``) and the model's own transform sizes them, because
    these statistics are what evaluation will normalise with. The training loader's decode
    (JPEG draft mode, then an antialiased resize) gives smoother pictures than evaluation's
    whole decode and unantialiased resize; issue 26 measured stored statistics 0.10 test
    mAP50 below a recompute over evaluation's pictures on a VOC photo set (on bccd both
    decodes score within 0.01 of it: benchmarks/precise_bn_gap.py).
    Returns the number of layers recomputed (0: nothing to do, or ``batches`` is 0).
    """
    layers = live_batchnorms(model)
    if not layers or batches <= 0 or len(dataset) == 0:
        return 0
    from ..distributed import ddp as distributed
    from ..evaluation.loader import EvalImages, as_list

    mine = sample_batches(dataset, batches, batch_size, seed, distributed.world_size(), distributed.rank())
    # Decoded as evaluation decodes them (whole, no resize): the statistics must be those of what the model sees there
    as_evaluated = EvalImages([Path(record[1]) for record in dataset.records], None)
    loader = DataLoader(as_evaluated, batch_sampler=mine, num_workers=workers, collate_fn=as_list,
                        generator=torch.Generator().manual_seed(seed))
    forward = stats_forward(model, layers)
    with torch.random.fork_rng(devices=[]), _accumulating(model, layers):
        forwards = 0
        with torch.no_grad():
            for batch in loader:
                images = [tensor for _, tensor, _, _ in batch if not isinstance(tensor, str)]
                # every rank skips a batch that one rank cannot decode: SyncBatchNorm gathers from all in each pass
                if not distributed.failing_ranks(not images, device):
                    forward([image.to(device, non_blocking=True) for image in images])
                    forwards += 1
        distributed.all_reduce_mean_stats(layers, forwards)
    return len(layers)


def stats_forward(model: nn.Module, layers: list[nn.modules.batchnorm._BatchNorm]) -> Callable[[list[Any]], Any]:
    """The shortest forward pass that feeds every layer in ``layers`` what the full model would.

    In a from-scratch Faster R-CNN the live batch norm sits in the backbone alone, and an
    eval-mode forward of the whole detector spends most of its time after it: the box head
    on 1,000 proposals per image and NMS over an untrained model's many boxes (measured: 3/4
    of the pass on CPU). So the pass stops after the last part that holds a live layer: the
    resize/normalise transform and the backbone, then the dense head for one-stage models
    (SSDLite's heads keep batch norm); anything else gets the whole model.
    """
    live = {id(m) for m in layers}

    def holds(part: str) -> set[int]:
        module = getattr(model, part, None)
        return {id(m) for m in module.modules()} & live if isinstance(module, nn.Module) else set()

    transform, backbone = getattr(model, "transform", None), getattr(model, "backbone", None)
    if transform is None or backbone is None or holds("transform"):
        return model
    head = getattr(model, "head", None)
    if holds("backbone") == live:
        head = None
    elif head is None or hasattr(model, "roi_heads") or holds("backbone") | holds("head") != live:
        return model

    def forward(images: list[Any]) -> Any:
        features = backbone(transform(images)[0].tensors)
        if head is None:
            return features
        return head([features] if isinstance(features, torch.Tensor) else list(features.values()))

    return forward


class _accumulating:
    """Eval mode everywhere but in ``layers``, which restart a cumulative mean (``momentum=None``).

    On exit every module's mode, each layer's momentum and its batch counter are put back;
    the counter is restored so that it keeps counting training batches.
    """

    def __init__(self, model: nn.Module, layers: list[nn.modules.batchnorm._BatchNorm]):
        self.model, self.layers = model, layers

    def __enter__(self) -> None:
        self.modes = {m: m.training for m in self.model.modules()}
        self.saved = [(m.momentum, m.num_batches_tracked.clone()) for m in self.layers]  # type: ignore[union-attr]
        self.model.eval()
        for m in self.layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()

    def __exit__(self, *exc: Any) -> None:
        for m, (momentum, count) in zip(self.layers, self.saved, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)  # type: ignore[union-attr]
        for module, mode in self.modes.items():
            module.training = mode


def recompute_for_run(model: nn.Module, dataset: DetectionDataset, config: dict[str, Any], device: torch.device,
                      log: Callable[[str], None] | None = None) -> int:
    """``recompute`` with a run's own settings (``precise_bn_batches``, batch size, seed, workers)."""
    batches = config.get("precise_bn_batches", DEFAULT_BATCHES)
    done = recompute(model, dataset, batches, config.get("batch_size", 4), config.get("seed", 0), device,
                     config.get("workers", 0) or 0)
    if log and done:
        log(f"recomputed the statistics of {done} batch-norm layer(s) over "
            f"{min(len(dataset), batches * config.get('batch_size', 4))} train image(s)")
    return done


def fix_checkpoint(path: Path, store: Any, device: torch.device) -> tuple[Path, int, int]:
    """``tlsync eval --recompute-bn``: ``path``'s weights with statistics recomputed, saved beside it.

    For runs trained before precise BN (or with ``--precise-bn-batches 0``). The statistics
    come from the run's own train split, as training would have computed them; the result
    goes to ``<name>-bn.pt`` next to ``path``, which is refused if it exists (never
    overwritten). Returns ``(new file, layers recomputed, images used)``.
    """
    from tlsync.errors import TlsyncError

    from .checkpoint import load_checkpoint, rebuild_model, save_checkpoint

    target = path.with_name(f"{path.stem}-bn{path.suffix}")
    if target.exists():
        raise TlsyncError(f"{target} exists (written by an earlier --recompute-bn); it is never overwritten: "
                          f"delete it to recompute")
    checkpoint = load_checkpoint(path)
    config = checkpoint["config"]
    model = rebuild_model(checkpoint)
    model.load_state_dict(checkpoint["model"])
    model.to(device)
    version = store.open(config["dataset"])
    items = list(version.items("train"))
    dataset = DetectionDataset(items, [version.image_path(i) for i in items], checkpoint["categories"],
                               eval_transforms(config.get("img_size", 640)), config.get("img_size", 640))
    batches = config.get("precise_bn_batches") or DEFAULT_BATCHES  # a run trained with 0 gets the default
    layers = recompute_for_run(model, dataset, {**config, "workers": 0, "precise_bn_batches": batches}, device)
    if not layers:
        raise TlsyncError(f"{path}: the model has no trainable batch norm; its statistics need no recomputing")
    images = min(len(dataset), batches * config.get("batch_size", 4))
    skip = {"tlsync_checkpoint", "model", "categories", "config", "build"}
    extra = {k: v for k, v in checkpoint.items() if k not in skip}
    extra["recomputed_bn"] = {"from": path.name, "layers": layers, "images": images}
    save_checkpoint(target, model, checkpoint["categories"], config, **extra)
    return target, layers, images
