"""The clients' API key: api_key= or $EMBQUANT_API_KEY sent as Authorization: Bearer,
a 401 as AuthenticationError (never retried); then both clients (the AsyncClient on
its own transport) against a real service started with EMBQUANT_API_KEYS."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import httpx
import numpy as np
import pytest

import embquant_client as ec

KEY = "client-key-0123456789"


def recording(status: int = 200, body=None):
    seen = []

    def handler(request: httpx.Request):
        seen.append(request.headers.get("authorization"))
        if status == 401:
            return httpx.Response(401, json={"error": {"type": "unauthorized", "message": "needs an API key"}},
                                  headers={"www-authenticate": "Bearer"})
        return httpx.Response(status, json=body or {"status": "ready"})

    return httpx.MockTransport(handler), seen


def sync_client(transport, **kw) -> ec.Client:
    return ec.Client("http://t", http_client=httpx.Client(transport=transport, base_url="http://t"), **kw)


def test_key_from_argument_then_environment(monkeypatch):
    monkeypatch.delenv("EMBQUANT_API_KEY", raising=False)
    t, seen = recording()
    sync_client(t).health()
    sync_client(t, api_key=KEY).health()
    monkeypatch.setenv("EMBQUANT_API_KEY", "from-env")
    sync_client(t).health()
    sync_client(t, api_key=KEY).health()  # the argument wins
    assert seen == [None, f"Bearer {KEY}", "Bearer from-env", f"Bearer {KEY}"]


def test_async_client_sends_the_key(monkeypatch):
    monkeypatch.setenv("EMBQUANT_API_KEY", KEY)
    t, seen = recording()

    async def main():
        async with ec.AsyncClient("http://t", http_client=httpx.AsyncClient(transport=t, base_url="http://t")) as c:
            await c.health()

    asyncio.run(main())
    assert seen == [f"Bearer {KEY}"]


def test_401_is_an_authentication_error_and_not_retried(monkeypatch):
    monkeypatch.delenv("EMBQUANT_API_KEY", raising=False)
    t, seen = recording(401)
    with pytest.raises(ec.AuthenticationError) as e:
        sync_client(t, max_retries=3).health()
    assert len(seen) == 1
    assert e.value.status_code == 401 and e.value.type == "unauthorized"
    assert "api_key=" in str(e.value) and "EMBQUANT_API_KEY" in str(e.value)


def test_a_key_that_cannot_go_in_a_header_is_refused_without_showing_it():
    with pytest.raises(ValueError) as e:
        ec.Client("http://t", api_key="secret part\r\nX-Injected: 1")
    assert "secret" not in str(e.value) and "printable ASCII" in str(e.value)


# -- against the real service ---------------------------------------------------------

def _server_class():
    path = Path(__file__).resolve().parents[1] / "e2e" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_e2e_conftest_for_auth", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Server


@pytest.mark.slow
def test_both_clients_against_a_service_with_keys(monkeypatch):
    pytest.importorskip("embquant")
    monkeypatch.delenv("EMBQUANT_API_KEY", raising=False)
    server = _server_class()(api_keys=f"other-key-abcdefgh,{KEY}", log_level="debug", access_log="true")
    try:
        x = np.random.default_rng(3).standard_normal((40, 16)).astype(np.float32)
        with ec.Client(server.url, api_key=KEY) as c:
            enc = c.quantize(x, "absmax", bits=4)
            y = c.dequantize(enc)
        with ec.Client(server.url) as anonymous, pytest.raises(ec.AuthenticationError, match="needs an API key"):
            anonymous.quantize(x, "absmax", bits=4)

        async def main():
            async with ec.AsyncClient(server.url, api_key=KEY) as ac:
                assert ac._fast is not None  # the client's own HTTP/1.1 transport
                enc2 = await ac.quantize(x, "absmax", bits=4)
                y2 = await ac.dequantize(enc2)
            async with ec.AsyncClient(server.url, api_key="wrong-key-000") as bad:
                with pytest.raises(ec.AuthenticationError, match="not one this service accepts"):
                    await bad.quantize(x, "absmax", bits=4)
            return enc2, y2

        enc2, y2 = asyncio.run(main())
        np.testing.assert_array_equal(enc.codes, enc2.codes)
        np.testing.assert_array_equal(y, y2)
        assert httpx.get(server.url + "/readyz").status_code == 200  # the probes need no key
    finally:
        server.stop()
    log = server.output()
    assert "GET /limits" in log or "POST /quantize" in log  # uvicorn's access log ran (asked for), at debug level
    assert KEY not in log and "other-key-abcdefgh" not in log
