"""Training on derived data: ``tlsync train --dataset A --dataset B`` and ``--class-map`` from a parent run.

Real shared datasets (thermal: dog, person; bccd: Platelets, RBC, WBC), a Lite0 with its
ImageNet backbone at 64 px for one epoch: enough for every stage (derive, train, eval, export)
to run on real files in seconds of compute. The derived union must be a dataset like any other
downstream.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tlsync.store import Store

MODEL = ("--model", "fasterrcnn_efficientnet_lite0_fpn")
TINY = ("--img-size", "64", "--batch-size", "8", "--epochs", "1", "--rois-per-image", "32", "--workers", "0",
        "--device", "cpu", "--precise-bn-batches", "0")


@pytest.fixture
def pulled(run_cli, shared_datasets: Path):
    def pull(name: str, folder: str) -> None:
        result = run_cli("pull", "--source", "roboflow", "--path", shared_datasets / folder, "--dataset", name)
        assert result.exit_code == 0, result.stderr
    return pull


def run_dir(result) -> Path:
    return Path(re.search(r"^run: (.+)$", result.stdout, re.M).group(1))


def test_train_on_two_datasets_then_eval_and_export(run_cli, pulled, store: Store, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pulled("thermal", "thermal-dogs-people-yolo")
    pulled("bccd", "bccd-voc")
    result = run_cli("train", "--dataset", "thermal", "--dataset", "bccd", *MODEL, "--weights", "imagenet", *TINY)
    assert result.exit_code == 0, result.stderr
    assert "training on union-thermal-bccd@1 (new version), the union of thermal@1, bccd@1" in result.stderr
    run = run_dir(result)
    config = json.loads((run / "config.json").read_text())
    assert config["dataset"] == "union-thermal-bccd@1"
    assert config["categories"] == ["dog", "person", "Platelets", "RBC", "WBC"]
    union = store.open("union-thermal-bccd@1")
    assert union.info["counts"]["items"] == store.open("thermal").info["counts"]["items"] + \
        store.open("bccd").info["counts"]["items"]

    evaluated = run_cli("eval", "--run", run, "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.stderr
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert (metrics["split"], metrics["images"]) == ("test", union.info["counts"]["splits"]["test"]["items"])
    assert set(metrics["per_class"]) == {"dog", "person", "Platelets", "RBC", "WBC"}  # both datasets' classes scored

    exported = run_cli("export-model", "--run", run, "--check-images", "4")
    assert exported.exit_code == 0, exported.stderr
    assert (run / "export" / "model.onnx").stat().st_size > 0

    again = run_cli("train", "--dataset", "thermal", "--dataset", "bccd", *MODEL, "--weights", "imagenet", *TINY,
                    "--epochs", "1", "--name", "again")
    assert again.exit_code == 0, again.stderr
    assert "union-thermal-bccd@1 (unchanged)" in again.stderr and store.versions("union-thermal-bccd") == [1]


def test_classes_spelled_alike_stop_the_run_with_the_map(run_cli, pulled, store: Store, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pulled("bccd", "bccd-voc")
    assert run_cli("datasets", "derive", "bccd-lower", "--from", "bccd", "--class-map", "RBC=rbc").exit_code == 0
    result = run_cli("train", "--dataset", "bccd", "--dataset", "bccd-lower", *MODEL, "--weights", "imagenet", *TINY)
    assert result.exit_code == 1
    assert "classes 'rbc' and 'RBC' differ only in case or spacing" in result.stderr
    assert "--class-map 'rbc=RBC'" in result.stderr
    assert not Path("runs").exists() and "union-bccd-bccd-lower" not in store.dataset_names()

    fixed = run_cli("train", "--dataset", "bccd", "--dataset", "bccd-lower", "--class-map", "rbc=RBC", *MODEL,
                    "--weights", "imagenet", *TINY, "--epochs", "1")
    assert fixed.exit_code == 0, fixed.stderr
    assert json.loads((run_dir(fixed) / "config.json").read_text())["categories"] == ["Platelets", "RBC", "WBC"]


def head_rows(run: Path) -> tuple[list[str], torch.Tensor]:
    checkpoint = torch.load(run / "weights" / "last.pt", weights_only=True)
    return checkpoint["categories"], checkpoint["model"]["roi_heads.box_predictor.cls_score.weight"]


def untrained_parent(folder: Path, version) -> Path:
    """A run directory around an untrained Lite0 (``build_model`` + ``save_checkpoint``, as ``train`` saves it):
    which parent rows seed which child rows is under test, not what the parent learned."""
    from tlsync.trainer import build_model, save_checkpoint

    torch.manual_seed(1)  # not train's seed 0: a child's fresh head row must not equal this one's by construction
    model = build_model(MODEL[1], len(version.categories), "imagenet", 64)
    config = {"model": MODEL[1], "img_size": 64, "weights": "imagenet", "dataset": version.ref,
              "categories": version.categories}
    save_checkpoint(folder / "weights" / "last.pt", model, version.categories, config, epoch=1)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_class_map_seeds_a_child_class_from_a_parent_class(run_cli, pulled, store: Store, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    pulled("bccd", "bccd-voc")
    untrained_parent(tmp_path / "runs" / "parent", store.open("bccd"))
    assert run_cli("datasets", "derive", "cells", "--from", "bccd", "--class-map", "RBC=red,WBC=white").exit_code == 0

    typo = run_cli("train", "--dataset", "cells", "--weights", "runs/parent", "--class-map", "rbc=red", *TINY)
    assert typo.exit_code == 1 and "the parent run has no class 'rbc'" in typo.stderr

    # a learning rate of ~0: the child's last.pt still holds the rows it started from
    child = run_cli("train", "--dataset", "cells", "--weights", "runs/parent", "--class-map", "RBC=red,WBC=white",
                    *TINY, "--lr", "1e-12", "--name", "child")
    assert child.exit_code == 0, child.stderr
    assert "mapped: RBC -> red, WBC -> white" in child.stderr and "kept: Platelets" in child.stderr
    parent_classes, parent_rows = head_rows(Path("runs/parent"))
    child_classes, child_rows = head_rows(Path("runs/child"))
    assert child_classes == ["Platelets", "red", "white"]
    for old, new in (("RBC", "red"), ("WBC", "white"), ("Platelets", "Platelets")):
        torch.testing.assert_close(child_rows[child_classes.index(new) + 1],
                                   parent_rows[parent_classes.index(old) + 1], atol=1e-6, rtol=0)
