"""``tlsync export-model``: exported files predict what the checkpoint predicts, and say so honestly.

One 6-image synthetic dataset (4 train, 2 val) and one EfficientNet-Lite0 run (ImageNet
backbone, fresh head) are made once for the module. The checkpoints are untrained: what the
check needs is a model whose boxes and scores vary, and an exported graph that computes the
same function; accuracy is the benchmark's business (benchmarks/export_speed.py trains).
Images are 128 px to keep every export and parity check short.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

pytest.importorskip("onnxruntime")

SIZE = 128
LITE0 = "fasterrcnn_efficientnet_lite0_fpn"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory):
    """(folder, store home, Lite0 run): the dataset and the run every test here shares."""
    from click.testing import CliRunner

    from tlsync import cli

    root = tmp_path_factory.mktemp("export")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLSYNC_HOME", str(root / "home"))
        mp.setenv("TLSYNC_LOAD_PLUGINS", "")
        mp.setenv("TLSYNC_CONFIG", str(root / "no-config.json"))
        mp.chdir(root)
        result = CliRunner().invoke(cli.cli, ["pull", "--source", "synthetic", "--dataset", "shapes", "--items", "6",
                                              "--size", str(SIZE), "--split-ratios", "0.5,0.5,0"])
        assert result.exit_code == 0, result.output
        run = untrained_run(root / "runs" / "lite0", LITE0, weights="imagenet", checkpoint="best.pt")
    return root, root / "home", run


@pytest.fixture
def here(workspace, monkeypatch: pytest.MonkeyPatch) -> Path:
    root, home, _ = workspace
    monkeypatch.setenv("TLSYNC_HOME", str(home))
    monkeypatch.chdir(root)
    return root


def untrained_run(folder: Path, model_name: str, spread_scores: bool = False, weights: str = "none",
                  checkpoint: str = "last.pt", bn_statistics: bool | None = None) -> Path:
    """A run directory around an untrained model.

    An untrained head scores every anchor (nearly) alike: RetinaNet's prior puts all at 0.01, below
    the threshold, and SSDLite's at ~1/classes. Worse, with the default batch-norm statistics
    (mean 0, variance 1) an untrained SSDLite backbone's features vanish (~1e-13 at 128 px), so each
    of its scores depends on the anchor's shape alone: 36 distinct scores among 522 candidates per
    class, and which of a tie top-k and NMS keep is arbitrary. ``spread_scores`` makes the scores
    distinct and image-dependent, as training would: each anchor's class logits get a distinct bias
    (RetinaNet's background column kept off, as training does), and the batch-norm statistics are
    those of the train images (what precise BN gives a trained run; ``bn_statistics`` False skips that).
    """
    import torch

    from tlsync.store import Store
    from tlsync.trainer import build_model, save_checkpoint

    version = Store().open("shapes")
    torch.manual_seed(0)
    model = build_model(model_name, len(version.categories), weights, SIZE)
    if spread_scores:
        with torch.no_grad():
            for layer, (anchors, _) in model.tlsync_class_layers.items():
                bias = model.get_submodule(layer).bias
                bias.normal_(-2.0, 1.5)
                if model_name.startswith("retinanet"):
                    bias.view(anchors, -1)[:, 0] = -20.0
    if spread_scores if bn_statistics is None else bn_statistics:
        train_batchnorm_statistics(model, version)
    config = {"model": model_name, "img_size": SIZE, "weights": weights, "dataset": version.ref,
              "categories": version.categories}
    save_checkpoint(folder / "weights" / checkpoint, model, version.categories, config, epoch=1)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def train_batchnorm_statistics(model, version) -> None:
    """Batch-norm running statistics set to the plain mean over the train images, in one batch."""
    import torch

    from tlsync.trainer.evaluation.evaluate import split_items
    from tlsync.trainer.evaluation.predict import image_tensor, load_image

    model.eval()
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative mean, not a moving average
        layer.train()
    with torch.no_grad():
        model([image_tensor(load_image(version.image_path(item))) for item in split_items(version, "train")])
    model.eval()


def export(run_cli, run: Path, *args: object):
    return run_cli("export-model", "--run", run, *args)


def exported_file(run_cli, run: Path, fmt: str = "onnx") -> Path:
    """The run's export in ``fmt`` (made by an earlier test, or now when this test runs alone)."""
    path = run / "export" / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
    if not path.exists():
        assert export(run_cli, run, "--format", fmt, "--check-images", 1).exit_code == 0
    return path


def sidecar(run: Path) -> dict:
    return json.loads((run / "export" / "model.json").read_text())


def test_lite0_exports_to_both_formats_verified_with_a_full_model_json(here, workspace, run_cli) -> None:
    run = workspace[2]
    for fmt, name in (("onnx", "model.onnx"), ("torchscript", "model.torchscript.pt")):
        result = export(run_cli, run, "--format", fmt, "--exist-ok")
        assert result.exit_code == 0, result.stderr
        assert re.search(rf"{re.escape(name)}: verified on 2 val images of shapes@1: mAP50-95 [\d.]+ -> [\d.]+, "
                         r"(\d+)/\1 boxes match", result.stdout), result.stdout
    meta = sidecar(run)
    assert meta["classes"] == ["__background__", "circle", "square", "triangle"]
    assert meta["normalisation"]["formula"].startswith("(pixel - 127) / 128")
    assert meta["normalisation"]["mean"] == pytest.approx([127 / 255] * 3)
    assert (meta["dataset"], meta["input"]["layout"], meta["input"]["range"]) == ("shapes@1", "CHW", [0.0, 1.0])
    assert (meta["score_threshold"], meta["detections_per_image"]) == (0.05, 100)
    assert {"tlsync", "torch", "torchvision", "onnx", "onnxruntime"} <= set(meta["versions"])
    import hashlib

    assert meta["checkpoint_sha256"] == hashlib.sha256((run / "weights" / meta["checkpoint"]).read_bytes()).hexdigest()
    for name in ("model.onnx", "model.torchscript.pt"):
        entry = meta["files"][name]
        parity = entry["parity"]
        assert entry["verified"] is True, entry["why"]
        assert parity["boxes"] > 0 and parity["matched_share"] >= 0.99
        assert abs(parity["map50_95_exported"] - parity["map50_95_original"]) <= 0.005
        # Limits are measured: other aspect ratios and sizes than the one traced still match.
        assert entry["limits"]["batch"] == 1 and entry["limits"]["any_shape"], entry["limits"]
        assert [96, 128] in [s["shape"] for s in entry["limits"]["input_shapes_ok"]]

    again = export(run_cli, run, "--format", "onnx")
    assert again.exit_code == 1 and "model.onnx already exists; pass --exist-ok" in again.stderr


def predictions(folder: Path) -> list[dict]:
    return sorted(json.loads((folder / "predictions.json").read_text()), key=lambda p: (p["image_id"], -p["score"]))


def assert_same_predictions(got: list[dict], reference: list[dict]) -> None:
    """Every box has its twin (same image and class, score within 1e-4, corners within 0.05 px).

    Matched one to one rather than by sort order: two boxes of one class whose scores differ
    by less than the runtimes' float noise may come out in either order.
    """
    left = list(reference)
    assert len(got) == len(left)
    for a in got:
        twin = next((b for b in left if (b["image_id"], b["category_id"]) == (a["image_id"], a["category_id"])
                     and a["score"] == pytest.approx(b["score"], abs=1e-4)
                     and a["bbox"] == pytest.approx(b["bbox"], abs=0.05)), None)
        assert twin is not None, f"no twin for {a}"
        left.remove(twin)


def test_predict_and_eval_with_model_equal_the_run(here, workspace, run_cli) -> None:
    run = workspace[2]
    for fmt in ("onnx", "torchscript"):
        exported_file(run_cli, run, fmt)
    images = str(here / "home" / "images")  # every image of the dataset, in sub-folders
    by_run = run_cli("predict", "--run", run, images, "--conf", "0.05", "--out", "preds-run", "--device", "cpu")
    assert by_run.exit_code == 0, by_run.stderr
    reference = predictions(here / "preds-run")
    assert reference, "the run predicts boxes at conf 0.05, so there is something to compare"
    for name in ("model.onnx", "model.torchscript.pt"):
        out = f"preds-{name}"
        result = run_cli("predict", "--model", run / "export" / name, images, "--conf", "0.05", "--out", out)
        assert result.exit_code == 0, result.stderr
        assert result.stdout.splitlines()[0] == by_run.stdout.splitlines()[0]  # same images, boxes, per-class counts
        assert_same_predictions(predictions(here / out), reference)
        assert json.loads((here / out / "images.json").read_text()) == json.loads(
            (here / "preds-run" / "images.json").read_text())

    assert run_cli("eval", "--run", run, "--split", "val", "--device", "cpu").exit_code == 0
    original = json.loads((run / "eval" / "metrics.json").read_text())  # val is the run's default: no test split
    result = run_cli("eval", "--model", run / "export" / "model.onnx", "--split", "val")
    assert result.exit_code == 0, result.stderr
    assert "mAP50-95" in result.stdout and "(onnx, fp32)" in result.stdout
    exported = json.loads((run / "eval" / "model.onnx-shapes@1-val" / "metrics.json").read_text())
    assert exported["map50_95"] == pytest.approx(original["map50_95"], abs=0.005)
    assert (run / "eval" / "model.onnx-shapes@1-val" / "predictions.json").exists()


def test_int8_is_smaller_and_reports_its_map_cost(here, workspace, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    run = workspace[2]
    result = export(run_cli, run, "--format", "onnx", "--quantize", "int8", "--calibration-images", 2, "--exist-ok",
                    "--max-map-drop", "1")
    assert result.exit_code == 0, result.stderr
    assert re.search(r"model\.int8\.onnx \([\d.]+ MB, static int8; [\d.]+x smaller\)", result.stdout)
    entry = sidecar(run)["files"]["model.int8.onnx"]
    assert entry["precision"] == "int8" and entry["quantization"]["method"] == "static"
    assert entry["bytes"] < sidecar(run)["files"]["model.onnx"]["bytes"] / 3
    cost = entry["parity"]["map50_95_original"] - entry["parity"]["map50_95_exported"]
    stated = re.fullmatch(r"int8 costs (-?[\d.]+) val mAP50-95 \(allowed 1\)", entry["why"])
    assert stated and float(stated.group(1)) == pytest.approx(cost, abs=1e-4), entry["why"]

    # --check re-runs it: a budget just above the measured cost passes...
    budget = round(max(cost, 0.0) + 0.001, 4)
    checked = run_cli("export-model", "--check", run / "export" / "model.int8.onnx", "--max-map-drop", budget)
    assert checked.exit_code == 0, checked.stderr
    assert sidecar(run)["files"]["model.int8.onnx"]["verified"] is True

    # ...and a cost over the budget (forced: an untrained model may cost nothing) fails loudly, keeping the
    # file marked unverified, so a deployment script cannot ship it by accident.
    from tlsync.trainer.deploy import run as deploy_run

    real_compare = deploy_run.compare

    def costly(*args, **kwargs):
        result = real_compare(*args, **kwargs)
        result["map50_95_exported"] = result["map50_95_original"] - budget - 0.05
        result["map50_95_diff"] = result["map50_95_exported"] - result["map50_95_original"]
        return result

    monkeypatch.setattr(deploy_run, "compare", costly)
    checked = run_cli("export-model", "--check", run / "export" / "model.int8.onnx", "--max-map-drop", budget)
    assert checked.exit_code == 1
    assert f"model.int8.onnx is UNVERIFIED (int8 costs {budget + 0.05:.4f} val mAP50-95, more than --max-map-drop" \
        in checked.stderr, checked.stderr
    assert sidecar(run)["files"]["model.int8.onnx"]["verified"] is False
    assert (run / "export" / "model.int8.onnx").exists()


def test_the_verdict_rules() -> None:
    from tlsync.trainer.deploy.parity import verdict

    exact = {"map50_95_diff": 0.0, "matched_share": 1.0, "max_score_diff": 1e-6}
    assert verdict(exact, quantized=False, max_map_drop=0.01)[0]
    assert verdict({**exact, "matched_share": 0.98}, False, 0.01) == (
        False, "only 98.0% of boxes match (IoU >= 0.99, same class; need 99%)")
    assert not verdict({**exact, "map50_95_diff": -0.006}, False, 0.01)[0]
    assert verdict({**exact, "map50_95_diff": -0.02, "matched_share": 0.5}, True, 0.01) == (
        False, "int8 costs 0.0200 val mAP50-95, more than --max-map-drop 0.01")
    assert verdict({**exact, "map50_95_diff": -0.005, "matched_share": 0.5}, True, 0.01)[0]


@pytest.mark.parametrize("model_name,fmt", [
    ("fasterrcnn_mobilenet_v3_large_320_fpn", "onnx"), ("fasterrcnn_mobilenet_v3_large_320_fpn", "torchscript"),
    ("ssdlite320_mobilenet_v3_large", "onnx"), ("ssdlite320_mobilenet_v3_large", "torchscript"),
    ("retinanet_resnet50_fpn", "onnx"), ("retinanet_resnet50_fpn", "torchscript")])
def test_untrained_architectures_export_and_match(here, run_cli, model_name: str, fmt: str) -> None:
    spread = not model_name.startswith("faster")
    run = untrained_run(here / "runs" / f"{model_name}-{fmt}", model_name, spread_scores=spread)
    result = export(run_cli, run, "--format", fmt, "--check-images", 2)
    assert result.exit_code == 0, result.stderr
    meta = sidecar(run)
    assert meta["model"] == model_name and meta["checkpoint"] == "last.pt"
    (entry,) = meta["files"].values()
    assert entry["verified"] is True and entry["parity"]["images"] == 2
    assert entry["parity"]["boxes"] > 0, "the check must compare boxes, not two empty lists"
    if spread:  # distinct scores: the boxes themselves must match, no tie may be needed
        assert entry["parity"]["matched_share"] >= 0.99 and entry["parity"]["tied"] == 0, entry["parity"]
    if model_name.startswith("ssd"):
        assert "resizes to 128x128 (aspect not kept)" in meta["input"]["size_rule"]


def test_ssdlite_with_tied_scores_is_verified_and_its_ties_counted(here, run_cli) -> None:
    """Vanished features: SSDLite scores by anchor shape alone, so ONNX may keep other boxes of a tie."""
    run = untrained_run(here / "runs" / "ssdlite-tied", "ssdlite320_mobilenet_v3_large", spread_scores=True,
                        bn_statistics=False)
    result = export(run_cli, run, "--format", "onnx", "--check-images", 2)
    assert result.exit_code == 0, result.stderr
    (entry,) = sidecar(run)["files"].values()
    parity = entry["parity"]
    assert entry["verified"] is True and parity["boxes"] == 600  # 300 per image
    assert parity["matched"] + parity["tied"] == parity["boxes"], parity
    assert (f"(+{parity['tied']} swapped among tied scores)" in result.stdout) == (parity["tied"] > 0)
    assert entry["limits"]["any_shape"], entry["limits"]


def test_a_swap_among_tied_scores_is_a_tie_and_anything_else_a_mismatch() -> None:
    """The tie proof: the stand-in must be one of the original's candidates, with the same score, NMS-compatible."""
    import numpy as np
    import torch

    from tlsync.trainer import build_model
    from tlsync.trainer.deploy import parity
    from tlsync.trainer.evaluation.metrics import iou_matrix

    torch.manual_seed(0)
    model = build_model("ssdlite320_mobilenet_v3_large", 3, "none", SIZE).eval()  # features vanish: scores tie
    image = torch.rand(3, SIZE, SIZE)
    original, candidates = parity.torch_outputs(model), parity.torch_candidates(model)
    boxes, labels, scores = original(image)
    every = candidates.run(image)
    assert len(every[0]) > len(boxes) and (model.nms_thresh, model.detections_per_img) == (0.55, 300)  # restored
    overlap = iou_matrix(every[0].astype(np.float64), boxes.astype(np.float64))
    overlap[every[1][:, None] != labels[None, :]] = 0.0
    i = len(boxes) - 1  # the last box kept; every candidate scoring the same could have been kept instead

    def stand_ins(nms_compatible: bool) -> int:
        """A candidate not kept, tied with box i, that NMS would (not) have let through beside the others."""
        others = np.delete(overlap, i, axis=1).max(1)
        return next(j for j in range(len(every[0])) if overlap[j].max() < 0.99 and every[1][j] == labels[i]
                    and every[2][j] == scores[i] and (others[j] <= model.nms_thresh) == nms_compatible)

    def checked(box: np.ndarray, score: float) -> tuple[int, int, bool]:
        new_boxes, new_scores = boxes.copy(), scores.copy()
        new_boxes[i], new_scores[i] = box, score
        m, _, _ = parity.match_with_ties(original, lambda _: (new_boxes, labels, new_scores), candidates, image)
        result = {"matched_share": m.matched / m.boxes, "tied_share": m.tied / m.boxes, "map50_95_diff": 0.0,
                  "max_score_diff": 0.0}
        return m.matched, m.tied, parity.verdict(result, False, 0.01)[0]

    n, j = len(boxes), stand_ins(nms_compatible=True)
    assert checked(every[0][j], float(every[2][j])) == (n - 1, 1, True)
    k = stand_ins(nms_compatible=False)
    for box, score in ((every[0][j], float(every[2][j]) + 1e-3),  # the original scores that box otherwise
                       (boxes[i] + 4.0, float(scores[i])),  # a box the original never produces
                       (every[0][k], float(every[2][k]))):  # one the original's NMS removes beside the others
        assert checked(box, score)[:2] == (n - 1, 0)
    # Unexplained differences still fail: 95% matched and nothing proved tied is not verified.
    assert not parity.verdict({"matched_share": 0.95, "tied_share": 0.0, "map50_95_diff": 0.0,
                               "max_score_diff": 0.0}, False, 0.01)[0]


def test_predict_with_an_onnx_model_never_imports_torchvision(here, workspace, run_cli) -> None:
    model = exported_file(run_cli, workspace[2])
    image = next(p for p in (here / "home").rglob("*.png"))
    code = ("import sys\nfrom tlsync.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] == 'torchvision'))\n")
    proc = subprocess.run([sys.executable, "-c", code, "predict", "--model", str(model), str(image), "--out",
                           str(here / "preds-sub")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout, proc.stdout
    assert (here / "preds-sub" / "predictions.json").exists()


def test_a_tampered_file_or_a_missing_model_json_is_refused(here, workspace, run_cli, tmp_path: Path) -> None:
    run = workspace[2]
    source = exported_file(run_cli, run)
    image = str(next(p for p in (here / "home").rglob("*.png")))
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "model.onnx").write_bytes(source.read_bytes())

    alone = run_cli("predict", "--model", copy / "model.onnx", image, "--out", tmp_path / "p1")
    assert alone.exit_code == 1 and len(alone.stderr.strip().splitlines()) == 1
    assert "model.onnx: no model.json beside it" in alone.stderr

    (copy / "model.json").write_text((run / "export" / "model.json").read_text())
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    for command in (("predict", "--model", copy / "model.onnx", image, "--out", tmp_path / "p2"),
                    ("eval", "--model", copy / "model.onnx")):
        tampered = run_cli(*command)
        assert tampered.exit_code == 1 and len(tampered.stderr.strip().splitlines()) == 1
        assert "does not match model.json" in tampered.stderr and "changed after export" in tampered.stderr
    assert not (tmp_path / "p2").exists()


def test_a_model_the_exporter_cannot_handle_is_a_one_line_error(here, run_cli) -> None:
    import torch

    from tlsync import plugins
    from tlsync.hookspecs import hookimpl
    from tlsync.models import ModelSpec

    class Boxes(torch.nn.Module):
        """A detector without torchvision's transform: nothing says what its graph expects."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, images):  # pragma: no cover  (never reached: refused before tracing)
            return [{"boxes": self.conv(i[None])[0, :, :1, :4].reshape(-1, 4)} for i in images]

    class Plugin:
        @hookimpl
        def tlsync_register_models(self, register):
            register(ModelSpec("plain_boxes", lambda num_classes, weights, img_size: Boxes(), "test model"))

    plugins.load_plugins()
    plugin = Plugin()
    plugins.pm.register(plugin, name="test-export-plugin")
    try:
        run = untrained_run(here / "runs" / "plain", "plain_boxes")
        result = export(run_cli, run, "--format", "onnx")
    finally:
        plugins.pm.unregister(plugin)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "model 'plain_boxes' cannot be exported: it is a Boxes, not a torchvision-style detector" in result.stderr
    assert not (run / "export" / "model.onnx").exists()


def test_int8_reports_the_calibration_it_used_and_the_report_names_each_file(here, workspace, run_cli) -> None:
    from tlsync.store import Store

    run = workspace[2]
    train = sum(1 for _ in Store().open("shapes").items("train"))
    assert train < 32
    result = export(run_cli, run, "--format", "onnx", "--quantize", "int8", "--calibration-images", 32, "--exist-ok",
                    "--max-map-drop", "1", "--check-images", 1)
    assert result.exit_code == 0, result.stderr
    assert (f"quantizing to int8 with {train} train calibration images (all there are; --calibration-images asked "
            "for 32)") in result.stderr
    how = sidecar(run)["files"]["model.int8.onnx"]["quantization"]
    assert how["calibration"] == f"{train} train images, MinMax" and how["calibration_images"] == train

    for name in ("model.int8.onnx", "model.onnx"):
        scored = run_cli("eval", "--model", run / "export" / name, "--split", "val")
        assert scored.exit_code == 0, scored.stderr
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>", (run / "report.html").read_text())
    assert {("export/model.int8.onnx", "shapes@1 val"), ("export/model.onnx", "shapes@1 val")} <= set(rows)


def test_a_parity_line_with_no_matching_box_says_so_plainly() -> None:
    from tlsync.trainer.deploy.parity import summary_line

    result = {"images": 2, "split": "val", "dataset": "shapes@1", "map50_95_original": 0.1, "map50_95_exported": 0.0,
              "boxes": 375, "matched": 0, "tied": 0, "max_score_diff": None}
    line = summary_line(Path("model.int8.onnx"), result, False, "int8 costs 0.1000 val mAP50-95")
    assert line == ("model.int8.onnx: UNVERIFIED on 2 val images of shapes@1: mAP50-95 0.1000 -> 0.0000, "
                    "no box of the 375 matched (int8 costs 0.1000 val mAP50-95)")
    result.update(matched=370, max_score_diff=0.012)
    assert "370/375 boxes match, largest score difference 0.012" in summary_line(Path("m.onnx"), result, True, "")


def test_an_export_whose_boxes_all_moved_says_no_box_matched(here, workspace, run_cli, monkeypatch) -> None:
    """Issue 27: a parity check where no box matches says so plainly ("no box of the N matched"),
    not "0/N boxes match, largest score difference 0" (a maximum over nothing), and fails."""
    from tlsync.trainer.deploy import parity

    run = here / "runs" / "moved"
    shutil.copytree(workspace[2], run, ignore=shutil.ignore_patterns("export", "eval"))
    real = parity.match_with_ties

    def moved(original, exported, candidates, image):  # the exported file's boxes, all 10,000 px away
        def far(x):
            boxes, labels, scores = exported(x)
            return boxes + 10_000, labels, scores
        return real(original, far, candidates, image)

    monkeypatch.setattr(parity, "match_with_ties", moved)
    result = export(run_cli, run, "--format", "onnx", "--check-images", 2)
    assert result.exit_code == 1
    said = result.stdout + result.stderr
    found = re.search(r"no box of the (\d+) matched", said)
    assert found and int(found.group(1)) > 0, said
    assert "largest score difference" not in said and not re.search(r"\b0/\d+ boxes match", said)
    entry = sidecar(run)["files"]["model.onnx"]
    assert entry["verified"] is False
    assert (entry["parity"]["matched"], entry["parity"]["max_score_diff"]) == (0, None)


SERVE_CONFIG = ('<View><Image name="image" value="$image"/><RectangleLabels name="label" toName="image">'
                '<Label value="circle"/><Label value="square"/><Label value="triangle"/></RectangleLabels></View>')


def test_serve_with_an_exported_model_answers_as_predict_does(here, workspace, run_cli, tmp_path: Path) -> None:
    """``tlsync serve --model RUN/export/model.onnx`` (issue 23): Label Studio's ``/predict`` on
    local images gives ``tlsync predict --model``'s boxes, in percent, versioned by the run's name."""
    run = workspace[2]
    onnx = exported_file(run_cli, run, "onnx")
    folder = tmp_path / "photos"
    folder.mkdir()
    for n, source in enumerate(sorted((here / "home" / "images").rglob("*.png"))[:3]):
        shutil.copyfile(source, folder / f"p{n}.png")
    by_file = run_cli("predict", "--model", onnx, folder, "--conf", "0.05", "--out", "preds-serve")
    assert by_file.exit_code == 0, by_file.stderr
    meta = json.loads((here / "preds-serve" / "images.json").read_text())
    names = {c["id"]: c["name"] for c in meta["categories"]}
    files = {i["id"]: Path(i["file_name"]).name for i in meta["images"]}
    expected: dict[str, list] = {name: [] for name in files.values()}
    for p in json.loads((here / "preds-serve" / "predictions.json").read_text()):
        expected[files[p["image_id"]]].append((names[p["category_id"]], *p["bbox"], p["score"]))
    assert any(expected.values()), "predict finds boxes at conf 0.05, so there is something to compare"

    env = {**os.environ, "TLSYNC_HOME": str(here / "home"), "TLSYNC_LOAD_PLUGINS": ""}
    process = subprocess.Popen([sys.executable, "-m", "tlsync", "serve", "--model", str(onnx), "--port", "0",
                                "--conf", "0.05", "--images-root", str(folder), "--device", "cpu"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().rsplit(" at ", 1)[1].strip()
        tasks = [{"id": n, "data": {"image": str(folder / name)}} for n, name in enumerate(sorted(expected), 1)]
        answer = requests.post(f"{url}/predict", json={"tasks": tasks, "label_config": SERVE_CONFIG},
                               timeout=300).json()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    assert answer["model_version"] == run.name
    for task, result in zip(tasks, answer["results"], strict=True):
        assert result["model_version"] == run.name
        got = []
        for box in result["result"]:
            value, w, h = box["value"], box["original_width"], box["original_height"]
            got.append((value["rectanglelabels"][0], value["x"] * w / 100, value["y"] * h / 100,
                        value["width"] * w / 100, value["height"] * h / 100, box["score"]))
        want = list(expected[Path(task["data"]["image"]).name])
        assert len(got) == len(want)
        for box in got:  # one to one: same class, corners within 0.01 px, score within 1e-4
            twin = next((w for w in want if w[0] == box[0] and box[1:5] == pytest.approx(w[1:5], abs=0.01)
                         and box[5] == pytest.approx(w[5], abs=1e-4)), None)
            assert twin is not None, f"serve's {box} is not among predict's {want}"
            want.remove(twin)
