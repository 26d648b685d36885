"""docs/plugins.md stays true: every hook documented and tested, and its examples run.

The datasette pattern: the hook reference must quote each hookspec's exact signature and
docstring, some test must implement each hook, and the code a plugin author copies from
the guide is extracted from it and executed here.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomllib

from tlsync import hookspecs, plugins
from tlsync.errors import TlsyncError
from tlsync.format import Box, ImageRef, Item
from tlsync.testing import LoopbackServer, Response, isolated_plugins, write_image

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "plugins.md"
HOOKSPECS = [fn for _, fn in inspect.getmembers(hookspecs, inspect.isfunction) if hasattr(fn, "tlsync_spec")]


def guide_block(name: str) -> str:
    """The fenced block right after ``<!-- tutorial: NAME -->`` in the guide."""
    found = re.search(rf"<!-- tutorial: {re.escape(name)} -->\n```\w*\n(.*?)\n```", GUIDE.read_text(), re.DOTALL)
    assert found, f"docs/plugins.md has no block marked <!-- tutorial: {name} -->"
    return found.group(1) + "\n"


@pytest.fixture
def guide_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``load("tlsync_x.py")``: import a module written out from the guide."""
    loaded: list[str] = []

    def load(filename: str) -> Any:
        (tmp_path / filename).write_text(guide_block(filename))
        loaded.append(filename.removesuffix(".py"))
        return importlib.import_module(loaded[-1])

    monkeypatch.syspath_prepend(str(tmp_path))
    yield load
    for name in loaded:
        sys.modules.pop(name, None)


def test_there_are_hookspecs_to_check():
    assert {fn.__name__ for fn in HOOKSPECS} >= {"tlsync_register_sources", "tlsync_register_models",
                                                 "tlsync_register_targets"}


@pytest.mark.parametrize("spec", HOOKSPECS, ids=lambda fn: fn.__name__)
def test_every_hookspec_is_quoted_in_the_guide_with_signature_and_docstring(spec):
    guide = GUIDE.read_text()
    assert f"### {spec.__name__}{inspect.signature(spec)}\n" in guide, f"{spec.__name__}: heading with signature"
    assert f"```text\n{inspect.getdoc(spec)}\n```" in guide, f"{spec.__name__}: docstring differs from hookspecs.py"


@pytest.mark.parametrize("spec", HOOKSPECS, ids=lambda fn: fn.__name__)
def test_every_hookspec_is_implemented_by_some_test(spec):
    tests = [p for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name]
    pattern = re.compile(rf"\b(def {spec.__name__}\(|{spec.__name__}=)")
    assert any(pattern.search(p.read_text()) for p in tests), f"no test implements {spec.__name__}"


def test_tutorial_source_is_listed_and_pulls_under_its_entry_point_name(guide_module, tmp_path, run_cli, store):
    module = guide_module("tlsync_csvboxes.py")
    pyproject = tomllib.loads(guide_block("pyproject.toml"))
    entry_points = pyproject["project"]["entry-points"]["tlsync"]
    assert entry_points == {"csvboxes": "tlsync_csvboxes"}
    assert pyproject["tool"]["setuptools"]["py-modules"] == ["tlsync_csvboxes"]
    write_image(tmp_path / "street-1.png", 320, 200, seed=1)
    write_image(tmp_path / "street-2.png", 320, 200, seed=2)
    csv = tmp_path / "boxes.csv"
    csv.write_text("image,label,x,y,width,height\nstreet-1.png,car,12,40,200,90\n"
                   "street-1.png,person,260,30,40,120\nstreet-2.png,car,0,0,10,10\n")
    with isolated_plugins(csvboxes=module):
        assert "csvboxes: A CSV of boxes" in run_cli("sources").stdout
        pulled = run_cli("pull", "--source", "csvboxes", "--path", csv, "--dataset", "street")
        assert pulled.exit_code == 0, pulled.stderr
        assert "2 items, 3 boxes, 2 classes" in pulled.stdout
        first = next(store.open("street").items())
        assert [(b.label, b.x, b.y, b.width, b.height) for b in first.annotations] == [
            ("car", 12, 40, 200, 90), ("person", 260, 30, 40, 120)]

        csv.write_text("image,label,x,y,width,height\nstreet-1.png,car,12,40,-5,90\nstreet-2.png,car,1,1,x,2\n")
        failed = run_cli("pull", "--source", "csvboxes", "--path", csv, "--dataset", "street")
        assert failed.exit_code == 1 and f"{csv}: line 2: box 'car': width and height must be > 0" in failed.stderr
        skipped = run_cli("pull", "--source", "csvboxes", "--path", csv, "--dataset", "street", "--on-error", "skip")
        assert skipped.exit_code == 1 and "gave no items (2 skipped)" in skipped.stderr


def test_tutorial_test_passes(guide_module, tmp_path):
    guide_module("tlsync_csvboxes.py")
    guide_module("test_csvboxes.py").test_csv_boxes_keep_the_source_contract(tmp_path)


def test_model_example_registers_and_builds_a_torchvision_style_detector(guide_module):
    torch = pytest.importorskip("torch")
    from tlsync.plugins import get_model

    with isolated_plugins(tinydet=guide_module("tlsync_tinydet.py")):
        spec = get_model("fasterrcnn_mobilenet_v3_small_fpn")
    with pytest.raises(TlsyncError, match="has no coco weights; use --weights none"):
        spec.build(2, "coco", 128)
    torch.manual_seed(0)
    model = spec.build(2, "none", 128)
    image = torch.rand(3, 96, 128)
    losses = model.train()([image], [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 50.0]]),
                                       "labels": torch.tensor([2])}])
    assert {"loss_classifier", "loss_box_reg"} <= set(losses)
    with torch.no_grad():
        (out,) = model.eval()([image])
    assert set(out) == {"boxes", "labels", "scores"}
    assert model.roi_heads.box_predictor.cls_score.out_features == 3  # 2 classes + background


def test_target_example_posts_each_prediction(guide_module):
    received: list[dict] = []
    server = LoopbackServer()

    @server.route("POST", "/hook")
    def hook(request):
        received.append(request.json())
        return Response(204)

    item = Item("a.jpg", ImageRef("a.jpg"), [Box("car", 1, 2, 3, 4, confidence=0.9)])
    with isolated_plugins(webhook=guide_module("tlsync_webhook.py")):
        target = plugins.get_target("webhook")
    with server:
        summary = target.push(iter([item]), {"name": "street-1"}, url=server.url + "/hook")
        server.route("POST", "/down")(lambda request: Response(400))
        with pytest.raises(TlsyncError, match=r"/down answered HTTP 400 for item 'a.jpg'"):
            target.push(iter([item]), {"name": "street-1"}, url=server.url + "/down")
    assert summary == {"items": 1}
    assert received == [{"run": "street-1", **item.to_dict()}]
