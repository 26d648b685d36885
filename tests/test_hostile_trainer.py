"""Hostile input that reaches the trainer: class names matplotlib would parse, unreadable photos.

The run is the tiny untrained one ``test_eval_cli`` builds (``make_run``): these tests check
that the commands finish and say what they skipped, not what the model predicts.
"""

from __future__ import annotations

import json
from pathlib import Path

from test_eval_cli import make_run
from test_hostile_local import bomb_png, truncated_jpeg

from tlsync.store import Store
from tlsync.testing import write_image

MATHTEXT = r"$\undefinedmacro$"


def mathtext_dataset(folder: Path, run_cli) -> object:
    folder.mkdir(parents=True)
    images, annotations = [], []
    for i in range(1, 5):
        write_image(folder / f"{i}.png", width=96, height=96, seed=i)
        images.append({"id": i, "file_name": f"{i}.png", "width": 96, "height": 96, "split": "test"})
        annotations.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [10, 10, 40, 40]})
    categories = [{"id": 1, "name": MATHTEXT}, {"id": 2, "name": "_hidden $5"}]
    (folder / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories}))
    result = run_cli("pull", "--source", "coco", "--path", folder, "--dataset", "math")
    assert result.exit_code == 0, result.stderr
    return Store().open("math")


def test_a_mathtext_class_name_does_not_break_the_report(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    version = mathtext_dataset(tmp_path / "export", run_cli)
    run = make_run(Path("runs/math"), version)
    result = run_cli("eval", "--run", run, "--device", "cpu", "--conf", "0.01")
    assert result.exit_code == 0, result.stderr
    assert MATHTEXT in result.stdout  # the per-class table shows the name as it is
    report = (run / "report.html").read_text()
    assert "&lt;" not in MATHTEXT and MATHTEXT in report
    for png in ("pr_curve.png", "per_class_ap.png", "confusion_matrix.png"):
        assert (run / png).stat().st_size > 1000, png


def test_predict_on_a_folder_skips_and_names_bombs_and_truncated_files(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    version = mathtext_dataset(tmp_path / "export", run_cli)
    run = make_run(Path("runs/math"), version)
    photos = tmp_path / "photos"
    write_image(photos / "good.png", width=96, height=96)
    bomb_png(photos / "bomb.png")
    truncated_jpeg(photos / "cut.jpg")
    result = run_cli("predict", "--run", run, photos, "--out", tmp_path / "preds", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("1 images")
    assert f"skipped {photos / 'bomb.png'}: not a readable image (declares 900 MP" in result.stderr
    assert f"skipped {photos / 'cut.jpg'}: not a readable image" in result.stderr
    images = json.loads((tmp_path / "preds" / "images.json").read_text())["images"]
    assert [Path(i["file_name"]).name for i in images] == ["good.png"]


def test_predict_skips_a_file_whose_pixels_do_not_decode(run_cli, tmp_path, monkeypatch):
    """A file whose structure looks whole (so the up-front check passes) but whose pixels fail to decode."""
    from tlsync.errors import TlsyncError
    from tlsync.trainer.evaluation import predict

    monkeypatch.chdir(tmp_path)
    run = make_run(Path("runs/math"), mathtext_dataset(tmp_path / "export", run_cli))
    photos = tmp_path / "photos"
    for name in ("a.png", "cursed.png", "b.png"):
        write_image(photos / name, width=96, height=96)
    decode = predict.load_image

    def load_image(path: Path):
        if path.name == "cursed.png":
            raise TlsyncError(f"{path}: cannot decode image (OSError)")
        return decode(path)

    monkeypatch.setattr(predict, "load_image", load_image)
    result = run_cli("predict", "--run", run, photos, "--out", tmp_path / "preds", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("2 images")
    assert f"skipped {photos / 'cursed.png'}: {photos / 'cursed.png'}: cannot decode image" in result.stderr
    images = json.loads((tmp_path / "preds" / "images.json").read_text())["images"]
    assert [Path(i["file_name"]).name for i in images] == ["a.png", "b.png"]
    monkeypatch.setattr(predict, "load_image", lambda path: load_image(photos / "cursed.png"))
    again = run_cli("predict", "--run", run, photos, "--out", tmp_path / "preds2", "--device", "cpu")
    assert again.exit_code == 1 and "none of the 3 files decodes as an image" in again.stderr
