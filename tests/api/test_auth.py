"""API keys (EMBQUANT_API_KEYS): 401 with the one error body and WWW-Authenticate
before any body is read, the probes open, every key accepted, nothing logged."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from embquant.api import create_app
from embquant.api.auth import Auth
from embquant.settings import Settings
from tests.support.api import err

KEYS = "k-first-0123456789,k-second-abcdefgh"
FIRST, SECOND = KEYS.split(",")
BODY = {"vectors": [[0.1, 0.2, 0.3]], "scheme": "absmax"}


@pytest.fixture(scope="module")
def client():
    app = create_app(Settings(device="cpu", api_keys=KEYS, max_body_bytes=64 * 1024))
    with TestClient(app) as c:
        yield c


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_probes_are_open_everything_else_needs_a_key(client):
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json()["status"] == "ready"
    for method, path in (("GET", "/limits"), ("GET", "/schemes"), ("GET", "/metrics"), ("GET", "/docs"),
                         ("GET", "/openapi.json"), ("POST", "/quantize"), ("POST", "/fit"), ("GET", "/nowhere")):
        r = client.request(method, path, json=BODY if method == "POST" else None)
        err(r, 401, "unauthorized", "needs an API key", "Authorization: Bearer")
        assert r.headers["www-authenticate"] == 'Bearer realm="embquant"'


@pytest.mark.parametrize("header", [f"Bearer {FIRST}x", f"Bearer {FIRST[:-1]}", "Bearer ", f"Basic {FIRST}",
                                    FIRST, f"Bearer {FIRST},{SECOND}", f"Bearer {KEYS}"])
def test_a_wrong_key_is_refused(client, header):
    r = client.get("/limits", headers={"Authorization": header})
    err(r, 401, "unauthorized", "not one this service accepts")
    assert r.headers["www-authenticate"] == 'Bearer realm="embquant", error="invalid_token"'
    assert FIRST not in r.text and SECOND not in r.text


def test_every_key_is_accepted(client):
    for key in (FIRST, SECOND):
        assert client.get("/limits", headers=bearer(key)).status_code == 200
        r = client.post("/quantize", json=BODY, headers=bearer(key))
        assert r.status_code == 200, r.text
    # the scheme's name is case-insensitive (RFC 7235)
    assert client.get("/limits", headers={"Authorization": f"bearer {SECOND}"}).status_code == 200


def test_refused_before_the_body_is_read(client):
    # a body over the limit and one that is not JSON: without a key, 401 (not 413 or 400)
    r = client.post("/quantize", content=b"x" * 100_000, headers={"content-type": "application/json"})
    err(r, 401, "unauthorized")
    r = client.post("/quantize", content=b"{not json", headers={"content-type": "application/json"})
    err(r, 401, "unauthorized")
    # with a key the same requests reach Admission and the parser
    r = client.post("/quantize", content=b"x" * 100_000, headers={"content-type": "application/json", **bearer(FIRST)})
    err(r, 413, "payload_too_large")
    r = client.post("/quantize", content=b"{not json", headers={"content-type": "application/json", **bearer(FIRST)})
    assert r.status_code == 400


def test_401s_are_counted(client):
    before = _count(client, "embquant_errors_total", type="unauthorized")
    client.get("/schemes")
    client.get("/schemes", headers=bearer("nope"))
    assert _count(client, "embquant_errors_total", type="unauthorized") == before + 2
    assert _count(client, "embquant_requests_total", route="/schemes", status="401") >= 2


def _count(client, name, **labels) -> float:
    text = client.get("/metrics", headers=bearer(FIRST)).text
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def test_keys_are_never_logged_or_shown(caplog):
    caplog.set_level(logging.DEBUG)
    settings = Settings(device="cpu", api_keys=KEYS)
    assert FIRST not in repr(settings) and FIRST not in str(settings.model_dump())
    with TestClient(create_app(settings)) as c:
        c.get("/limits", headers=bearer(FIRST))
        c.get("/limits", headers=bearer(FIRST + "wrong"))
        c.get("/limits")
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert FIRST not in text and SECOND not in text


def test_no_keys_no_layer_and_settings_parsing(monkeypatch):
    app = create_app(Settings(device="cpu"))
    layer, seen = app.front, []
    while layer is not None:
        seen.append(type(layer).__name__)
        layer = getattr(layer, "app", None)
    assert "Auth" not in seen and "Admission" in seen
    with TestClient(app) as c:
        assert c.get("/limits").status_code == 200
    monkeypatch.setenv("EMBQUANT_API_KEYS", " a-key , another-key ,")
    assert Settings().api_key_list() == ["a-key", "another-key"]
    monkeypatch.setenv("EMBQUANT_API_KEYS", "")
    assert Settings().api_key_list() == []
    monkeypatch.setenv("EMBQUANT_API_KEYS", " , ")
    with pytest.raises(ValueError, match="only commas"):
        Settings()


def test_the_comparison_checks_every_key():
    auth = Auth(None, ["one-key", "two-key"], settings=None)
    assert auth.allows(b"Bearer one-key") and auth.allows(b"Bearer two-key") and auth.allows(b"  Bearer   two-key ")
    assert not auth.allows(None) and not auth.allows(b"Bearer one-ke") and not auth.allows(b"Token one-key")
    calls = []
    import embquant.api.auth as mod

    real = mod.hmac.compare_digest

    def spy(a, b):
        calls.append(1)
        return real(a, b)

    mod.hmac.compare_digest, saved = spy, mod.hmac.compare_digest
    try:
        auth.allows(b"Bearer one-key")  # matches the first key, still compared with the second
    finally:
        mod.hmac.compare_digest = saved
    assert len(calls) == 2
