"""Precise BN sees the images the way evaluation does (issue 26).

The statistics precise BN stores are what ``tlsync eval``, ``predict`` and exports normalise
with, so they must come from the pictures those decode: whole, unresized, sized by the model's
own transform. The training loader's decode (JPEG draft mode, then an antialiased resize to
the training size) gives smoother pictures; issue 26 measured statistics taken through it 0.10
test mAP50 below a recompute over evaluation's pictures. Synthetic 96 px images trained at
64 px make the two decodes differ, so the test fails if precise BN goes back to the loader's.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tlsync.connectors.synthetic import SyntheticSource
from tlsync.pull import pull
from tlsync.store import Store

LITE0 = "fasterrcnn_efficientnet_lite0_fpn"


def test_statistics_are_those_of_the_images_as_evaluation_decodes_them(tlsync_home: Path) -> None:
    from tlsync.trainer import build_model
    from tlsync.trainer.evaluation.predict import image_tensor, load_image
    from tlsync.trainer.training import precise_bn
    from tlsync.trainer.training.data import DetectionDataset, train_transforms

    store = Store(tlsync_home)
    pull(store, SyntheticSource(), {"items": 12, "size": 96, "seed": 0}, "shapes", split_ratios=(1.0, 0.0, 0.0))
    version = store.open("shapes")
    items = list(version.items("train"))
    paths = [version.image_path(i) for i in items]
    dataset = DetectionDataset(items, paths, version.categories, train_transforms(64), 64)
    torch.manual_seed(0)
    stored, expected = build_model(LITE0, 3, "none", 64), build_model(LITE0, 3, "none", 64)
    expected.load_state_dict(stored.state_dict())

    precise_bn.recompute(stored, dataset, batches=3, batch_size=4, seed=0, device=torch.device("cpu"))

    layers = precise_bn.live_batchnorms(expected)
    forward = precise_bn.stats_forward(expected, layers)
    with precise_bn._accumulating(expected, layers), torch.no_grad():
        for batch in precise_bn.sample_batches(dataset, 3, 4, 0):
            forward([image_tensor(load_image(paths[i])) for i in batch])
    for ours, theirs in zip(precise_bn.live_batchnorms(stored), layers, strict=True):
        torch.testing.assert_close(ours.running_mean, theirs.running_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-4, atol=1e-5)
