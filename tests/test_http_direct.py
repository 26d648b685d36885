"""Downloads sent without requests (``tlsync.http_direct``) keep requests' behaviour where it matters.

Each test runs ``HttpClient.download`` against a real loopback server. Where the direct path must
be the one taken, the session's ``request`` is made to fail, so a silent fallback to requests
cannot make the test pass; where requests must send (a proxy, a ``.netrc`` entry), the server
checks that what requests would do was done.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

from tlsync.http import HttpClient, HttpError
from tlsync.testing.server import LoopbackServer, Response

BODY = bytes(range(256)) * 400  # 100 KB


@pytest.fixture
def sleeps() -> list[float]:
    return []


def direct_client(sleeps: list[float], monkeypatch: pytest.MonkeyPatch, **kwargs) -> HttpClient:
    """A client whose downloads must not go through ``requests.Session.request``."""
    client = HttpClient(sleep=sleeps.append, **kwargs)

    def refuse(*args, **kw):
        raise AssertionError("this download should not have gone through requests")

    monkeypatch.setattr(client.session, "request", refuse)
    return client


def test_a_redirect_is_followed_to_the_body(sleeps, monkeypatch):
    with LoopbackServer() as server:
        server.route("GET", "/a.jpg")(lambda request: Response(302, b"", {"Location": "/b.jpg?sig=x%2Fy"}))
        server.route("GET", "/b.jpg")(lambda request: Response(200, BODY))
        out = io.BytesIO()
        assert direct_client(sleeps, monkeypatch).download(server.url + "/a.jpg", out) == len(BODY)
        assert [(r.path, r.query) for r in server.log] == [("/a.jpg", ""), ("/b.jpg", "sig=x%2Fy")]
    assert out.getvalue() == BODY


def test_endless_redirects_are_an_error_not_a_hang(sleeps, monkeypatch):
    with LoopbackServer() as server:
        server.route("GET", "/loop.jpg")(lambda request: Response(302, b"", {"Location": "/loop.jpg"}))
        client = direct_client(sleeps, monkeypatch)
        client.session.max_redirects = 3
        with pytest.raises(HttpError, match="could not be sent.*TooManyRedirects"):
            client.download(server.url + "/loop.jpg", io.BytesIO())
        assert len(server.log) == 4


def test_a_body_shorter_than_its_content_length_is_fetched_again(sleeps, monkeypatch):
    answers = iter([Response(200, BODY, cut_at=len(BODY) // 2), Response(200, BODY)])
    with LoopbackServer() as server:
        server.route("GET", "/img.jpg")(lambda request: next(answers))
        out = io.BytesIO()
        assert direct_client(sleeps, monkeypatch).download(server.url + "/img.jpg", out) == len(BODY)
        assert len(server.log) == 2
    assert out.getvalue() == BODY, "only the whole body was written"
    assert len(sleeps) == 1, "with a backoff between the attempts"


def test_server_errors_and_429_are_retried_with_its_retry_after(sleeps, monkeypatch):
    answers = iter([Response(503), Response(429, b"", {"Retry-After": "2"}), Response(200, BODY)])
    with LoopbackServer() as server:
        server.route("GET", "/img.jpg")(lambda request: next(answers))
        out = io.BytesIO()
        assert direct_client(sleeps, monkeypatch).download(server.url + "/img.jpg", out) == len(BODY)
    assert len(sleeps) == 2 and sleeps[1] == 2.0


def test_a_missing_image_is_not_retried(sleeps, monkeypatch):
    with LoopbackServer() as server:
        with pytest.raises(HttpError, match=r"GET .*/nope\.jpg returned HTTP 404"):
            direct_client(sleeps, monkeypatch).download(server.url + "/nope.jpg", io.BytesIO())
        assert len(server.log) == 1


def test_a_refused_connection_is_retried_then_reported(sleeps, monkeypatch):
    with LoopbackServer() as server:
        url = server.url + "/img.jpg"
    with pytest.raises(HttpError, match=r"failed after 3 attempts \(ConnectionError\)"):
        direct_client(sleeps, monkeypatch, attempts=3).download(url, io.BytesIO())
    assert len(sleeps) == 2


def test_an_environment_proxy_is_used(sleeps, monkeypatch):
    with LoopbackServer() as proxy:
        proxy.route("GET", "/img.jpg")(lambda request: Response(200, BODY))
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        out = io.BytesIO()
        HttpClient(sleep=sleeps.append).download("http://images.example.test/img.jpg", out)
        [seen] = proxy.log
    assert seen.headers["Host"] == "images.example.test" and out.getvalue() == BODY


def test_netrc_credentials_for_the_host_are_sent(sleeps, monkeypatch, tmp_path: Path):
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login cdn-user password cdn-pass\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with LoopbackServer() as server:
        server.route("GET", "/img.jpg")(lambda request: Response(200, BODY))
        HttpClient(sleep=sleeps.append).download(server.url + "/img.jpg", io.BytesIO())
        [seen] = server.log
    assert seen.headers["Authorization"] == "Basic " + base64.b64encode(b"cdn-user:cdn-pass").decode()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509  # in the test extra: a missing package fails, never skips, this test
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_pem, key_pem = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert_pem, key_pem


@pytest.fixture
def https_server(tmp_path: Path):
    """A one-route HTTPS server on 127.0.0.1 serving ``BODY``; yields (url, its certificate)."""
    import http.server
    import ssl
    import threading

    cert, key = _self_signed(tmp_path)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}/img.jpg", cert
    server.shutdown()
    server.server_close()


def test_https_downloads_verify_the_server_against_the_ca_bundle_requests_would_use(
        https_server, sleeps, monkeypatch):
    url, cert = https_server
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    with pytest.raises(HttpError, match=r"failed after 2 attempts \(SSLError\)"):  # certifi does not know it
        direct_client(sleeps, monkeypatch, attempts=2).download(url, io.BytesIO())
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    out = io.BytesIO()
    assert direct_client(sleeps, monkeypatch).download(url, out) == len(BODY)
    assert out.getvalue() == BODY


def test_a_cookie_for_the_image_host_is_sent_and_one_for_another_host_does_not_matter(sleeps, monkeypatch):
    """requests sends the session's cookies to the hosts they belong to: an image host's cookie keeps its
    downloads on requests; the API's own cookie (here one for another host) leaves them direct."""
    with LoopbackServer() as server:
        server.route("GET", "/img.jpg")(lambda request: Response(200, BODY))
        port = server.url.rsplit(":", 1)[1]
        client = HttpClient(sleep=sleeps.append)
        client.session.cookies.set("lb", "api-node-3", domain="api.example.test")
        refuse = direct_client(sleeps, monkeypatch).session.request
        monkeypatch.setattr(client.session, "request", refuse)
        client.download(f"http://127.0.0.1:{port}/img.jpg", io.BytesIO())  # direct: no AssertionError
        monkeypatch.undo()
        client.session.cookies.set("cdn", "edge-7", domain="127.0.0.1")
        client.download(f"http://127.0.0.1:{port}/img.jpg", io.BytesIO())
        first, second = server.log
    assert "Cookie" not in first.headers and second.headers.get("Cookie") == "cdn=edge-7"


def test_connection_failures_become_the_exceptions_requests_raises_for_them():
    """So retries (connection errors, timeouts) and "could not be sent" (bad URL) stay as they were."""
    import ssl

    import requests

    from tlsync.http_lean import _translate
    from tlsync.http_wire import InvalidTarget, WireError

    assert type(_translate(TimeoutError("slow"), "connect")) is requests.ConnectTimeout
    assert type(_translate(TimeoutError("slow"), "read")) is requests.ReadTimeout
    assert type(_translate(ConnectionRefusedError("refused"), "connect")) is requests.ConnectionError
    assert type(_translate(ssl.SSLCertVerificationError("bad cert"), "connect")) is requests.exceptions.SSLError
    assert type(_translate(WireError("garbage"), "read")) is requests.ConnectionError
    assert type(_translate(InvalidTarget("a space"), "connect")) is requests.exceptions.InvalidURL
