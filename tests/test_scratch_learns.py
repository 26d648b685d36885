"""``--weights none`` runs really learn (issue 12): val mAP climbs and stays up while the loss falls.

The bug these guard against: a scratch EfficientNet-Lite0 scored val mAP50 0.27 after its first
epoch and ~0 after every later one while its loss kept falling, because batch norm's running
statistics (momentum 0.01) described weights hundreds of steps old. Precise BN (precise_bn.py)
scores and saves statistics of the current weights; test_precise_bn.py checks that mechanism
exactly, these check its outcome on a task easy enough to learn in a few CPU epochs: one class of
large bright squares on dark noise, 25 train and 7 val images. Each run's best.pt must also hold
the statistics of its own weights: what val scored is what eval, predict and push get.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tlsync import plugins
from tlsync.pull import pull
from tlsync.store import Store


def squares(export: Path, items: int, size: int) -> Path:
    """A COCO folder: each image has one or two squares of 1/5 to 1/2 its side."""
    export.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(items):
        pixels = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
        for k in range(int(rng.integers(1, 3))):
            side = int(rng.integers(size // 5, size // 2))
            x, y = (int(v) for v in rng.integers(0, size - side, 2))
            pixels[y:y + side, x:x + side] = (220, 60 + 40 * k, 40)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                                "bbox": [x, y, side, side]})
        Image.fromarray(pixels).save(export / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": size, "height": size})
    (export / "_annotations.coco.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "square"}]}))
    return export


def scratch_run(tmp_path: Path, model: str, img_size: int, epochs: int, lr: float) -> Path:
    from tlsync.trainer import TrainConfig, train

    store = Store(tmp_path / "home")
    pull(store, plugins.get_source("coco"), {"path": squares(tmp_path / "export", 32, img_size)}, "squares",
         split_ratios=(0.75, 0.25, 0.0))
    return train(TrainConfig(dataset="squares", model=model, weights="none", img_size=img_size, epochs=epochs,
                            batch_size=4, lr=lr, workers=0, device="cpu", patience=0,
                             project=str(tmp_path / "runs"), name="scratch"), store=store)


def curve(run: Path) -> tuple[list[float], list[float]]:
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return [float(r["loss"]) for r in rows], [float(r["map50"]) for r in rows]


def predictions(model: torch.nn.Module, version: Any) -> list[dict[str, torch.Tensor]]:
    from torchvision.transforms.functional import to_tensor

    from tlsync.trainer import load_image

    images = [to_tensor(load_image(version.image_path(item))) for item in version.items("val")]
    with torch.no_grad():
        return model.eval()(images)


def assert_statistics_match_weights(run: Path, store: Store) -> None:
    """best.pt's statistics, and so its eval-mode predictions, are those a fresh recompute gives."""
    from tlsync.trainer import load_model
    from tlsync.trainer.training.data import DetectionDataset, train_transforms
    from tlsync.trainer.training.precise_bn import live_batchnorms, recompute_for_run

    model, _, config = load_model(run / "weights" / "best.pt")  # weights_only=True inside
    again, _, _ = load_model(run / "weights" / "best.pt")
    version = store.open("squares")
    items = list(version.items("train"))
    dataset = DetectionDataset(items, [version.image_path(i) for i in items], version.categories,
                               train_transforms(config["img_size"]), config["img_size"])
    assert len(live_batchnorms(again)) > 0
    recompute_for_run(again, dataset, config, torch.device("cpu"))
    saved, fresh = model.state_dict(), again.state_dict()
    assert all(torch.equal(saved[k], fresh[k]) for k in saved if k.endswith(("running_mean", "running_var")))
    for a, b in zip(predictions(model, version), predictions(again, version), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("model", "img_size", "epochs", "lr", "peak"), [
    # Measured here: mAP50 0 / 0 / 0.10 / 0.59 / 0.41 / 0.54 over 6 epochs (10 epochs at 128 px reach 1.0).
    ("fasterrcnn_efficientnet_lite0_fpn", 96, 6, 0.02, 0.3),
    # MobileNet-320's RPN learns slower from scratch: at lr 0.02 its objectness loss fell 0.69 -> 0.13
    # over 10 epochs (Lite0's: 0.13 after 2) and val mAP50 peaked at 0.13. At 0.04, measured here
    # (proposal threshold 0, zoo.RPN_SCORE_THRESH_05; the CPU RoIAlign backward, roi_align_cpu.py):
    # 0 / 0 / 0.002 / 0.048 / 0 / 0.081 / 0.27 / 0.26 over 8 epochs. It is held to less than Lite0.
    ("fasterrcnn_mobilenet_v3_large_320_fpn", 128, 8, 0.04, 0.15),
    # SSDLite's heads keep trainable batch norm from any start. Measured here: peak 0.47, last 0.24.
    ("ssdlite320_mobilenet_v3_large", 128, 10, 0.02, 0.2),
])
def test_a_scratch_run_learns_and_does_not_collapse(tmp_path: Path, model: str, img_size: int, epochs: int,
                                                    lr: float, peak: float) -> None:
    run = scratch_run(tmp_path, model, img_size, epochs, lr)
    losses, map50 = curve(run)
    assert losses[-1] < 0.6 * losses[0], losses
    best = max(map50)
    assert best >= peak, map50
    assert map50[-1] >= 0.4 * best, f"val mAP50 fell back after its best epoch: {map50}"
    assert_statistics_match_weights(run, Store(tmp_path / "home"))


def test_a_last_batch_of_one_image_does_not_stop_a_scratch_ssdlite_run(tmp_path: Path) -> None:
    """SSDLite's last layers are 1x1 at any size, and batch norm cannot train on one image of them:
    a train split one image over a multiple of the batch (25 images at batch 4) used to end the run
    with "Expected more than 1 value per channel when training"."""
    from tlsync.trainer import TrainConfig, train

    store = Store(tmp_path / "home")
    pull(store, plugins.get_source("coco"), {"path": squares(tmp_path / "export", 8, 64)}, "squares",
         split_ratios=(0.75, 0.25, 0.0))
    images = len(list(store.open("squares").items("train")))
    assert images >= 3
    run = train(TrainConfig(dataset="squares", model="ssdlite320_mobilenet_v3_large", weights="none", img_size=64,
                            epochs=1, batch_size=images - 1, workers=0, device="cpu", patience=0,
                            project=str(tmp_path / "runs"), name="lone"), store=store)
    assert len(curve(run)[0]) == 1


def test_the_lone_last_image_left_out_changes_with_the_epoch() -> None:
    from torch.utils.data import RandomSampler

    from tlsync.trainer.training.data import GroupedBatchSampler

    generator = torch.Generator()
    sampler = GroupedBatchSampler(RandomSampler(range(9), generator=generator), [i % 2 for i in range(9)], 4,
                                  drop_lone=True)
    left_out = set()
    for epoch in range(6):
        generator.manual_seed(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 2 and all(len(b) == 4 for b in batches)
        (missing,) = set(range(9)) - {i for b in batches for i in b}
        left_out.add(missing)
    assert len(left_out) > 1
    assert len(GroupedBatchSampler(RandomSampler(range(10)), [0] * 10, 4, drop_lone=True)) == 3  # 2 are kept
    assert len(list(GroupedBatchSampler(RandomSampler(range(1)), [0], 4, drop_lone=True))) == 1  # 1 trains
    assert len(GroupedBatchSampler(RandomSampler(range(9)), [0] * 9, 4)) == 3, "only training drops one"
