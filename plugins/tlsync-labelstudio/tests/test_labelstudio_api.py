"""Faults around the Label Studio API (the happy paths run against a real server: test_labelstudio_live.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import tlsync_labelstudio

from tlsync.errors import TlsyncError
from tlsync.testing import Faults, LoopbackServer, Response, check_source, write_image

URL = "https://ls.example.com"
KEY = "ls-token-0123456789abcdef"


def png(tmp_path: Path, seed: int) -> bytes:
    return write_image(tmp_path / f"{seed}.png", 200, 100, seed=seed).read_bytes()


def tasks(server_image: str) -> list[dict]:
    def annotated(label: str) -> list[dict]:
        return [{"id": 1, "was_cancelled": False, "updated_at": "2024-05-01T00:00:00Z", "result": [{
            "id": "r1", "type": "rectanglelabels", "original_width": 200, "original_height": 100,
            "value": {"x": 25, "y": 10, "width": 50, "height": 80, "rotation": 0, "rectanglelabels": [label]}}]}]

    return [
        {"id": 1, "data": {"image": server_image}, "annotations": annotated("cell")},
        {"id": 2, "data": {"image": "https://cdn.example.org/b.png"}, "annotations": annotated("debris")},
    ]


@pytest.fixture
def server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABEL_STUDIO_URL", URL)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", KEY)


def test_missing_key_or_server_says_which_variable_to_set(tlsync_store, monkeypatch):
    source = tlsync_labelstudio.LabelStudioSource()
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    with pytest.raises(TlsyncError,
                       match="--project needs the Label Studio server: pass --url or set LABEL_STUDIO_URL"):
        check_source(source, store=tlsync_store, project=7)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    with pytest.raises(TlsyncError, match="LABEL_STUDIO_API_KEY is not set"):
        check_source(source, store=tlsync_store, project=7, url=URL)


def test_over_real_http_a_rate_limited_export_is_retried_and_images_carry_the_token(
        tmp_path, tlsync_store, monkeypatch):
    server = LoopbackServer(faults=Faults(rate=1.0, kinds=("429",), max_in_a_row=1, paths="/export$"))
    image = png(tmp_path, 3)

    @server.route("GET", "/api/projects/{project}/export")
    def export(request):
        return Response.json(tasks(f"/data/upload/{request.params['project']}/a.png")[:1])

    @server.route("GET", "/data/upload/{project}/{name}")
    def upload(request):
        return Response(200, image, {"Content-Type": "image/png"})

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", KEY)
    with server:
        checked = check_source(tlsync_labelstudio.LabelStudioSource(), store=tlsync_store, project=9, url=server.url)
    assert [item.id for item in checked.items] == ["1"]
    assert [r.status for r in server.requests("GET", "/api/projects/9/export")] == [429, 200, 429, 200]
    assert all(r.headers.get("Authorization") == f"Token {KEY}" for r in server.log)


def test_a_key_pasted_with_a_carriage_return_is_never_printed_or_stored(tmp_path, tlsync_home, tlsync_plugins,
                                                                       run_cli, monkeypatch):
    """The key as pasted from a Windows file; a skipped image's signed URL is stored without its query."""
    tlsync_plugins(tlsync_labelstudio)
    image = png(tmp_path, 4)
    server = LoopbackServer()

    @server.route("GET", "/api/projects/{project}/export")
    def export(request):
        both = tasks("/data/upload/5/a.png")
        both[1]["data"]["image"] = f"{server.url}/signed/b.png?X-Amz-Credential=AKIA1234&X-Amz-Signature=f00d"
        return Response.json(both)

    @server.route("GET", "/data/upload/{project}/{name}")
    def upload(request):
        return Response(200, image, {"Content-Type": "image/png"})

    @server.route("GET", "/signed/{name}")
    def expired(request):
        return Response(403, b"<Error>AccessDenied</Error>")

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", KEY + "\r")
    with server:
        result = run_cli("pull", "--source", "labelstudio", "--project", "5", "--url", server.url,
                         "--dataset", "cells", "--on-error", "skip")
        assert all(r.headers.get("Authorization") == f"Token {KEY}" for r in server.requests("GET", "/data/"))
    assert result.exit_code == 0, result.stderr
    assert "skipped 1:" in result.stdout and "HTTP 403" in result.stdout
    stored = "".join(p.read_text() for p in (tlsync_home / "datasets" / "cells").rglob("*.json"))
    assert "/signed/b.png" in stored
    for text in (result.stdout, result.stderr, stored):
        assert KEY not in text and "X-Amz-Signature" not in text and "AKIA1234" not in text


def test_a_hostile_refusal_is_quoted_short_and_printable(tlsync_store, monkeypatch):
    """A 401 whose body is huge and full of control characters: one short line, read only in part."""
    server = LoopbackServer()
    junk = ("\x1b[2J\rno \x07 access " * 400_000).encode()

    @server.route("GET", "/api/projects/{project}/export")
    def export(request):
        return Response(401, junk, {"Content-Type": "text/plain"})

    @server.route("GET", "/api/current-user/whoami")
    def whoami(request):
        return Response(401, junk, {"Content-Type": "text/plain"})

    monkeypatch.setenv("LABEL_STUDIO_API_KEY", KEY)
    with server, pytest.raises(TlsyncError) as refused:
        check_source(tlsync_labelstudio.LabelStudioSource(), store=tlsync_store, project=4, url=server.url)
    message = str(refused.value)
    assert "refused a legacy token in LABEL_STUDIO_API_KEY" in message
    assert "HTTP 401: [2J no access [2J no access" in message
    assert len(message) < 800 and "\x1b" not in message and "\x07" not in message and KEY not in message
