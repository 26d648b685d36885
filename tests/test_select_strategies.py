"""The selection strategies on a small synthetic pool, scored by a stand-in detector.

The stand-in sees colour: it finds the "red" class it was trained on with confidence 0.99,
and on images of a "blue" class it never saw it hesitates (scores around 0.5), which is
exactly the situation uncertainty sampling exists for. Its backbone features are the
images' mean colours, so diversity has a geometry that can be reasoned about.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from tlsync import plugins
from tlsync.pull import pull
from tlsync.trainer.select.pool import build_pool
from tlsync.trainer.select.run import choose, clamp_budget, score_pool
from tlsync.trainer.select.strategies import STRATEGIES, binary_entropy, k_center_greedy

CATEGORIES = ["red"]


class ColourDetector(nn.Module):
    """Red images: one box at 0.99. Blue images: two boxes near 0.5. Anything else: a box at 0.02."""

    def __init__(self) -> None:
        super().__init__()
        self.transform = GeneralizedRCNNTransform(64, 64, [0.0] * 3, [1.0] * 3)
        self.backbone = nn.AvgPool2d(4)  # features: the image's colours, pooled

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        batch, _ = self.transform(images)
        self.backbone(batch.tensors)
        outputs = []
        for image in images:
            r, g, b = image.mean(dim=(1, 2)).tolist()
            scores = [0.99] if r > 0.6 and b < 0.3 else [0.52, 0.45] if b > 0.6 and r < 0.3 else [0.02]
            h, w = image.shape[-2:]
            outputs.append({"boxes": torch.tensor([[1.0, 1.0, w / 2, h / 2]] * len(scores)),
                            "labels": torch.ones(len(scores), dtype=torch.int64), "scores": torch.tensor(scores)})
        return outputs


def solid(path: Path, rgb: tuple[int, int, int], mark: int) -> Path:
    image = Image.new("RGB", (48, 40), rgb)
    image.putpixel((mark % 48, mark // 48), (128, 128, 128))  # distinct pixels: distinct sha256
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


@pytest.fixture
def pool(store, tmp_path: Path):
    """Labelled: 4 red images. Pool: 6 red (one a copy of a labelled image), 4 blue, 4 grey-ish, one duplicate."""
    labelled, folder = tmp_path / "labelled", tmp_path / "pool"
    for i in range(4):
        solid(labelled / f"red-{i}.png", (230, 20, 20), i)
    folder.mkdir()
    shutil.copy(labelled / "red-0.png", folder / "red-known.png")
    for i in range(5):
        solid(folder / f"red-{i}.png", (220, 30 + i * 10, 20), 10 + i)
    for i in range(4):
        solid(folder / f"blue-{i}.png", (20, 40 + i * 40, 230), 20 + i)
    for i in range(4):
        solid(folder / f"grey-{i}.png", (90 + i * 30, 100, 110), 30 + i)
    shutil.copy(folder / "blue-0.png", folder / "blue-0-again.png")
    images = plugins.get_source("images")
    pull(store, images, {"path": labelled}, "labelled")
    pull(store, images, {"path": folder}, "pool")
    return build_pool(store.open("pool"), store.open("labelled"), [])


def select_with(pool, strategy: str, budget: int, seed: int = 0) -> list[str]:
    scores = score_pool(ColourDetector().eval(), pool, pool.version.store.open("labelled"), CATEGORIES,
                        torch.device("cpu"), 64, strategy)
    return [item.id for item in choose(scores, strategy, budget, seed, 0.25).items]


def test_the_pool_leaves_out_labelled_images_and_counts_duplicates_once(pool) -> None:
    ids = {item.id for item in pool.items}
    assert "red-known.png" not in ids  # the same pixels as a labelled image, under another name
    assert len([i for i in ids if i.startswith("blue-0")]) == 1
    assert (pool.pool_items, len(pool.items), pool.labelled, pool.duplicates) == (15, 13, 1, 1)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_each_strategy_picks_the_budget_of_distinct_unlabelled_images_reproducibly(pool, strategy: str) -> None:
    first = select_with(pool, strategy, 5)
    assert len(first) == len(set(first)) == 5
    assert set(first) <= {item.id for item in pool.items}
    assert select_with(pool, strategy, 5) == first


def test_random_differs_across_seeds(pool) -> None:
    draws = {tuple(select_with(pool, "random", 5, seed)) for seed in range(4)}
    assert len(draws) > 1


def test_uncertainty_ranks_an_unseen_class_above_what_the_model_fits(pool) -> None:
    picked = select_with(pool, "uncertainty", 4)
    assert all(name.startswith("blue-") for name in picked), picked


def test_diversity_covers_colours_the_labelled_set_lacks(pool) -> None:
    picked = select_with(pool, "diversity", 3)
    # Everything labelled is red, so the farthest images are never red.
    assert not any(name.startswith("red-") for name in picked), picked


def test_hybrid_chooses_only_among_the_most_uncertain(pool) -> None:
    # budget 1: the 4 most uncertain candidates are the 4 blue images.
    assert select_with(pool, "hybrid", 1)[0].startswith("blue-")
    # budget 2: 8 candidates (4 blue, then 4 grey); the red images the model fits are never among them.
    picked = select_with(pool, "hybrid", 2)
    assert not any(name.startswith("red-") for name in picked) and len(set(picked)) == 2


def test_k_center_greedy_takes_the_farthest_point_first() -> None:
    import numpy as np

    features = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 0.0], [2.5, 0.0]])
    picks = k_center_greedy(features, np.array([[0.0, 0.0]]), 2)
    assert [p.index for p in picks] == [2, 3]


def test_entropy_is_highest_when_the_model_cannot_decide() -> None:
    import numpy as np

    h = binary_entropy(np.array([0.01, 0.5, 0.99]))
    assert h[1] == pytest.approx(1.0) and h[0] < 0.1 and h[2] < 0.1


def test_budget_is_clamped_with_a_note_and_an_empty_pool_is_an_error() -> None:
    from tlsync.errors import TlsyncError

    assert clamp_budget(50, 7) == (7, ["--budget 50 is larger than the pool's 7 candidates; selecting all 7"])
    with pytest.raises(TlsyncError, match="no candidates left after exclusions"):
        clamp_budget(5, 0)


def test_the_images_source_keeps_the_source_contract(tmp_path: Path) -> None:
    from tlsync.connectors.images import ImagesSource
    from tlsync.testing import check_source

    solid(tmp_path / "a" / "one.png", (10, 20, 30), 1)
    solid(tmp_path / "a" / "deeper" / "two.jpg", (40, 50, 60), 2)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / ".hidden.png").write_bytes((tmp_path / "a" / "one.png").read_bytes())
    checked = check_source(ImagesSource(), path=tmp_path / "a")
    assert [item.id for item in checked.items] == ["deeper/two.jpg", "one.png"]
    assert all(not item.annotations for item in checked.items)


def test_a_target_that_only_pushes_is_refused_before_any_work(tmp_path: Path) -> None:
    from tlsync.hookspecs import hookimpl
    from tlsync.targets import Target
    from tlsync.testing import isolated_plugins, run_cli

    class PushOnly(Target):
        name = "pushonly"

        def push(self, predictions, run, **options):
            return {}

    class Plugin:
        __name__ = "pushonly-plugin"

        @hookimpl
        def tlsync_register_targets(self, register):
            register(PushOnly())

    with isolated_plugins(Plugin()):
        result = run_cli("select", "--run", str(tmp_path / "no-run"), "--pool", "x", "--budget", "3",
                         "--target", "pushonly")
    assert result.exit_code == 1
    assert "target 'pushonly' cannot receive a selection (it only supports tlsync push)" in result.stderr


def test_a_symlink_out_of_the_pool_folder_is_refused(store, tmp_path: Path) -> None:
    from tlsync.errors import TlsyncError

    secret = solid(tmp_path / "elsewhere" / "private.png", (1, 2, 3), 0)
    solid(tmp_path / "pool" / "ok.png", (4, 5, 6), 1)
    (tmp_path / "pool" / "link.png").symlink_to(secret)
    with pytest.raises(TlsyncError, match="lies outside the export folder"):
        pull(store, plugins.get_source("images"), {"path": tmp_path / "pool"}, "pool")
    assert store.versions("pool") == []
