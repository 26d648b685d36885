"""``tlsync train``: it really learns, resumes exactly, remaps classes, fails clearly, keeps its files.

The model is EfficientNet-Lite0 from its ImageNet weights (shipped in a pip package, so no
download): it learns the synthetic shapes in a few dozen steps, which keeps these tests to
tiny images and a handful of epochs on a CPU.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tlsync.connectors.synthetic import SyntheticSource
from tlsync.pull import pull
from tlsync.sources import PullContext
from tlsync.trainer import load_checkpoint, load_model

MODEL = ("--model", "fasterrcnn_efficientnet_lite0_fpn", "--weights", "imagenet")
SMALL = ("--img-size", "64", "--batch-size", "2", "--workers", "0", "--device", "cpu")
REPORT_PNGS = {"training.png", "pr_curve.png", "per_class_ap.png", "confusion_matrix.png", "val_images.png"}


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs land in ./runs, so every test works in its own folder."""
    monkeypatch.chdir(tmp_path)


class Shapes(SyntheticSource):
    """The synthetic shapes, optionally with classes renamed, boxes removed or a class without boxes."""

    name = "shapes"

    def __init__(self, rename: dict[str, str] | None = None, boxes: bool = True, extra: str | None = None):
        self.rename, self.boxes, self.extra = rename or {}, boxes, extra

    def items(self, ctx: PullContext, **options: Any) -> Iterator:
        for item in super().items(ctx, **options):
            for box in item.annotations:
                box.label = self.rename.get(box.label, box.label)
            if not self.boxes:
                item.annotations = []
            yield item
        ctx.set_categories([self.rename.get(c, c) for c in ctx.categories] + ([self.extra] if self.extra else []))


def shapes(store, name: str, items: int, size: int = 64, ratios=(1.0, 0.0, 0.0), **kwargs: Any):
    pull(store, Shapes(**kwargs), {"items": items, "size": size, "seed": 0}, name, split_ratios=ratios)
    return store.open(name)


def train(run_cli, *args: Any):
    result = run_cli("train", *args)
    assert result.exit_code == 0, result.stderr
    return result, Path(re.search(r"^run: (.+)$", result.stdout, re.M).group(1))


def test_a_small_model_learns_eight_images(store, run_cli) -> None:
    from tlsync.trainer import evaluate_split

    version = shapes(store, "eight", 8, size=128)
    # 10 epochs of 2 steps: 20 SGD steps in all (mAP50 is ~0.6 after 12 steps, ~0.9 after 24).
    _, run = train(run_cli, "--dataset", "eight", *MODEL, "--img-size", "128", "--batch-size", "4",
                   "--epochs", "10", "--lr", "0.02", "--workers", "0", "--device", "cpu")
    model, categories, _ = load_model(run)
    metrics = evaluate_split(model, version, "train", categories, "cpu", None)
    assert metrics["map50"] >= 0.5, metrics


def test_resume_after_sigkill_matches_an_unbroken_run(store, run_cli, tmp_path: Path) -> None:
    """3 epochs straight vs. SIGKILL during epoch 2 and --resume: the same final weights.

    On a CPU with fixed seeds and the same thread count every operation is deterministic, so
    the weights are equal bit for bit: the order of images, the augmentation and the RPN's
    sampling all come from restored or per-epoch seeded generators.
    """
    version = shapes(store, "resume", 8, ratios=(0.5, 0.5, 0.0))
    assert len(list(version.items("val"))) == 2
    args = ["--dataset", "resume", *MODEL, *SMALL, "--epochs", "3", "--patience", "0"]
    _, straight = train(run_cli, *args, "--name", "straight")

    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same arithmetic as in here
    proc = subprocess.Popen([sys.executable, "-m", "tlsync", "train", *args, "--name", "killed"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    last = tmp_path / "runs" / "killed" / "weights" / "last.pt"
    try:
        deadline = time.monotonic() + 240
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)  # epoch 1 just saved: epoch 2 is under way
    finally:
        proc.wait()
    assert last.exists(), proc.stderr.read().decode()
    assert load_checkpoint(last)["epoch"] == 1

    result, resumed = train(run_cli, "--resume", "runs/killed")
    assert "resuming runs/killed after epoch 1 of 3" in result.stderr
    a, b = load_checkpoint(straight / "weights" / "last.pt"), load_checkpoint(resumed / "weights" / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])
    rows = list(csv.DictReader(open(resumed / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]

    check_run_dir(resumed, version)
    result = run_cli("train", "--resume", "runs/killed")
    assert result.exit_code == 1 and "already finished (3 of 3 epochs)" in result.stderr


def check_run_dir(run: Path, version) -> None:
    """What a finished run leaves: config, metrics, safe-to-load weights, eval files, a report."""
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == version.ref and config["content_hash"] == version.content_hash
    assert config["model"] == "fasterrcnn_efficientnet_lite0_fpn" and config["weights"] == "imagenet"
    assert config["categories"] == version.categories and config["device"] == "cpu"
    assert {"torch", "torchvision", "tlsync"} <= set(config["versions"])
    assert config["lr"] == pytest.approx(0.02 * 2 / 16) and config["epochs"] == 3
    with open(run / "metrics.csv") as f:
        columns = next(csv.reader(f))
    assert columns[:5] == ["epoch", "seconds", "train_seconds", "lr", "loss"] and "loss_classifier" in columns
    assert columns[-5:] == ["map50_95", "map50", "precision", "recall", "f1"]
    for name in ("last.pt", "best.pt"):
        data = torch.load(run / "weights" / name, weights_only=True)
        assert data["categories"] == version.categories and data["config"]["model"] == config["model"]
    for name in ("ground_truth.json", "predictions.json", "metrics.json"):
        assert (run / "eval" / name).exists()
    assert set(re.findall(r"<img src='([^']+)'", (run / "report.html").read_text())) == REPORT_PNGS
    assert all((run / png).exists() for png in REPORT_PNGS)


def untrained_run(folder: Path, version) -> Path:
    """A run directory around an untrained Lite0 (``build_model`` + ``save_checkpoint``, as ``train`` saves it):
    for tests that need *a* parent checkpoint, not a trained one."""
    from tlsync.trainer import build_model, save_checkpoint

    torch.manual_seed(1)  # not train's seed 0: a child's fresh head row must not equal this one's by construction
    model = build_model(MODEL[1], len(version.categories), MODEL[3], 64)
    config = {"model": MODEL[1], "img_size": 64, "weights": MODEL[3], "dataset": version.ref,
              "categories": version.categories}
    save_checkpoint(folder / "weights" / "last.pt", model, version.categories, config, epoch=1)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_continuing_with_other_classes_keeps_shared_head_rows(store, run_cli) -> None:
    first = untrained_run(Path("runs/v1").absolute(), shapes(store, "v1", 6))  # which rows move is what counts
    shapes(store, "v2", 6, rename={"triangle": "hexagon"})
    # A learning rate of ~0 isolates the transfer itself from what training then does.
    result, second = train(run_cli, "--dataset", "v2", "--weights", str(first), *SMALL, "--epochs", "1",
                           "--lr", "1e-12")
    assert "kept: circle, square" in result.stderr
    assert "new: hexagon" in result.stderr and "dropped: triangle" in result.stderr

    old, new = load_checkpoint(first / "weights" / "last.pt"), load_checkpoint(second / "weights" / "last.pt")
    assert new["categories"] == ["circle", "square", "hexagon"]
    assert new["config"]["model"] == "fasterrcnn_efficientnet_lite0_fpn"
    key = "roi_heads.box_predictor.cls_score.weight"  # rows: background, then the classes in order
    for name in ("circle", "square"):
        i, j = old["categories"].index(name) + 1, new["categories"].index(name) + 1
        torch.testing.assert_close(new["model"][key][j], old["model"][key][i])
    assert not torch.equal(new["model"][key][3], old["model"][key][3])  # hexagon is fresh, not triangle's row


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(store, run_cli, monkeypatch) -> None:
    """A corrupt batch in epoch 2 (NaN pixels) makes the loss NaN: stop, say so, keep epoch 1."""
    from tlsync.trainer.training import data
    from tlsync.trainer.training import fit as training

    shapes(store, "nan", 4)
    poisoned = {"on": False}
    start_epoch, getitem = data.start_epoch, data.DetectionDataset.__getitem__

    def start_epoch_poisoning_from_epoch_2(loader, epoch, seed):
        poisoned["on"] = epoch >= 1
        start_epoch(loader, epoch, seed)

    def getitem_poisoned(self, i):
        image, target = getitem(self, i)
        return (image * float("nan") if poisoned["on"] else image), target

    monkeypatch.setattr(training, "start_epoch", start_epoch_poisoning_from_epoch_2)
    monkeypatch.setattr(data.DetectionDataset, "__getitem__", getitem_poisoned)
    result = run_cli("train", "--dataset", "nan", *MODEL, *SMALL, "--epochs", "3", "--name", "nan")
    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("Error: epoch 2/3: the loss became nan at iteration 1")
    assert "runs/nan/weights/last.pt keeps epoch 1, the last good one" in message
    kept = load_checkpoint(Path("runs/nan/weights/last.pt"))
    assert kept["epoch"] == 1 and all(torch.isfinite(t).all() for t in kept["model"].values() if t.is_floating_point())


def test_unusable_data_is_refused_before_anything_is_written(store, run_cli) -> None:
    shapes(store, "nothing-to-train", 6, ratios=(0.0, 1.0, 0.0))
    result = run_cli("train", "--dataset", "nothing-to-train", *MODEL, *SMALL)
    assert result.exit_code == 1
    assert "Error: dataset nothing-to-train@1 has no items in its train split" in result.stderr

    shapes(store, "no-boxes", 6, boxes=False)
    result = run_cli("train", "--dataset", "no-boxes", *MODEL, *SMALL)
    assert result.exit_code == 1
    assert "Error: dataset no-boxes@1 has no boxes in its train split (6 images)" in result.stderr
    assert not Path("runs").exists()


def test_run_directories_are_numbered_and_never_overwritten(store, run_cli) -> None:
    from tlsync.errors import TlsyncError
    from tlsync.trainer import create_run_dir

    assert create_run_dir(Path("runs"), None, "chess") == Path("runs/chess-1")
    assert create_run_dir(Path("runs"), None, "chess") == Path("runs/chess-2")
    assert create_run_dir(Path("runs"), "mine", "chess") == Path("runs/mine")
    with pytest.raises(TlsyncError, match="runs/mine already exists; choose another --name or pass --exist-ok"):
        create_run_dir(Path("runs"), "mine", "chess")
    assert create_run_dir(Path("runs"), "mine", "chess", exist_ok=True) == Path("runs/mine")


def test_augmentation_moves_boxes_with_the_pixels(tmp_path: Path) -> None:
    """Flip, zoom and draft-mode decoding (a 400 px JPEG read at 100 px) keep each box on its object."""
    from PIL import Image

    from tlsync.format import Box, ImageRef, Item
    from tlsync.trainer.training.data import DetectionDataset, train_transforms

    path = tmp_path / "red.jpg"
    image = Image.new("RGB", (400, 300), (128, 128, 128))
    image.paste((220, 20, 20), (250, 60, 350, 140))
    image.save(path, quality=95)
    item = Item("red", ImageRef(str(path), width=400, height=300), [Box("red", 250, 60, 100, 80)])
    dataset = DetectionDataset([item], [path], ["red"], train_transforms(100), 100)

    centres = []
    for seed in range(12):
        torch.manual_seed(seed)
        picture, target = dataset[0]
        assert max(picture.shape[1:]) <= 100 and target["labels"].tolist() == [1]
        x0, y0, x1, y1 = target["boxes"][0].round().int().tolist()
        inside = picture[:, y0 + 2:y1 - 2, x0 + 2:x1 - 2].mean(dim=(1, 2))
        assert inside[0] > inside[1] + 0.3 and inside[0] > inside[2] + 0.3, (seed, inside)
        centres.append((x0 + x1) / 2 / picture.shape[2])
    assert min(centres) < 0.4 and max(centres) > 0.6, "flips move the box to the other side"


def test_an_image_damaged_after_the_pull_is_refused_and_a_class_without_boxes_is_warned_about(store, run_cli) -> None:
    """The store trusts nothing it reads (issue 22): an image whose bytes changed after the pull
    (disk damage, a hand edit) is refused naming the item and both hashes, never trained on."""
    version = shapes(store, "flawed", 4, extra="star")
    broken = next(version.items("train"))
    version.image_path(broken).write_bytes(b"not an image any more")  # e.g. disk damage after the pull

    result = run_cli("train", "--dataset", "flawed", *MODEL, *SMALL, "--epochs", "1")
    assert result.exit_code == 1
    assert "warning: 1 class(es) have no training boxes and cannot be learned: star" in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert f"item '{broken.id}': its image changed in the store after the pull" in error
    assert broken.image.sha256 in error and hashlib.sha256(b"not an image any more").hexdigest() in error
    assert not list(Path("runs").glob("flawed-*/weights/*.pt"))  # nothing was trained on it


def test_freeze_backbone_trains_the_heads_only(store, run_cli) -> None:
    from tlsync.trainer import build_model

    shapes(store, "frozen", 4)
    _, run = train(run_cli, "--dataset", "frozen", *MODEL, *SMALL, "--epochs", "1", "--freeze", "backbone")
    trained = load_checkpoint(run / "weights" / "last.pt")["model"]
    torch.manual_seed(0)  # the run's seed: the same fresh FPN as the run started with
    start = build_model("fasterrcnn_efficientnet_lite0_fpn", 3, "imagenet", 64).state_dict()
    backbone = [k for k in start if k.startswith("backbone.")]
    assert backbone and all(torch.equal(trained[k], start[k]) for k in backbone)
    assert not torch.equal(trained["roi_heads.box_predictor.cls_score.weight"],
                           start["roi_heads.box_predictor.cls_score.weight"])
