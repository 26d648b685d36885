"""The Roboflow versioned-export API, mocked with ``responses``: polling, download, errors, secrecy."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import responses
from responses import matchers
from test_roboflow_local import coco_export, voc_export, yolo_export, zip_folder

from tlsync.connectors.roboflow import RoboflowSource
from tlsync.errors import TlsyncError
from tlsync.http import HttpClient
from tlsync.pull import pull

API = "https://api.roboflow.test"
KEY = "rf-SECRET-key-0123456789"
LINK = "https://storage.test/exports/chess.zip?X-Goog-Signature=deadbeef"
ARGS = ("pull", "--source", "roboflow", "--workspace", "acme", "--project", "chess-full", "--version", "23")
OPTIONS = {"workspace": "acme", "project": "chess-full", "version": 23}


def export_url(fmt: str = "coco") -> str:
    return f"{API}/acme/chess-full/23/{fmt}"


def with_key() -> list:
    return [matchers.query_param_matcher({"api_key": KEY, "nocache": "true"})]


@pytest.fixture(autouse=True)
def api_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBOFLOW_API_KEY", KEY)
    monkeypatch.setenv("ROBOFLOW_API_URL", API)
    monkeypatch.setattr(RoboflowSource, "poll_interval", 0.0)


@pytest.fixture
def coco_zip(tmp_path: Path) -> bytes:
    return zip_folder(coco_export(tmp_path / "coco"), tmp_path / "coco.zip").read_bytes()


def recording_source(sleeps: list[float]) -> RoboflowSource:
    source = RoboflowSource(http=HttpClient(sleep=sleeps.append, attempts=3))
    source.poll_interval = 1.0
    source.clock = lambda: sum(sleeps)  # time passes only while "sleeping"
    return source


def assert_secret_nowhere(home: Path, *texts: str) -> None:
    for text in texts:
        assert KEY not in text
    for path in home.rglob("*"):
        assert KEY not in str(path)
        if path.is_file() and path.stat().st_size < 10_000_000:
            assert KEY.encode() not in path.read_bytes(), f"API key written to {path}"


def test_export_is_polled_downloaded_and_reused(isolated_home: Path, store, coco_zip: bytes, run_cli, caplog):
    caplog.set_level(logging.DEBUG)
    with responses.RequestsMock() as rsps:
        rsps.get(export_url(), json={"progress": 0.25}, status=202, match=with_key())
        rsps.get(export_url(), json={"progress": 0.75}, status=202, match=with_key())
        rsps.get(export_url(), json={"export": {"link": LINK}}, status=200, match=with_key())
        rsps.get(LINK, body=coco_zip, content_type="application/zip")
        first = run_cli(*ARGS, "--dataset", "chess")
        assert first.exit_code == 0, first.stderr
        assert len(rsps.calls) == 4
    assert "downloaded Roboflow export acme/chess-full/23 (coco)" in first.stdout
    ds = store.open("chess@1")
    assert ds.categories == ["cells", "dirt"]
    assert {s: c["items"] for s, c in ds.info["counts"]["splits"].items()} == {"train": 2, "val": 2}
    assert ds.info["source"]["params"]["workspace"] == "acme"
    assert_secret_nowhere(isolated_home, first.stdout, first.stderr, caplog.text)

    with responses.RequestsMock() as rsps:  # no responses registered: any request would fail
        again = run_cli(*ARGS, "--dataset", "chess", "--reread")  # read the cached export, not just its stats
        assert again.exit_code == 0, again.stderr
        assert len(rsps.calls) == 0
    assert "using the copy downloaded earlier" in again.stdout and "unchanged, still chess@1" in again.stdout

    with responses.RequestsMock() as rsps:
        rsps.get(export_url(), json={"export": {"link": LINK}}, status=200, match=with_key())
        rsps.get(LINK, body=coco_zip, content_type="application/zip")
        refreshed = run_cli(*ARGS, "--dataset", "chess", "--refresh")
        assert refreshed.exit_code == 0, refreshed.stderr
    assert "downloaded Roboflow export" in refreshed.stdout and "unchanged, still chess@1" in refreshed.stdout
    assert_secret_nowhere(isolated_home, again.stdout, refreshed.stdout, caplog.text)


def test_a_downloaded_export_is_not_read_again_until_refresh(store, coco_zip: bytes, monkeypatch):
    monkeypatch.setattr("tlsync.sources.RACY_SECONDS", 0.0)  # trust the just-unpacked files
    with responses.RequestsMock() as rsps:
        rsps.get(export_url(), json={"export": {"link": LINK}}, status=200, match=with_key())
        rsps.get(LINK, body=coco_zip, content_type="application/zip")
        assert pull(store, RoboflowSource(), OPTIONS, "chess").version == 1
    with responses.RequestsMock() as rsps:
        # The export did not exist when the first pull began, so the second reads it once...
        assert not pull(store, RoboflowSource(), OPTIONS, "chess").quick
        again = pull(store, RoboflowSource(), OPTIONS, "chess")  # ...and the third reads nothing
        assert len(rsps.calls) == 0
    assert again.quick and again.unchanged and again.items == 4
    with responses.RequestsMock() as rsps:
        rsps.get(export_url(), json={"export": {"link": LINK}}, status=200, match=with_key())
        rsps.get(LINK, body=coco_zip, content_type="application/zip")
        refreshed = pull(store, RoboflowSource(), {**OPTIONS, "refresh": True}, "chess")
        assert len(rsps.calls) == 2
    assert not refreshed.quick and refreshed.unchanged


@pytest.mark.parametrize("status, message", [
    (401, "Roboflow refused the API key for acme/chess-full/23 (coco) (HTTP 401): check ROBOFLOW_API_KEY"),
    (403, "(HTTP 403): check ROBOFLOW_API_KEY"),
    (404, "Roboflow has no acme/chess-full/23 (coco) (HTTP 404): check --workspace, --project, --version"),
])
def test_api_errors_are_one_clear_line(isolated_home: Path, run_cli, status: int, message: str):
    with responses.RequestsMock() as rsps:
        rsps.get(export_url(), json={"error": {"message": f"bad key {KEY}"}}, status=status)
        result = run_cli(*ARGS, "--dataset", "chess")
    assert result.exit_code == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert_secret_nowhere(isolated_home, result.stdout, result.stderr)
    assert not list(isolated_home.glob("cache/roboflow/api/**/export"))


def test_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch, run_cli):
    monkeypatch.delenv("ROBOFLOW_API_KEY")
    with responses.RequestsMock():
        result = run_cli(*ARGS, "--dataset", "chess")
    assert result.exit_code == 1 and "ROBOFLOW_API_KEY is not set" in result.stderr


def test_429_honours_retry_after(store, coco_zip: bytes):
    sleeps: list[float] = []
    with responses.RequestsMock() as rsps:
        rsps.get(export_url(), status=429, headers={"Retry-After": "7"})
        rsps.get(export_url(), json={"progress": 0.5}, status=202)
        rsps.get(export_url(), json={"export": {"link": LINK}}, status=200, match=with_key())
        rsps.get(LINK, body=coco_zip)
        result = pull(store, recording_source(sleeps), OPTIONS, "chess")
    assert result.items == 4
    assert sleeps == [7.0, 1.0], "Retry-After, then one poll interval"


def test_500s_and_a_cut_download_are_retried(store, coco_zip: bytes):
    sleeps: list[float] = []
    with responses.RequestsMock() as rsps:
        rsps.get(export_url(), status=500)
        rsps.get(export_url(), json={"export": {"link": LINK}}, status=200)
        rsps.get(LINK, status=503)
        rsps.get(LINK, body=coco_zip[: len(coco_zip) // 2], headers={"Content-Length": str(len(coco_zip))})
        rsps.get(LINK, body=coco_zip)
        result = pull(store, recording_source(sleeps), OPTIONS, "chess")
        assert len(rsps.calls) == 5
    assert result.items == 4 and len(sleeps) == 3
    slot = store.home / "cache" / "roboflow" / "api" / "acme" / "chess-full" / "23" / "coco"
    assert sorted(p.name for p in slot.iterdir()) == [".lock", "export"], "no partial zip kept"


def test_expired_link_error_hides_the_signature_and_keeps_nothing(store):
    with responses.RequestsMock() as rsps:
        rsps.get(export_url(), json={"export": {"link": LINK}}, status=200)
        rsps.get(LINK, status=403)
        with pytest.raises(TlsyncError, match="returned HTTP 403") as e:
            pull(store, recording_source([]), OPTIONS, "chess")
    assert "storage.test/exports/chess.zip" in str(e.value) and "deadbeef" not in str(e.value)
    slot = store.home / "cache" / "roboflow" / "api" / "acme" / "chess-full" / "23" / "coco"
    assert [p.name for p in slot.iterdir()] == [".lock"]


def test_a_link_that_is_not_a_zip_is_refused(store):
    with responses.RequestsMock() as rsps:
        rsps.get(export_url(), json={"export": {"link": LINK}}, status=200)
        rsps.get(LINK, body="<html>Access denied</html>")
        with pytest.raises(TlsyncError, match="not a readable zip archive"):
            pull(store, recording_source([]), OPTIONS, "chess")
    slot = store.home / "cache" / "roboflow" / "api" / "acme" / "chess-full" / "23" / "coco"
    assert [p.name for p in slot.iterdir()] == [".lock"]


def test_export_that_never_finishes_times_out(store):
    sleeps: list[float] = []
    with responses.RequestsMock() as rsps:
        rsps.get(export_url(), json={"progress": 0.1}, status=202)
        with pytest.raises(TlsyncError,
                           match=r"still being prepared after 3s; try again later or raise --export-timeout"):
            pull(store, recording_source(sleeps), {**OPTIONS, "export_timeout": 3}, "chess")
    assert sleeps == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("fmt, api_id", [("yolov5", "yolov5pytorch"), ("yolov8", "yolov8"), ("yolov11", "yolov11"),
                                         ("voc", "voc")])
def test_other_export_formats(store, tmp_path: Path, fmt: str, api_id: str):
    root = voc_export(tmp_path / "e") if fmt == "voc" else yolo_export(tmp_path / "e", {"a": "1 0.5 0.5 0.2 0.2\n"})
    archive = zip_folder(root, tmp_path / "e.zip").read_bytes()
    with responses.RequestsMock() as rsps:
        rsps.get(export_url(api_id), json={"export": {"link": LINK}}, status=200, match=with_key())
        rsps.get(LINK, body=archive)
        result = pull(store, recording_source([]), {**OPTIONS, "format": fmt}, fmt)
    if fmt == "voc":
        assert (result.items, result.boxes, result.categories) == (2, 2, ["cell"])
    else:
        assert (result.items, result.boxes, result.categories) == (1, 1, ["cat", "dog"])
        (item,) = store.open(fmt).items()
        assert item.annotations[0].label == "dog"
