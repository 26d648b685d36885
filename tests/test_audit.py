"""``tlsync audit``: folds, the three kinds of planted error found, outputs, targets, bad input (resume after a
real kill: test_audit_resume.py).

The planted-error tests give the audit an oracle for a model (the clean labels, slightly
jittered, as its predictions): what is under test there is whether the scores find and rank
the planted errors, not how well a one-epoch detector sees. The end-to-end tests train real
(tiny) fold runs once per module.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from fake_nucleus import API, FakeItem, FakeNucleus
from test_select_cli import KEY, slice_routes

from tlsync.connectors.synthetic import SyntheticSource
from tlsync.format import Box, ImageRef, Item
from tlsync.pull import pull
from tlsync.store import Store
from tlsync.testing import run_cli
from tlsync.trainer.audit.folds import make_folds
from tlsync.trainer.audit.review import ranked_rows, review, suggested_labels

TINY = ("--model", "fasterrcnn_mobilenet_v3_large_320_fpn", "--weights", "none", "--img-size", "64", "--epochs", "1",
        "--batch-size", "2", "--workers", "0", "--device", "cpu", "--precise-bn-batches", "0")
DROPPED, SWAPPED, SHIFTED = "synthetic-0-000003", "synthetic-0-000005", "synthetic-0-000007"


def items_with_a_rare_class(n: int = 40) -> list[Item]:
    out = []
    for i in range(n):
        label = "rare" if i in (3, 14, 25, 36) else "common"
        out.append(Item(f"item-{i:03d}", ImageRef(f"mem://{i}", width=20, height=20), [Box(label, 1, 1, 5, 5)]))
    return out


def test_folds_are_disjoint_stratified_and_hold_every_image_once() -> None:
    items = items_with_a_rare_class()
    folds = make_folds(items, 4, seed=0)
    ids = [item.id for fold in folds for item in fold]
    assert sorted(ids) == sorted(item.id for item in items)  # every image once, none twice
    assert [len(f) for f in folds] == [10, 10, 10, 10]
    assert [sum(i.annotations[0].label == "rare" for i in f) for f in folds] == [1, 1, 1, 1]  # the rare class spread
    assert [[i.id for i in f] for f in make_folds(list(reversed(items)), 4, seed=0)] == [[i.id for i in f]
                                                                                         for f in folds]
    assert [[i.id for i in f] for f in make_folds(items, 4, seed=1)] != [[i.id for i in f] for f in folds]


class Planted(SyntheticSource):
    """The synthetic shapes with three planted errors: a dropped box, a swapped class, a shifted box."""

    name = "planted"

    def items(self, ctx, **options):
        for item in super().items(ctx, **options):
            item.split = "train"
            box = item.annotations[0]
            if item.id == DROPPED:
                item.annotations = item.annotations[1:]
            elif item.id == SWAPPED:
                box.label = next(c for c in ("circle", "square", "triangle") if c != box.label)
            elif item.id == SHIFTED:
                box.x, box.y = box.x + 0.3 * box.width, box.y + 0.3 * box.height
            yield item


def oracle(clean: dict[str, Item]):
    """A stand-in model that sees the true boxes (confidence 0.9, jittered by a pixel) plus a faint false alarm."""
    def predict(run, items, base, options):
        rng = random.Random(0)
        out = []
        for item in items:
            boxes = [Box(b.label, b.x + rng.uniform(-1, 1), b.y + rng.uniform(-1, 1), b.width, b.height,
                         confidence=0.9) for b in clean[item.id].annotations]
            boxes.append(Box("circle", 0, 0, 6, 6, confidence=0.2))
            out.append(Item(item.id, item.image, boxes, item.split))
        return out
    return predict


@pytest.fixture
def planted(store: Store, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Item]:
    """A noisy dataset ``shapes``, and the audit's model replaced by the oracle of its clean twin."""
    options = {"items": 24, "size": 64, "seed": 0}
    pull(store, SyntheticSource(), options, "clean", split_ratios=(1, 0, 0))
    pull(store, Planted(), options, "shapes", split_ratios=(1, 0, 0))
    clean = {item.id: item for item in store.open("clean").items()}
    monkeypatch.setattr("tlsync.trainer.audit.run.predict", oracle(clean))
    monkeypatch.setattr("tlsync.trainer.curve.run.train_point", lambda cfg: Path(cfg.project) / cfg.name)
    monkeypatch.chdir(tmp_path)
    return clean


def test_each_planted_error_is_found_as_its_kind_and_ranked_first(planted, run_cli, tmp_path: Path) -> None:
    result = run_cli("audit", "--dataset", "shapes", "--folds", "3")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "audits/shapes-1/suspects.jsonl").read_text().splitlines()]
    top = {row["item"]: row for row in rows[:3]}
    assert set(top) == {DROPPED, SWAPPED, SHIFTED}
    dropped = planted[DROPPED].annotations[0]
    assert top[DROPPED]["kind"] == "missing" and top[DROPPED]["label"] is None
    assert top[DROPPED]["suggestion"]["class"] == dropped.label
    assert top[DROPPED]["suggestion"]["box"] == pytest.approx([dropped.x, dropped.y, dropped.width, dropped.height],
                                                               abs=1.01)
    swapped = planted[SWAPPED].annotations[0]
    assert top[SWAPPED]["kind"] == "wrong_class"
    assert top[SWAPPED]["label"]["class"] != swapped.label and top[SWAPPED]["suggestion"]["class"] == swapped.label
    shifted = planted[SHIFTED].annotations[0]
    assert top[SHIFTED]["kind"] == "badly_placed"
    assert top[SHIFTED]["suggestion"]["box"][:2] == pytest.approx([shifted.x, shifted.y], abs=1.01)
    assert all(row["score"] < min(r["score"] for r in rows[:3]) for r in rows[3:] for row in [r])
    assert [row["rank"] for row in rows] == list(range(1, len(rows) + 1))
    assert all(0 <= row["score"] <= 1 and 0 <= row["image_quality"] <= 1 for row in rows)
    summary = json.loads((tmp_path / "audits/shapes-1/audit.json").read_text())
    assert summary["dataset_version"] == "shapes@1" and summary["finished"]
    assert summary["counts"]["per_kind"]["missing"] >= 1 and summary["counts"]["per_kind"]["wrong_class"] >= 1
    assert sum(summary["counts"]["per_kind"].values()) == len(rows) == summary["suspects"]
    assert f"{DROPPED}: missing" in result.stdout  # the top suspects are printed


def test_the_suggestion_a_reviewer_gets_is_the_clean_labelling(planted, store: Store) -> None:
    noisy = {item.id: item for item in store.open("shapes").items()}
    predictions = {i: p for i, p in zip(noisy, oracle(planted)(None, list(noisy.values()), None, {}), strict=True)}
    reviews = {r.item.id: r for r in review(list(noisy.values()), predictions, {}, 0.5)}
    for item_id in (DROPPED, SWAPPED, SHIFTED):
        fixed = sorted((b.label, round(b.x), round(b.y)) for b in suggested_labels(reviews[item_id]))
        truth = sorted((b.label, round(b.x), round(b.y)) for b in planted[item_id].annotations)
        assert [(c, pytest.approx(x, abs=1), pytest.approx(y, abs=1)) for c, x, y in fixed] == truth
    assert ranked_rows(list(reviews.values()), {})[0]["item"] in {DROPPED, SWAPPED, SHIFTED}


def test_bad_input_is_one_line_each(store: Store, run_cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    pull(store, SyntheticSource(), {"items": 5, "size": 64, "seed": 0}, "few", split_ratios=(1, 0, 0))

    class NoBoxes(SyntheticSource):
        name = "no-boxes"

        def items(self, ctx, **options):
            for item in super().items(ctx, **options):
                item.annotations = []
                yield item

    pull(store, NoBoxes(), {"items": 4, "size": 64, "seed": 0}, "empty", split_ratios=(1, 0, 0))
    cases = {("--dataset", "few", "--folds", "6"): "more folds than the 5 labelled images",
             ("--dataset", "few", "--folds", "1"): "at least 2",
             ("--dataset", "empty"): "no boxes",
             ("--dataset", "nosuch"): "nosuch",
             ("--resume", str(tmp_path)): "no audit.json there",
             ("--dataset", "few", "--run", str(tmp_path)): "not a tlsync run directory"}
    for args, message in cases.items():
        result = run_cli("audit", *args)
        assert result.exit_code == 1, args
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "audits").exists() or not any((tmp_path / "audits").iterdir())  # nothing half-made


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-fold audit of 12 synthetic images (tiny 1-epoch fold runs: the slow part, done once)."""
    home = tmp_path_factory.mktemp("audit-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLSYNC_HOME", str(home))
        mp.setenv("TLSYNC_LOAD_PLUGINS", "")
        mp.chdir(home)
        assert run_cli("pull", "--source", "synthetic", "--dataset", "shapes", "--items", "12", "--size", "64",
                       "--split-ratios", "0.8,0.2,0").exit_code == 0
        result = run_cli("audit", "--dataset", "shapes", "--folds", "2", "--conf", "0.05", *TINY)
        assert result.exit_code == 0, result.stderr
        assert "audit fold 2 of 2: train on" in result.stderr and "ETA" in result.stderr  # progress with an ETA
    return home


def test_a_real_audit_predicts_every_image_once_out_of_sample(audited: Path) -> None:
    folder = audited / "audits" / "shapes-1"
    summary = json.loads((folder / "audit.json").read_text())
    store = Store(audited)
    audited_ids = {i.id for i in store.open("shapes").items() if i.split in ("train", "val")}
    predicted = [json.loads(line)["id"] for n in (1, 2)
                 for line in (folder / f"predictions-fold-{n}.jsonl").read_text().splitlines()]
    assert sorted(predicted) == sorted(audited_ids)  # every audited image once: the folds are disjoint
    for record in summary["fold_runs"]:
        run = audited / record["run"]  # recorded as given: relative to where the audit ran
        assert (run / "weights" / "last.pt").is_file()
        trained_on = {i.id for i in store.open(json.loads((run / "config.json").read_text())["dataset"]).items()}
        mine = {json.loads(line)["id"] for line in
                (folder / f"predictions-fold-{record['fold']}.jsonl").read_text().splitlines()}
        assert not trained_on & mine  # out-of-sample: no fold run saw the images it predicted
    assert summary["settings"]["train_options"]["epochs"] == 1 and summary["dataset_version"] == "shapes@1"
    rows = (folder / "suspects.jsonl").read_text().splitlines()
    assert summary["suspects"] == len(rows)
    assert (folder / "audit.png").is_file() and summary["contact_sheet"] == list(range(1, min(24, len(rows)) + 1))
    page = (folder / "audit.html").read_text()
    assert page.count('class="suspect"') == min(200, len(rows))


def test_a_run_s_own_model_audits_in_sample_and_says_so(audited: Path, monkeypatch) -> None:
    monkeypatch.setenv("TLSYNC_HOME", str(audited))
    monkeypatch.chdir(audited)
    result = run_cli("audit", "--dataset", "shapes", "--run", "audits/shapes-1/fold-1", "--conf", "0.05")
    assert result.exit_code == 0, result.stderr
    assert "in-sample" in result.stdout and "In-sample" in result.stderr
    folder = audited / "audits" / "shapes-2"
    summary = json.loads((folder / "audit.json").read_text())
    assert summary["in_sample"] and summary["settings"]["folds"] == 0
    assert [r["fold"] for r in summary["fold_runs"]] == [0] and not (folder / "fold-1").exists()  # nothing trained
    predicted = [json.loads(line)["id"] for line in (folder / "predictions-fold-0.jsonl").read_text().splitlines()]
    assert len(predicted) == summary["images"] == len(set(predicted))


def test_an_audit_folder_is_never_overwritten(audited: Path, monkeypatch) -> None:
    monkeypatch.setenv("TLSYNC_HOME", str(audited))
    monkeypatch.chdir(audited)
    result = run_cli("audit", "--dataset", "shapes", "--name", "shapes-1", *TINY)
    assert result.exit_code == 1 and "already exists" in result.stderr


def test_suspects_go_to_a_nucleus_slice_once(audited: Path, monkeypatch) -> None:
    monkeypatch.setenv("TLSYNC_HOME", str(audited))
    monkeypatch.chdir(audited)
    folder = audited / "audits" / "shapes-1"
    with FakeNucleus(api_key=KEY) as fake:
        for item in Store(audited).open("shapes").items():  # the dataset as it was pulled from Nucleus
            fake.add_item("ds_1", FakeItem(item.id, [(b.label, b.x, b.y, b.width, b.height) for b in item.annotations]))
        slice_routes(fake)
        monkeypatch.setenv("NUCLEUS_API_KEY", KEY)
        monkeypatch.setenv("NUCLEUS_ENDPOINT", fake.endpoint)
        args = ("audit", "--resume", folder, "--target", "nucleus", "--dataset-id", "ds_1", "--slice-name",
                "review-1", "--with-predictions", "--send-top", "3")
        first = run_cli(*args)
        assert first.exit_code == 0, first.stderr
        rows = [json.loads(line) for line in (folder / "suspects.jsonl").read_text().splitlines()]
        (slice_id,) = [sid for sid, s in fake.slices.items() if s.name == "review-1"]
        sent = fake.slices[slice_id].ref_ids
        assert len(sent) == min(3, len({r["item"] for r in rows})) and set(sent) <= {r["item"] for r in rows}
        assert {a["reference_id"] for body in fake.uploads for a in body["annotations"]} <= set(sent)
        assert KEY not in first.stdout + first.stderr
        again = run_cli(*args)
        assert again.exit_code == 0 and "sent 0" in again.stdout, again.stderr
        assert len(fake.server.requests("POST", API + "/dataset/ds_1/create_slice")) == 1


def test_the_page_renders_in_headless_chromium(audited: Path, tmp_path: Path) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    page = audited / "audits" / "shapes-1" / "audit.html"
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    rows = (audited / "audits" / "shapes-1" / "suspects.jsonl").read_text().splitlines()
    assert dom.count('class="suspect"') == min(200, len(rows)) and 'id="summary"' in dom
    shot = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path}",
                    f"--screenshot={shot}", "--window-size=1200,900", page.as_uri()], capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(shot) as im:  # thumbnails decoded: the page is not blank white
        assert len(im.convert("RGB").resize((64, 48)).getcolors(64 * 48) or []) > 20
