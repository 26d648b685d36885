"""Precise batch norm: a ``--weights none`` run's val mAP and checkpoints use statistics that match its weights.

Without it, scratch-built MobileNetV3/EfficientNet-Lite (BN momentum 0.01) and SSDLite (0.03)
evaluate with running statistics that lag hundreds of steps behind the weights: val mAP
collapses to ~0 while the loss falls (issue 12). The runs here are tiny (synthetic shapes at
64 px, a handful of steps): they check that what is saved and scored is the statistics of the
saved weights, that training itself is untouched, and that two processes agree with one.
"""

from __future__ import annotations

import csv
import random
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tlsync.connectors.synthetic import SyntheticSource
from tlsync.pull import pull

LITE0 = "fasterrcnn_efficientnet_lite0_fpn"
MOBILENET = "fasterrcnn_mobilenet_v3_large_320_fpn"
SSDLITE = "ssdlite320_mobilenet_v3_large"


def shapes(home: Path, items: int = 24, size: int = 96) -> None:
    from tlsync.store import Store

    pull(Store(home), SyntheticSource(), {"items": items, "size": size, "seed": 0}, "shapes",
         split_ratios=(0.67, 0.33, 0.0))


def train_dataset(home: Path, img_size: int):
    from tlsync.store import Store
    from tlsync.trainer.training.data import DetectionDataset, train_transforms

    version = Store(home).open("shapes")
    items = list(version.items("train"))
    return DetectionDataset(items, [version.image_path(i) for i in items], version.categories,
                            train_transforms(img_size), img_size)


def scratch(name: str, img_size: int = 64) -> torch.nn.Module:
    from tlsync.trainer import build_model

    torch.manual_seed(0)
    return build_model(name, 3, "none", img_size)


def bn_stats(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def train_run(home: Path, project: Path, model: str, precise: int, epochs: int, img_size: int = 64) -> Path:
    from tlsync.store import Store
    from tlsync.trainer import TrainConfig, train

    cfg = TrainConfig(dataset="shapes", model=model, weights="none", img_size=img_size, epochs=epochs, batch_size=4,
                      lr=0.02, workers=0, device="cpu", patience=0, precise_bn_batches=precise,
                      project=str(project), name=f"{model}-{precise}")
    return train(cfg, store=Store(home))


def val_curve(run: Path) -> tuple[list[float], list[float]]:
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    return [float(r["loss"]) for r in rows], [float(r["map50"]) for r in rows]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("pbn") / "home"
    shapes(home)
    return home


# -- the mechanism ------------------------------------------------------------------------------

def test_recompute_touches_no_random_stream_and_gives_the_same_statistics_twice(home: Path) -> None:
    """What keeps resume bit-exact: the training RNG streams come out as they went in."""
    from tlsync.trainer.training.precise_bn import recompute

    dataset = train_dataset(home, 64)
    model = scratch(SSDLITE)
    before = bn_stats(model)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    model.train()
    assert recompute(model, dataset, batches=2, batch_size=4, seed=0, device=torch.device("cpu")) > 0
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    assert model.training and all(m.training for m in model.modules()), "modes are put back"
    first = bn_stats(model)
    assert any(not torch.equal(first[k], before[k]) for k in first), "the statistics were recomputed"
    assert all(m.momentum == 0.03 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    recompute(model, dataset, batches=2, batch_size=4, seed=0, device=torch.device("cpu"))
    assert all(torch.equal(first[k], v) for k, v in bn_stats(model).items())


def test_frozen_batch_norm_is_left_alone() -> None:
    """Pretrained backbones keep their frozen statistics; --freeze backbone keeps the backbone's."""
    from tlsync.trainer.models.zoo import build_model, freeze
    from tlsync.trainer.training.precise_bn import live_batchnorms

    assert live_batchnorms(build_model(LITE0, 3, "imagenet", 64)) == []
    model = scratch(SSDLITE)
    every = live_batchnorms(model)
    freeze(model, "backbone")
    heads = live_batchnorms(model)
    assert 0 < len(heads) < len(every)
    assert not any(m in heads for m in model.backbone.modules())


@pytest.mark.parametrize("name", [LITE0, MOBILENET, SSDLITE])
def test_the_short_statistics_pass_gives_what_the_whole_model_would(name: str, home: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Precise BN stops after the last part with live batch norm (R-CNN: the backbone; SSDLite: the head).

    That is what keeps its cost small beside an epoch; the statistics must not change for it."""
    from tlsync.trainer.training import precise_bn

    dataset = train_dataset(home, 64)
    short, whole = scratch(name), scratch(name)
    assert precise_bn.stats_forward(short, precise_bn.live_batchnorms(short)) is not short
    precise_bn.recompute(short, dataset, batches=3, batch_size=4, seed=0, device=torch.device("cpu"))
    monkeypatch.setattr(precise_bn, "stats_forward", lambda model, layers: model)
    precise_bn.recompute(whole, dataset, batches=3, batch_size=4, seed=0, device=torch.device("cpu"))
    a, b = bn_stats(short), bn_stats(whole)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    assert any(not torch.equal(v, bn_stats(scratch(name))[k]) for k, v in a.items())


def recompute_job(home: str, *, runtime: Any) -> dict[str, list[float]]:
    """This rank's share of the recompute (module level, so that spawned workers can import it).

    Plain lists go back: tensors would travel as shared memory that dies with the worker."""
    from tlsync.trainer.training.precise_bn import recompute

    model = scratch(SSDLITE)
    recompute(model, train_dataset(Path(home), 64), batches=4, batch_size=2, seed=0, device=runtime.device)
    return {k: v.tolist() for k, v in bn_stats(model).items()}


def test_two_processes_end_with_the_single_process_statistics(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlsync.trainer import launch
    from tlsync.trainer.training.precise_bn import recompute

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ranks = launch(partial(recompute_job, str(home)), devices=2, device="cpu")
    model = scratch(SSDLITE)
    recompute(model, train_dataset(home, 64), batches=4, batch_size=2, seed=0, device=torch.device("cpu"))
    single = bn_stats(model)
    for plain in ranks:
        stats = {k: torch.tensor(v) for k, v in plain.items()}
        assert stats.keys() == single.keys()
        assert all(torch.allclose(stats[k], single[k], rtol=1e-4, atol=1e-5) for k in single)
    # ...and the shares really differ: without the all-reduce each rank would hold its own half's mean.
    own = scratch(SSDLITE)
    recompute(own, train_dataset(home, 64), batches=2, batch_size=2, seed=0, device=torch.device("cpu"))
    assert any(not torch.allclose(v, single[k], rtol=1e-4, atol=1e-5) for k, v in bn_stats(own).items())


# -- scratch runs that learn --------------------------------------------------------------------

EPOCHS = 3


@pytest.fixture(scope="module")
def ssdlite_runs(home: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(without, with precise BN): two SSDLite scratch runs alike in all else, trained once for the module.

    Training is the slow part here; both tests below read these two runs (neither changes a file the
    other reads: the eval test writes only ``*-bn.pt`` and ``eval-recomputed-bn`` into the first)."""
    project = tmp_path_factory.mktemp("pbn-runs")
    return (train_run(home, project, SSDLITE, precise=0, epochs=EPOCHS),
            train_run(home, project, SSDLITE, precise=25, epochs=EPOCHS))


def predictions(model: torch.nn.Module, home: Path) -> list[dict[str, torch.Tensor]]:
    from torchvision.transforms.functional import to_tensor

    from tlsync.store import Store
    from tlsync.trainer import load_image

    version = Store(home).open("shapes")
    images = [to_tensor(load_image(version.image_path(item))) for item in version.items("val")]
    with torch.no_grad():
        return model.eval()(images)


def test_a_scratch_run_saves_statistics_that_match_its_weights(home: Path, ssdlite_runs: tuple[Path, Path]) -> None:
    """What val evaluation, best.pt, eval, predict and push see: the statistics of the saved weights.

    SSDLite here (its heads keep trainable batch norm from any start); Lite0's and MobileNet-320's
    scratch runs get the same check after learning, in test_scratch_learns.py."""
    from tlsync.trainer import load_model
    from tlsync.trainer.training.precise_bn import live_batchnorms, recompute_for_run

    _, run = ssdlite_runs  # the run with precise BN
    losses, map50 = val_curve(run)
    assert len(map50) == EPOCHS and losses[-1] < losses[0], losses
    for checkpoint in ("best.pt", "last.pt"):
        model, _, config = load_model(run / "weights" / checkpoint)  # weights_only=True inside
        again, _, _ = load_model(run / "weights" / checkpoint)
        assert len(live_batchnorms(again)) > 0
        recompute_for_run(again, train_dataset(home, config["img_size"]), config, torch.device("cpu"))
        saved, fresh = bn_stats(model), bn_stats(again)
        assert all(torch.equal(saved[k], fresh[k]) for k in saved), f"{checkpoint}: stale statistics"
        for a, b in zip(predictions(model, home), predictions(again, home), strict=True):
            assert all(torch.equal(a[k], b[k]) for k in a)


def test_precise_bn_leaves_training_alone_and_eval_recompute_bn_fixes_an_old_run(
        home: Path, ssdlite_runs: tuple[Path, Path], run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run without precise BN (as before) has the same weights; ``--recompute-bn`` gives it the right statistics."""
    from tlsync.store import Store
    from tlsync.trainer import load_checkpoint
    from tlsync.trainer.training.precise_bn import fix_checkpoint

    old, new = ssdlite_runs
    a, b = load_checkpoint(old / "weights" / "last.pt")["model"], load_checkpoint(new / "weights" / "last.pt")["model"]
    stats = [k for k in a if k.endswith(("running_mean", "running_var"))]
    assert all(torch.equal(a[k], b[k]) for k in a if k not in stats), "precise BN changed the training itself"
    assert not all(torch.equal(a[k], b[k]) for k in stats)

    train_images = len(list(Store(home).open("shapes").items("train")))  # fewer than 50 batches of 4: all of them
    fixed, layers, images = fix_checkpoint(old / "weights" / "last.pt", Store(home), torch.device("cpu"))
    assert fixed == old / "weights" / "last-bn.pt" and layers > 0 and images == train_images
    c = torch.load(fixed, weights_only=True)
    assert all(torch.allclose(b[k], c["model"][k]) for k in b), "the fix equals what precise BN training saves"

    monkeypatch.setenv("TLSYNC_HOME", str(home))
    best = (old / "weights" / "best.pt").read_bytes()
    result = run_cli("eval", "--run", old, "--device", "cpu", "--recompute-bn")
    assert result.exit_code == 0, result.stderr
    wrote = f"layer(s) over {train_images} train image(s) of shapes@1: wrote {old / 'weights' / 'best-bn.pt'}"
    assert wrote in result.stdout
    assert "(best-bn.pt)" in result.stdout and (old / "eval-recomputed-bn" / "metrics.json").exists()
    assert (old / "weights" / "best.pt").read_bytes() == best, "the original checkpoint is never touched"
    again = run_cli("eval", "--run", old, "--device", "cpu", "--recompute-bn")
    assert again.exit_code == 1 and "best-bn.pt exists" in again.stderr and "never overwritten" in again.stderr
