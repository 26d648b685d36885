"""The speed half of ``gpu_check.py``: tlsync vs a bare loop, cudnn.benchmark, and the loader's images/s.

Apart from ``gpu_check.py`` only to keep each file small; run ``gpu_check.py``, not this.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from typing import Any

from gpu_check import CHESS, LITE0, Context, Result

SPEED_MODELS = ("fasterrcnn_resnet50_fpn", LITE0)
TARGET_RATIO = 1.10  # tlsync's train time over the bare loop's, as in train_overhead.py


def speed_dataset(ctx: Context, version: Any) -> Any:
    """tlsync's own dataset class and training augmentation, so both loops decode and augment alike."""
    from tlsync.trainer import DetectionDataset
    from tlsync.trainer.training.data import train_transforms

    items = list(version.items("train"))
    return DetectionDataset(items, [version.image_path(i) for i in items], version.categories,
                            train_transforms(ctx.plan.img_size), ctx.plan.img_size)


def tlsync_ips(ctx: Context, model: str, version: Any, tag: str) -> float:
    """Train images/s of ``tlsync train`` itself: its best epoch after the first (warm-up)."""
    from tlsync.store import Store
    from tlsync.trainer import TrainConfig, train

    plan = ctx.plan
    cfg = TrainConfig(dataset=version.ref, model=model, weights="none", epochs=plan.speed_epochs, batch_size=plan.batch,
                      img_size=plan.img_size, patience=0, device=plan.device, project=str(ctx.work / "speed"),
                      name=f"{model}-{tag}")
    run = train(cfg, Store(ctx.work / "home"))
    with open(run / "metrics.csv", newline="") as f:
        seconds = [float(row["train_seconds"]) for row in csv.DictReader(f)]
    return plan.speed_images / min(seconds[1:] or seconds)


def bare_ips(ctx: Context, model: str, version: Any) -> float:
    """The torchvision fine-tuning tutorial's loop on the same GPU, AMP, workers, data and RoI sampling."""
    import torch

    from tlsync.trainer import TrainConfig, build_model, default_workers
    from tlsync.trainer.training.data import collate
    from tlsync.trainer.training.engine import amp_settings

    plan, device = ctx.plan, torch.device(ctx.plan.device)
    torch.manual_seed(0)
    net = build_model(model, len(version.categories), "none", plan.img_size).to(device).train()
    sampler = getattr(getattr(net, "roi_heads", None), "fg_bg_sampler", None)
    if sampler is not None:
        sampler.batch_size_per_image = TrainConfig.rois_per_image
    workers = default_workers()
    loader = torch.utils.data.DataLoader(speed_dataset(ctx, version), batch_size=plan.batch, shuffle=True,
                                         num_workers=workers, collate_fn=collate, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0)
    optimizer = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
    amp_dtype, scaler = amp_settings(device)
    seconds = []
    for _ in range(plan.speed_epochs):
        started = time.perf_counter()
        for images, targets, _failed in loader:
            images = [i.to(device, non_blocking=True) for i in images]
            targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for t in targets]
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = sum(net(images, targets).values())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return plan.speed_images / min(seconds[1:] or seconds)


def check_throughput(ctx: Context) -> Iterator[Result]:
    """Alternating rounds (tlsync, bare; then bare, tlsync) so drift in clocks or heat hits both alike;
    then one tlsync round with ``cudnn.benchmark`` on, against the default (off)."""
    plan = ctx.plan
    version = ctx.dataset("speed", plan.speed_images, plan.img_size)
    for model in SPEED_MODELS:
        if model == LITE0 and not ctx.lite0:
            yield Result(f"throughput {model}", None, "skipped: the lite0 extra is not installed")
            continue
        ours: list[float] = []
        bare: list[float] = []
        for r in range(plan.rounds):
            for kind in (("tlsync", "bare") if r % 2 == 0 else ("bare", "tlsync")):
                if kind == "tlsync":
                    ours.append(tlsync_ips(ctx, model, version, str(r)))
                else:
                    bare.append(bare_ips(ctx, model, version))
        ratio = max(bare) / max(ours)
        judged = "" if plan.smoke else (" (target <= 1.10)" if ratio <= TARGET_RATIO else " OVER the 1.10 target")
        yield Result(f"throughput {model}", plan.smoke or ratio <= TARGET_RATIO,
                     f"tlsync {max(ours):.1f} img/s, bare loop {max(bare):.1f} img/s at {plan.img_size} px, "
                     f"batch {plan.batch}, {plan.speed_images} images x {plan.speed_epochs} epochs, same dataset class "
                     f"and augmentation: overhead ratio {ratio:.2f}{judged} (best epoch after warm-up; rounds: "
                     f"tlsync {', '.join(f'{v:.1f}' for v in ours)}; bare {', '.join(f'{v:.1f}' for v in bare)})",
                     {"tlsync_ips": max(ours), "bare_ips": max(bare), "ratio": ratio, "model": model})
    yield cudnn_benchmark(ctx, version, SPEED_MODELS[0])


def cudnn_benchmark(ctx: Context, version: Any, model: str) -> Result:
    """tlsync's images/s with ``cudnn.benchmark`` on and off (off is the default: shapes change per batch)."""
    import torch

    ips = {}
    for on in (False, True):
        torch.backends.cudnn.benchmark = on
        try:
            ips[on] = tlsync_ips(ctx, model, version, f"cudnn-{on}")
        finally:
            torch.backends.cudnn.benchmark = False
    return Result("cudnn.benchmark", True, f"{model}: {ips[True]:.1f} img/s with it on, {ips[False]:.1f} off "
                                           f"(the default): on/off {ips[True] / ips[False]:.2f}",
                  {"cudnn_on_ips": ips[True], "cudnn_off_ips": ips[False]})


def chess_version(ctx: Context) -> Any:
    """The chess export's train folder, via the coco source; valid/ for a smoke run (fewer images to pull) or
    where train/ was not carried."""
    from tlsync.plugins import get_source
    from tlsync.pull import pull
    from tlsync.store import Store

    assert CHESS is not None
    store = Store(ctx.work / "home")
    folder = CHESS / ("valid" if ctx.plan.smoke or not (CHESS / "train").is_dir() else "train")
    pull(store, get_source("coco"), {"path": folder, "split": "train"}, "chess", on_error="skip")
    return store.open("chess")


def loader_ips(ctx: Context, version: Any) -> tuple[float, int, int]:
    """(images/s, workers, images) of ``make_loader`` over the train items, second pass (warm page cache)."""
    import torch

    from tlsync.trainer import DetectionDataset, default_workers
    from tlsync.trainer.training.data import make_loader, start_epoch, train_transforms

    items = list(version.items("train"))[: ctx.plan.loader_images]
    dataset = DetectionDataset(items, [version.image_path(i) for i in items], version.categories,
                               train_transforms(640), 640)
    workers, gpu = default_workers(), torch.cuda.is_available() and ctx.plan.device == "cuda"
    loader = make_loader(dataset, ctx.plan.batch, workers, 0, pin_memory=gpu, persistent_workers=gpu and workers > 0)
    seconds = 0.0
    for epoch in range(2):
        start_epoch(loader, epoch, 0)
        started = time.perf_counter()
        seen = sum(len(batch) for batch, _, _ in loader)
        seconds = time.perf_counter() - started
        assert seen == len(items), f"the loader gave {seen} of {len(items)} images"
    return len(items) / seconds, workers, len(items)


def check_loader(ctx: Context) -> Iterator[Result]:
    """The loader's images/s; set against the GPU's in the BENCHMARKS section (``gpu_check_report.verdicts``),
    which sees both calls' figures."""
    from gpu_check_report import verdicts

    if CHESS is None:
        yield Result("loader", None, "skipped: shared/datasets/chess-pieces-coco not found (nor ../shared)")
        return
    ips, workers, n = loader_ips(ctx, chess_version(ctx))
    result = Result("loader", True, f"{ips:.1f} img/s decoding + augmenting {n} chess JPEGs (2048x1371) with "
                    f"{workers} worker(s) (the default)", {"loader_ips": ips, "workers": workers, "images": n})
    compared = verdicts([*ctx.results, result])
    if compared:
        result.detail += "; " + "; ".join(compared)
    yield result
