"""``tlsync eval``, ``predict`` and ``compare`` through the CLI, on a tiny run made here.

The run is a small untrained detector saved with the trainer's own ``save_checkpoint`` next to
a config and a metrics.csv, exactly the files a training run leaves; what it predicts is noise,
which is all these tests need: they check what gets written and said, not accuracy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

MODEL = "fasterrcnn_mobilenet_v3_large_320_fpn"
SIZE = 96
REPORT_PNGS = {"training.png", "pr_curve.png", "per_class_ap.png", "confusion_matrix.png", "val_images.png"}


@pytest.fixture
def shapes(run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A 16-image synthetic dataset with items in every split (10 train, 5 val, 1 test).

    The current dir is a temp dir."""
    from tlsync.store import Store

    monkeypatch.chdir(tmp_path)
    result = run_cli("pull", "--source", "synthetic", "--dataset", "shapes", "--items", 16, "--size", SIZE,
                     "--split-ratios", "0.4,0.3,0.3")
    assert result.exit_code == 0, result.stderr
    return Store().open("shapes")


def make_run(folder: Path, version, categories: list[str] | None = None, weights: str = "none",
             seconds: tuple[float, ...] = (3.0, 2.0), maps: tuple[float, ...] = (0.1, 0.3)) -> Path:
    """The files a finished training run has, around an untrained model."""
    import torch

    from tlsync.trainer import build_model, save_checkpoint

    categories = categories or version.categories
    config = {"model": MODEL, "img_size": SIZE, "weights": weights, "epochs": len(seconds), "dataset": version.ref,
              "content_hash": version.content_hash, "categories": categories, "device": "cpu"}
    torch.manual_seed(0)
    model = build_model(MODEL, len(categories), "none", SIZE)
    save_checkpoint(folder / "weights" / "best.pt", model, categories, config, epoch=len(seconds))
    (folder / "config.json").write_text(json.dumps(config))
    rows = [f"{e},{s},0.01,{1 / e},{0.6 / e},{0.4 / e},{m},{m * 1.5},0.5,0.5,0.5"
            for e, (s, m) in enumerate(zip(seconds, maps, strict=True), 1)]
    (folder / "metrics.csv").write_text(
        "epoch,seconds,lr,loss,loss_classifier,loss_box_reg,map50_95,map50,precision,recall,f1\n"
        + "\n".join(rows) + "\n")
    return folder


def image_refs(report: Path) -> set[str]:
    return set(re.findall(r"<img src='([^']+)'", report.read_text()))


def test_eval_writes_coco_files_metrics_and_a_report_whose_images_exist(run_cli, shapes) -> None:
    run = make_run(Path("runs/tiny"), shapes)
    result = run_cli("eval", "--run", run, "--conf", "0.5", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    for expected in ("mAP50-95", "mAP50", "per class (P, R, F1 at conf 0.50)", "mAP50-95", "circle", "at conf 0.50",
                     "(the confidence with the best F1)"):
        assert expected in result.stdout

    # The default: the run's own dataset, on test because it has test items, into RUN/eval/.
    test_items = list(shapes.items("test"))
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert (metrics["dataset"], metrics["split"], metrics["images"]) == ("shapes@1", "test", len(test_items))
    assert metrics["at_conf"]["conf"] == 0.5
    assert set(metrics["per_class"]) == {"circle", "square", "triangle"}
    assert sum(c["boxes"] for c in metrics["per_class"].values()) == metrics["ground_truth_boxes"]
    assert sum(c["tp"] for c in metrics["per_class"].values()) == metrics["at_conf"]["tp"], "rows add up to 'all'"
    circle_row = next(line.split() for line in result.stdout.splitlines() if line.split()[:1] == ["circle"])
    assert circle_row[1] == str(metrics["per_class"]["circle"]["boxes"])
    gt = json.loads((run / "eval" / "ground_truth.json").read_text())
    assert sorted(i["item_id"] for i in gt["images"]) == sorted(i.id for i in test_items)
    assert all(Path(i["file_name"]).exists() for i in gt["images"])
    predictions = json.loads((run / "eval" / "predictions.json").read_text())
    assert isinstance(predictions, list) and len(predictions) == metrics["predicted_boxes"]

    report = run / "report.html"
    assert report.exists() and f"report: {report}" in result.stdout
    refs = image_refs(report)
    assert refs == REPORT_PNGS
    assert "Per class, P/R/F1 at conf 0.50" in report.read_text()
    assert all((run / ref).stat().st_size > 0 for ref in refs)


def test_eval_on_other_data_goes_beside_the_default_and_scores_unknown_classes(run_cli, shapes) -> None:
    # A model that knows two of the three classes, evaluated on val explicitly.
    run = make_run(Path("runs/two"), shapes, categories=["circle", "square"])
    result = run_cli("eval", "--run", run, "--dataset", "shapes@1", "--split", "val", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "classes the model was not trained on (scored as AP 0): triangle" in result.stdout
    metrics = json.loads((run / "eval" / "shapes@1-val" / "metrics.json").read_text())
    assert metrics["split"] == "val" and metrics["unknown_classes"] == ["triangle"]
    assert set(metrics["per_class_ap"]) == {"circle", "square", "triangle"}
    assert not (run / "eval" / "metrics.json").exists()
    html = (run / "report.html").read_text()
    assert "No evaluation yet" in html and "Other evaluations" in html and "shapes@1 val" in html
    assert all((run / ref).exists() for ref in image_refs(run / "report.html"))


def test_predict_on_files_folders_and_globs_writes_coco_results_and_drawn_images(run_cli, shapes, tmp_path) -> None:
    from PIL import Image

    run = make_run(Path("runs/tiny"), shapes)
    photos = tmp_path / "photos"
    (photos / "more").mkdir(parents=True)
    items = list(shapes.items())
    for i, item in enumerate(items[:4]):
        Image.open(shapes.image_path(item)).save(photos / ("more" if i % 2 else "") / f"img{i}.png")
    Image.open(shapes.image_path(items[4])).convert("RGB").save(tmp_path / "single.jpg")
    (photos / "notes.png").write_text("not an image")

    result = run_cli("predict", "--run", run, tmp_path / "single.jpg", photos / "more", f"{photos}/*.png",
                     "--conf", "0.1", "--out", tmp_path / "preds", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert "notes.png" in result.stderr  # skipped, and said so
    assert result.stdout.startswith("5 images, ")

    out = tmp_path / "preds"
    images = json.loads((out / "images.json").read_text())
    assert len(images["images"]) == 5
    assert [c["name"] for c in images["categories"]] == shapes.categories
    by_id = {i["id"]: i for i in images["images"]}
    for r in json.loads((out / "predictions.json").read_text()):
        image = by_id[r["image_id"]]
        x, y, w, h = r["bbox"]
        assert r["score"] >= 0.1 and 1 <= r["category_id"] <= 3
        assert 0 <= x and 0 <= y and x + w <= image["width"] + 1e-6 and y + h <= image["height"] + 1e-6
    for image in images["images"]:
        with Image.open(out / image["drawn"]) as drawn:
            assert drawn.size == (image["width"], image["height"])


def test_compare_prints_the_table_and_writes_the_curves(run_cli, shapes, tmp_path) -> None:
    make_run(Path("runs/transfer"), shapes, weights="imagenet", seconds=(4.0, 4.0, 4.0), maps=(0.3, 0.5, 0.4))
    make_run(Path("runs/scratch"), shapes, weights="none", seconds=(3.0, 3.0), maps=(0.05, 0.1))
    result = run_cli("compare", "runs/transfer", "runs/scratch", "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.stderr
    header, transfer, scratch = result.stdout.splitlines()[:3]
    assert header.split()[:4] == ["run", "weights", "dataset", "epochs"]
    # best epoch 2 of 3: 8s of 12s; no eval/ yet, so the numbers are the best metrics.csv row
    assert transfer.split()[:6] == ["transfer", "imagenet", "shapes@1", "3/3", "12.0s", "8.0s"]
    assert "0.500" in transfer and "val, epoch 2 (metrics.csv)" in transfer
    assert scratch.split()[:6] == ["scratch", "none", "shapes@1", "2/2", "6.0s", "6.0s"]
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0


@pytest.mark.parametrize("args, message", [
    (["eval", "--run", "runs/nope"], "run 'runs/nope' not found"),
    (["predict", "--run", "runs/nope", "x.jpg"], "run 'runs/nope' not found"),
    (["compare", "runs/nope"], "run 'runs/nope' not found"),
])
def test_missing_run_is_one_clear_line(run_cli, tmp_path, monkeypatch, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli(*args)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {message}"


def test_empty_inputs_are_refused_clearly(run_cli, shapes, tmp_path) -> None:
    run = make_run(Path("runs/tiny"), shapes)
    no_sources = run_cli("predict", "--run", run)
    assert no_sources.exit_code == 2 and "Missing argument 'SOURCES...'" in no_sources.stderr

    (tmp_path / "empty").mkdir()
    empty = run_cli("predict", "--run", run, tmp_path / "empty", "--device", "cpu")
    assert empty.exit_code == 1 and "no images in this folder" in empty.stderr

    nothing = run_cli("predict", "--run", run, f"{tmp_path}/*.jpg", "--device", "cpu")
    assert nothing.exit_code == 1 and "no image matches it as a glob" in nothing.stderr

    Path("runs/unfinished").mkdir()
    Path("runs/unfinished/config.json").write_text("{}")
    unfinished = run_cli("compare", "runs/tiny", "runs/unfinished")
    assert unfinished.exit_code == 1 and "has no epochs in metrics.csv yet" in unfinished.stderr

    for result in (empty, nothing, unfinished):
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_each_row_says_which_model_and_split_it_scored(run_cli, shapes, tmp_path) -> None:
    """The report's other evaluations name the file each scored; compare says when rows are on different splits."""
    run = make_run(Path("runs/a"), shapes)
    make_run(Path("runs/b"), shapes)
    assert run_cli("eval", "--run", run, "--device", "cpu").exit_code == 0  # test: the dataset has test items
    on_val = run_cli("eval", "--run", run, "--split", "val", "--device", "cpu")
    assert on_val.exit_code == 0, on_val.stderr
    assert json.loads((run / "eval" / "shapes@1-val" / "metrics.json").read_text())["model"] == "weights/best.pt"
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>", (run / "report.html").read_text())
    assert ("weights/best.pt", "shapes@1 val") in rows

    compared = run_cli("compare", "runs/a", "runs/b", "--out", tmp_path / "cmp")
    assert compared.exit_code == 0, compared.stderr
    assert compared.stdout.splitlines()[-2] == (
        "note: these rows were scored on different splits (test: a; val: b), so their numbers do not compare; "
        "score them on one split (tlsync eval --run RUN --split SPLIT)")
    same = run_cli("compare", "runs/b", "runs/b", "--out", tmp_path / "same")
    assert "note:" not in same.stdout
