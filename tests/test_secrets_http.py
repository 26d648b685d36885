"""API keys stay secret; HTTP retries ride out rate limits and flaky servers."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import requests
import responses

from tlsync.errors import TlsyncError
from tlsync.http import HttpClient, HttpError
from tlsync.secrets import get_secret, redact


def test_secret_from_env_is_redacted_everywhere(monkeypatch):
    monkeypatch.setenv("DEMO_API_KEY", "sk-live-1234567890")
    assert get_secret("DEMO_API_KEY") == "sk-live-1234567890"
    assert redact("failed: GET https://x/y?api_key=sk-live-1234567890&n=1") == "failed: GET https://x/y?api_key=***&n=1"
    assert "sk-live" not in redact("Authorization failed for sk-live-1234567890")


def test_every_spelling_of_every_known_key_is_redacted_in_one_message(monkeypatch):
    """Two keys, one inside the other's neighbourhood, each as is, percent-encoded, JSON-escaped and
    as HTTP Basic credentials: none survives, whatever order they were learnt in."""
    import base64
    from urllib.parse import quote

    monkeypatch.setenv("FIRST_API_KEY", "k1/abc+def\\end")
    monkeypatch.setenv("SECOND_API_KEY", "zz-k1/abc+def")
    first, second = get_secret("FIRST_API_KEY"), get_secret("SECOND_API_KEY")
    basic = base64.b64encode(f"{first}:".encode()).decode()
    text = (f"GET /a/{quote(first, safe='')}?x={second} body {json.dumps(first)} "
            f"Authorization: Basic {basic} raw {first}{second}")
    out = redact(text)
    for key in (first, second):
        for form in (key, quote(key, safe=""), json.dumps(key)[1:-1], "abc+def"):
            assert form not in out, (form, out)
    assert basic.rstrip("=") not in out and out.count("***") >= 5


def test_config_file_must_be_private(tmp_path: Path, monkeypatch):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"DEMO_API_KEY": "from-file-secret"}))
    monkeypatch.setenv("TLSYNC_CONFIG", str(config))
    monkeypatch.delenv("DEMO_API_KEY", raising=False)
    os.chmod(config, 0o644)
    with pytest.raises(TlsyncError, match="chmod 600"):
        get_secret("DEMO_API_KEY")
    os.chmod(config, 0o600)
    assert get_secret("DEMO_API_KEY") == "from-file-secret"
    with pytest.raises(TlsyncError, match="OTHER_KEY is not set"):
        get_secret("OTHER_KEY")


def _client(sleeps: list[float]) -> HttpClient:
    return HttpClient(attempts=4, backoff=0.01, sleep=sleeps.append)


@responses.activate
def test_retry_after_is_honoured_then_success():
    url = "https://api.example.test/data"
    responses.get(url, status=429, headers={"Retry-After": "3"})
    responses.get(url, status=503)
    responses.get(url, json={"ok": True})
    sleeps: list[float] = []
    assert _client(sleeps).json("GET", url) == {"ok": True}
    assert sleeps[0] == 3.0 and len(sleeps) == 2


@responses.activate
def test_errors_name_the_url_without_the_key(monkeypatch):
    monkeypatch.setenv("DEMO_API_KEY", "very-secret-key")
    key = get_secret("DEMO_API_KEY")
    url = f"https://api.example.test/export?api_key={key}"
    responses.get(url, status=500)
    with pytest.raises(HttpError) as err:
        _client([]).json("GET", url, what="export")
    assert "failed after 4 attempts (HTTP 500)" in str(err.value)
    assert key not in str(err.value) and "api.example.test/export" in str(err.value)


@responses.activate
def test_connection_errors_are_retried_and_bad_json_is_clear():
    url = "https://api.example.test/x"
    responses.get(url, body=requests.ConnectionError("reset"))
    responses.get(url, body="<html>oops</html>")
    with pytest.raises(HttpError, match="not valid JSON"):
        _client([]).json("GET", url)


@responses.activate
def test_truncated_download_is_retried_and_only_whole_bodies_are_written():
    url = "https://cdn.example.test/img.jpg"
    responses.get(url, body=b"abc", headers={"Content-Length": "10"}, auto_calculate_content_length=False)
    responses.get(url, body=b"0123456789")
    out = io.BytesIO()
    assert _client([]).download(url, out) == 10
    assert out.getvalue() == b"0123456789"
