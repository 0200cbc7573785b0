"""The client on a mock transport: error mapping, retries, wire forms, bit helpers."""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest

import embquant_client as ec
from embquant_client import _core


def mock(responses):
    calls = []

    def handler(request: httpx.Request):
        calls.append(json.loads(request.content) if request.content else None)
        r = responses[min(len(calls) - 1, len(responses) - 1)]
        if isinstance(r, Exception):
            raise r
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)  # fresh stream per call

    return httpx.MockTransport(handler), calls


def err(status, type_, msg="m", headers=None):
    return httpx.Response(status, json={"error": {"type": type_, "message": msg}}, headers=headers)


OK = httpx.Response(200, json={"codes": {"dtype": "int64", "shape": [1, 1], "data": base64.b64encode(np.array([5], np.int64).tobytes()).decode()},
                               "side": None, "shape": [1, 3], "layout": {"bits": 4, "symbols": 3}, "codec": {"scheme": "x"}})


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    slept = []
    monkeypatch.setattr(_core.random, "random", lambda: 1.0)
    monkeypatch.setattr("time.sleep", lambda s: slept.append(s))
    return slept


def client(responses, **kw):
    transport, calls = mock(responses)
    c = ec.Client("http://t", http_client=httpx.Client(transport=transport, base_url="http://t"), **kw)
    return c, calls


def test_retries_429_honouring_retry_after(no_sleep):
    c, calls = client([err(429, "overloaded", headers={"Retry-After": "2"}), err(503, "unavailable"), OK])
    enc = c.quantize(np.ones(3), "absmax")
    assert enc.codes.tolist() == [[5]] and len(calls) == 3
    assert no_sleep == [2.0, 0.5]  # Retry-After, then backoff base 0.25 * 2**1


def test_connection_errors_retried_then_raised(no_sleep):
    c, calls = client([httpx.ConnectError("refused")], max_retries=2)
    with pytest.raises(ec.APIConnectionError):
        c.schemes()
    assert len(calls) == 3 and no_sleep == [0.25, 0.5]


def test_backoff_is_capped():
    p = _core.RetryPolicy(backoff_base=1, backoff_max=4)
    assert max(p.delay(a) for a in range(10)) <= 4


def test_bad_request_not_retried_and_typed():
    c, calls = client([err(400, "unknown_scheme", "unknown scheme 'x'; known schemes: absmax")])
    with pytest.raises(ec.UnknownSchemeError) as e:
        c.quantize(np.ones((1, 3)), "x")
    assert len(calls) == 1 and e.value.status_code == 400 and "known schemes" in str(e.value)
    assert isinstance(e.value, ec.BadRequestError) and isinstance(e.value, ec.EmbquantClientError)


@pytest.mark.parametrize("status,type_,cls", [(413, "payload_too_large", ec.PayloadTooLargeError), (504, "timeout", ec.TimeoutError),
                                              (400, "codec_mismatch", ec.CodecMismatchError), (500, "internal", ec.InternalServerError)])
def test_error_mapping(status, type_, cls):
    c, _ = client([err(status, type_)], max_retries=0)
    with pytest.raises(cls):
        c.quantize(np.ones((1, 3)), "absmax")


def test_wire_is_base64_little_endian_by_default():
    c, calls = client([OK])
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    c.quantize(x, "absmax", bits=4)
    v = calls[0]["vectors"]
    assert v["dtype"] == "float32" and v["shape"] == [2, 3]
    assert np.array_equal(np.frombuffer(base64.b64decode(v["data"]), "<f4").reshape(2, 3), x)
    assert calls[0]["params"] == {"bits": 4}


def test_async_client_shares_the_core(no_sleep):
    transport, calls = mock([err(429, "overloaded", headers={"Retry-After": "0"}), OK])

    async def main():
        async with ec.AsyncClient("http://t", http_client=httpx.AsyncClient(transport=transport, base_url="http://t")) as c:
            return await c.quantize(np.ones(3), "absmax")

    assert asyncio.run(main()).codes.tolist() == [[5]] and len(calls) == 2


def test_scheme_or_codec_checked_before_sending():
    c, calls = client([OK])
    with pytest.raises(ValueError, match="either scheme"):
        c.quantize(np.array([[1.0]]))
    with pytest.raises(ValueError, match="NaN|JSON"):
        ec.Client("http://t", wire="json", http_client=httpx.Client(transport=mock([OK])[0])).quantize(np.array([[np.nan]]), "absmax")
    assert not calls


def test_bits_helpers():
    bits = np.array([[0, 0, 0, 0], [1, 0, 1, 1], [1, 0, 0, 1]])
    assert ec.to_decimal(bits).tolist() == [0, 11, 9]
    assert np.array_equal(ec.to_bits(np.array([0, 11, 9]), 4), bits)
    enc = ec.Encoded(codes=np.array([[0b1011, -1]], np.int64), side=None, codec=None, shape=(1, 70), layout={"bits": 1, "symbols": 70})
    b = enc.bits()
    assert b.shape == (1, 70) and b[0, :4].tolist() == [1, 1, 0, 1] and b[0, 64:].all()
