"""Signed-URL parameters never reach the store: an item's stored ``uri`` keeps only what is not a credential."""

from __future__ import annotations

from typing import Any

import pytest
from fake_nucleus import FakeItem, FakeNucleus

from tlsync.store import Store

KEY = "nucleus_live_signed_0123456789"
SIGNATURES = {
    "s3": "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20261206%2Fus-east-1%2Fs3%2Faws4_request"
          "&X-Amz-Date=20261206T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host&x-amz-security-token=TOKSECRET"
          "&X-Amz-Signature=SIGSECRET1&variant=large",
    "gcs": "GoogleAccessId=svc%40proj.iam.gserviceaccount.com&Expires=1790000000&Signature=SIGSECRET2&variant=large",
    "gcs4": "X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=svc%2F2026&X-Goog-Signature=SIGSECRET3&variant=large",
    "azure": "sv=2021-08-06&st=2026-12-06T00%3A00Z&se=2026-12-06T01%3A00Z&sr=b&sp=r&sig=SIGSECRET4%3D&variant=large",
    "token": "token=SIGSECRET5&api_key=SIGSECRET6&variant=large",
    "cloudfront": "Policy=eyJTSECRET7&Key-Pair-Id=APKASECRET8&Signature=SIGSECRET9&variant=large",
}


@pytest.fixture
def nucleus(monkeypatch: pytest.MonkeyPatch):
    with FakeNucleus(api_key=KEY) as fake:
        fake.add_dataset("ds_1", "signed")
        fake.add_slice("slc_1", "ds_1", [], name="signed")
        monkeypatch.setenv("NUCLEUS_API_KEY", KEY)
        monkeypatch.setenv("NUCLEUS_ENDPOINT", fake.endpoint)
        yield fake


def test_stored_uris_drop_every_signing_parameter_and_keep_the_rest(nucleus: FakeNucleus, run_cli: Any,
                                                                     store: Store, tmp_path: Any) -> None:
    for kind, query in SIGNATURES.items():
        url = f"{nucleus.server.url}/images/ds_1/{kind}.png?{query}"
        nucleus.add_item("ds_1", FakeItem(kind, [("dog", 2, 2, 10, 10)], {"item": {
            "reference_id": kind, "processed_url": url}}), slice_id="slc_1")
    nucleus.add_item("ds_1", FakeItem("userinfo", [], {"item": {
        "reference_id": "userinfo",
        "processed_url": nucleus.server.url.replace("://", "://alice:PASSSECRET@") + "/images/ds_1/userinfo.png"}}),
        slice_id="slc_1")

    result = run_cli("pull", "--source", "nucleus", "--slice", "slc_1", "--dataset", "signed")
    assert result.exit_code == 0, result.stderr
    exported = run_cli("export", "--dataset", "signed", "--out", str(tmp_path / "out"))
    assert exported.exit_code == 0, exported.stderr

    uris = {item.id: item.image.uri for item in store.open("signed").items()}
    for kind in SIGNATURES:
        assert uris[kind] == f"{nucleus.server.url}/images/ds_1/{kind}.png?variant=large"
    assert uris["userinfo"] == f"{nucleus.server.url}/images/ds_1/userinfo.png"
    everything = b"".join(p.read_bytes() for root in (store.home, tmp_path / "out")
                          for p in root.rglob("*") if p.is_file() and not p.suffix == ".png")
    for secret in ("SECRET", "AKIAEXAMPLE", "X-Amz-", "X-Goog-", "sig=", "PASSSECRET"):
        at = everything.find(secret.encode())
        assert at < 0, (secret, everything[max(0, at - 300):at + 60])
