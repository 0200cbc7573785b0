"""Bounded by construction (issue 13): what one request, one body or one codec may
cost is checked before the work, with a 4xx that names the limit. Each case here
is one that was measured against a real server (see the issue)."""

from __future__ import annotations

import asyncio
import base64
import copy

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from embquant import codecs
from embquant.api import create_app
from embquant.api.codec_cache import CodecCache
from embquant.settings import Settings
from tests.support.api import b64, err

X = np.random.default_rng(3).standard_normal((8, 16)).astype(np.float32)






@pytest.fixture(scope="module")
def client():
    app = create_app(Settings(device="cpu", max_dim=4096, max_output_bytes=64 * 1024, max_codec_bytes=200_000,
                              max_body_bytes=1 << 20))
    with TestClient(app) as c:
        yield c


def absmax_codec(dim: int) -> dict:
    return {"format_version": 1, "scheme": "absmax", "scheme_version": 1, "dim": dim, "params": {"bits": 4}, "state": {}}


# -- output amplification -----------------------------------------------------------
def test_codec_dim_is_bounded_by_max_dim(client):
    # the measured case: a 33,554,432-dimension codec with a few rows of codes
    # (a 22 MB request that answered 716 MB); refused before any decoding
    codes = np.zeros((2, 33_554_432 // 16), np.int64)[:, :4]
    body = {"codes": b64(codes), "side": b64(np.ones((2, 1), np.float32)), "codec": absmax_codec(33_554_432)}
    err(client.post("/dequantize", json=body), 400, "validation", "33554432", "4096", "EMBQUANT_MAX_DIM")
    err(client.post("/quantize", json={"vectors": b64(X), "codec": absmax_codec(10**7)}), 400, "validation",
        "EMBQUANT_MAX_DIM")


def test_decoded_answer_is_bounded(client):
    # 4096 dims at 4 bits: 256 words in, 16 KiB out per row; 5 rows are over 64 KiB
    codec = absmax_codec(4096)
    body = {"codes": b64(np.zeros((5, 256), np.int64)), "side": b64(np.ones((5, 1), np.float32)), "codec": codec}
    err(client.post("/dequantize", json=body), 413, "payload_too_large",
        "81920 bytes", "65536", "EMBQUANT_MAX_OUTPUT_BYTES", "at most 4 rows")
    body = {"codes": b64(np.zeros((4, 256), np.int64)), "side": b64(np.ones((4, 1), np.float32)), "codec": codec}
    r = client.post("/dequantize", json=body)
    assert r.status_code == 200 and r.json()["shape"] == [4, 4096]


def test_encoded_answer_refused_over_limit():
    app = create_app(Settings(device="cpu", max_output_bytes=4096))
    with TestClient(app) as c:
        x = np.ones((400, 2), np.float32)  # 8-bit absmax: one word and one side value per row
        err(c.post("/quantize", json={"vectors": b64(x), "scheme": "absmax", "params": {"bits": 8}}), 413,
            "payload_too_large", "4800 bytes", "400 rows x 12 bytes", "4096", "EMBQUANT_MAX_OUTPUT_BYTES")
        ok = c.post("/quantize", json={"vectors": b64(x[:300]), "scheme": "absmax", "params": {"bits": 8}})
        assert ok.status_code == 200


def test_fitted_codec_must_fit_the_codec_limit():
    app = create_app(Settings(device="cpu", max_codec_bytes=4096))
    with TestClient(app) as c:
        x = np.random.default_rng(0).standard_normal((64, 512)).astype(np.float32)
        r = c.post("/fit", json={"vectors": b64(x), "scheme": "int8"})  # 3 x 512 float32 = 6 KiB of state
        err(r, 413, "payload_too_large", "fitted codec", "4096", "EMBQUANT_MAX_CODEC_BYTES")


@pytest.mark.parametrize("scheme,params", [("transform", {"bits": 2}), ("bitcodes", {"num_bits": 63}),
                                           ("lloyd", {"mode": "fit_dim", "bits": 8})])
def test_a_codec_too_large_is_refused_before_the_fit(monkeypatch, scheme, params):
    """The scheme's bound of its state (transform: the D x D basis; bitcodes: the
    codebook; lloyd fit_dim: a table per dimension) is checked before any fit runs."""
    from embquant import codecs

    s = codecs.get_scheme(scheme)
    app = create_app(Settings(device="cpu", max_codec_bytes=4096))
    x = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    with TestClient(app) as c:  # (the start-up warm-up fits transform: patched after it)
        monkeypatch.setattr(type(s), "fit", lambda *a, **k: pytest.fail("the fit ran"))
        for path, extra in (("/fit", {}), ("/quantize", {})):
            r = c.post(path, json={"vectors": b64(x), "scheme": scheme, "params": params, **extra})
            err(r, 413, "payload_too_large", "up to", "4096", "EMBQUANT_MAX_CODEC_BYTES")


def test_the_bound_holds_for_real_fits():
    """state_bytes is an upper bound of what a fit learns (transform at several budgets)."""
    from embquant import codecs
    import torch

    x = torch.from_numpy(np.random.default_rng(1).standard_normal((300, 40)).astype(np.float32))
    for scheme, params in (("transform", {"bits": 1}), ("transform", {"bits": 8}), ("transform", {"bits": 3.5}),
                           ("lloyd", {"mode": "fit_dim", "bits": 3}), ("lloyd", {"mode": "fit_global", "bits": 2}),
                           ("bitcodes", {"num_bits": 12, "iterations": 1})):
        codec = codecs.fit(scheme, params, x)
        raw = sum(a.nbytes for a in codec.state.values())
        assert raw <= codec.scheme.state_bytes(codec.params, 40), (scheme, params, raw)


# -- the two 500s -----------------------------------------------------------------------
@pytest.mark.parametrize("shape", [[2**32, 2**32], [2**39, 2**39, 2**39], [2**33, 2**31, 0, 1]])
def test_shape_whose_size_overflows_int64(client, shape):
    v = {"dtype": "float32", "shape": shape, "data": ""}
    r = client.post("/quantize", json={"vectors": v, "scheme": "absmax"})
    if 0 in shape:  # 0 bytes expected, and numpy still cannot make the array
        err(r, 400, "validation", "vectors", "shape", str(shape[0]), "cannot be an array")
    else:
        err(r, 400, "validation", "vectors", "bytes do not match", str(shape[0]))


def test_shape_with_too_many_axes(client):
    v = {"dtype": "float32", "shape": [1] * 70, "data": base64.b64encode(b"\0" * 4).decode()}
    err(client.post("/quantize", json={"vectors": v, "scheme": "absmax"}), 400, "validation", "70 dimensions", "at most 4")


def test_codec_nested_deeper_than_orjson_writes(client):
    deep: dict = {}
    for _ in range(300):
        deep = {"a": deep}
    for codec in (deep, {**absmax_codec(16), "params": deep}, {**absmax_codec(16), "extra": deep}):
        for path, body in (("/quantize", {"vectors": b64(X), "codec": codec}),
                           ("/dequantize", {"codes": b64(np.zeros((1, 4), np.int64)), "codec": codec})):
            err(client.post(path, json=body), 400, "validation", "codec", "nested more than 254 levels")


# -- codec validation -------------------------------------------------------------------
def fitted(client, scheme: str, params: dict | None = None) -> dict:
    r = client.post("/fit", json={"vectors": b64(X), "scheme": scheme, "params": params or {}})
    assert r.status_code == 200, r.text
    return r.json()["codec"]


def test_unknown_state_arrays_refused(client):
    junk = b64(np.zeros(1000, np.float32))
    c = absmax_codec(16)
    c["state"] = {"junk": junk}
    err(client.post("/quantize", json={"vectors": b64(X), "codec": c}), 400, "codec_mismatch",
        "unknown arrays ['junk']", "no state")
    c = fitted(client, "lloyd", {"bits": 2, "mode": "fit_global"})
    c["state"]["extra"] = junk
    err(client.post("/quantize", json={"vectors": b64(X), "codec": c}), 400, "codec_mismatch",
        "unknown arrays ['extra']", "levels", "thresholds")


@pytest.mark.parametrize("params", [{"bits": 2, "mode": "fit_global"}, {"bits": 2, "mode": "fit_dim"}])
def test_unsorted_lloyd_tables_refused(client, params):
    c = fitted(client, "lloyd", params)
    for name in ("thresholds", "levels"):
        bad = copy.deepcopy(c)
        a = np.frombuffer(base64.b64decode(c["state"][name]["data"]), np.float32).reshape(c["state"][name]["shape"])
        bad["state"][name] = b64(np.ascontiguousarray(a[..., ::-1]))
        err(client.post("/quantize", json={"vectors": b64(X), "codec": bad}), 400, "codec_mismatch",
            f"codec {name} must be sorted")


def test_negative_binary_scale_refused(client):
    c = fitted(client, "binary", {"scale": "global"})
    c["state"]["scale"] = b64(np.array([-1.0], np.float32))
    err(client.post("/quantize", json={"vectors": b64(X), "codec": c}), 400, "codec_mismatch", "scale", "negative")


def test_codec_size_bounded(client):
    c = absmax_codec(16)
    c["params"] = {"bits": 4, "comment": "x" * 300_000}
    err(client.post("/quantize", json={"vectors": b64(X), "codec": c}), 413, "payload_too_large",
        "200000", "EMBQUANT_MAX_CODEC_BYTES")


def test_codec_cache_bounded_in_bytes_and_entries():
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((64, 256)).astype(np.float32))
    jsons = [codecs.fit("int8", {}, x + i).to_json() for i in range(6)]  # 3 x 256 x 4 = 3 KiB each
    cache = CodecCache(entries=100, max_bytes=10_000)
    for j in jsons:
        cache.get(j)
        assert cache.bytes <= 10_000 or len(cache) == 1
    assert len(cache) == 3 and cache.bytes == 3 * 3072
    cache = CodecCache(entries=2, max_bytes=1 << 30)
    for j in jsons:
        cache.get(j)
    assert len(cache) == 2
    # a codec that grows once used (device tables) is measured again at its next use
    cache = CodecCache(entries=100, max_bytes=1 << 30)
    c = cache.get(jsons[0])
    before = cache.bytes
    c.tensors("cpu")
    cache.get(jsons[0])
    assert cache.bytes == before + 3072


def test_codec_cache_measures_a_codec_only_when_it_grew(monkeypatch):
    """A lookup is on every request's path: the codec's bytes are measured again only
    when its derived state gained an entry, and the total stays what a full measure gives."""
    import embquant.api.codec_cache as cc

    x = torch.from_numpy(np.random.default_rng(1).standard_normal((64, 128)).astype(np.float32))
    j = codecs.fit("int8", {}, x).to_json()
    cache = CodecCache(entries=10, max_bytes=1 << 30)
    calls = []
    real = cc.codec_cost
    monkeypatch.setattr(cc, "codec_cost", lambda c: calls.append(1) or real(c))
    c = cache.get(j)
    first = len(calls)
    for _ in range(5):
        cache.get(j)
    assert len(calls) == first  # unchanged: not measured again
    c.tensors("cpu")
    cache.get(j)
    assert len(calls) == first + 1 and cache.bytes == real(c)


# -- Content-Type ---------------------------------------------------------------------------
@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                   "application/jsonx"])
def test_only_json_bodies(client, ctype):
    headers = {} if ctype is None else {"content-type": ctype}
    r = client.post("/quantize", content=b'{"vectors": [[1.0]], "scheme": "absmax"}', headers=headers)
    err(r, 415, "unsupported_media_type", "application/json", "none" if ctype is None else repr(ctype))


def test_json_with_charset_accepted(client):
    r = client.post("/quantize", content=b'{"vectors": [[1.0, 2.0]], "scheme": "absmax"}',
                    headers={"content-type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_limits_are_advertised(client):
    r = client.get("/limits").json()
    assert r["max_body_bytes"] == 1 << 20 and r["max_output_bytes"] == 64 * 1024
    assert r["max_codec_bytes"] == 200_000 and r["max_dim"] == 4096 and r["keep_alive_s"] == 15


# -- admission and body deadlines, at the ASGI level ----------------------------------------
def asgi_post(app, path: str, chunks, headers, timeout: float = 10, complete: bool = False):
    """POST through the raw ASGI interface; ``chunks`` are the body messages (each
    saying more is to come, or with ``complete`` the last one saying it is the end),
    after which receive() never returns (a client that stopped sending). Returns
    (status, headers, body, number of receive() calls)."""
    sent: list[dict] = []
    calls = 0

    async def receive():
        nonlocal calls
        calls += 1
        if calls <= len(chunks):
            last = complete and calls == len(chunks)
            return {"type": "http.request", "body": chunks[calls - 1], "more_body": not last}
        await asyncio.Event().wait()

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()], "client": ("t", 1), "server": ("t", 80)}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body, calls


def test_content_length_larger_than_body_answers_408():
    import orjson

    app = create_app(Settings(device="cpu", body_timeout_s=0.3))
    status, headers, body, _ = asgi_post(app, "/quantize", [b'{"vectors": '],
                                         {"content-type": "application/json", "content-length": "1000"})
    assert status == 408 and headers[b"connection"] == b"close"
    e = orjson.loads(body)["error"]
    assert e["type"] == "request_timeout" and "0.3 s" in e["message"] and "EMBQUANT_BODY_TIMEOUT_S" in e["message"]
    assert "12 bytes received" in e["message"]


def _admission(settings, inner):
    from embquant.api.limits import Admission

    class Idle:
        queue_depth = 0
        expected_wait_s = 0.0

    return Admission(inner, settings, Idle())


def test_slow_body_answers_408_and_a_prompt_one_outlives_the_body_deadline():
    """One timer bounds the whole body: a body still trickling in at the deadline gets
    408 (with the bytes seen); one that came in time is never cut off afterwards,
    however long its work takes."""
    import orjson

    from embquant.api.errors import error_response
    from embquant.errors import RequestTimeout

    async def inner(scope, receive, send):
        body = b""
        try:
            while True:
                msg = await receive()
                body += msg.get("body", b"")
                if not msg.get("more_body"):
                    break
        except RequestTimeout as e:
            return await error_response(408, e.type, e.message)(scope, receive, send)
        await asyncio.sleep(0.5)  # work that outlasts the body deadline
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    st = Settings(device="cpu", body_timeout_s=0.3)
    scope = {"type": "http", "method": "POST", "path": "/quantize",
             "headers": [(b"content-type", b"application/json")]}

    def run(gap: float, n: int):
        sent, calls = [], 0

        async def receive():
            nonlocal calls
            calls += 1
            await asyncio.sleep(gap)
            return {"type": "http.request", "body": b"x" * 10, "more_body": calls < n}

        async def send(msg):
            sent.append(msg)

        asyncio.run(asyncio.wait_for(_admission(st, inner)(scope, receive, send), 5))
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return sent[0]["status"], body

    status, body = run(0.1, 20)  # 2 s of trickle against 0.3 s
    assert status == 408
    msg = orjson.loads(body)["error"]["message"]
    assert "0.3 s" in msg and "bytes received" in msg and int(msg.split("; ")[-1].split()[0]) in (20, 30)
    status, body = run(0.01, 5)  # in time: its 0.5 s of work is not cut at 0.3 s
    assert status == 200 and body == b"x" * 50


def test_full_queue_refused_before_the_body_is_read():
    app = create_app(Settings(device="cpu", queue_size=2, retry_after_s=3))

    class Full:
        queue_depth = 2
        expected_wait_s = 0.0

    # the middleware reads the worker it was given: swap in a full one
    mw = app.front
    node = mw
    while not hasattr(node, "worker"):
        node = node.app
    node.worker = Full()
    # A refused body is read to its end and dropped (never parsed or kept), so the
    # client, still sending, gets the answer and not a reset; the connection stays usable.
    status, headers, body, calls = asgi_post(mw, "/quantize", [b"x" * 1000] * 16, complete=True,
                                             headers={"content-type": "application/json", "content-length": "16000"})
    assert status == 429 and headers[b"retry-after"] == b"3" and calls == 16 and b"connection" not in headers
    assert b"work queue is full (2 jobs)" in body
    # Beyond DRAIN_FACTOR x the limit it is not read at all: answered, and the connection closed.
    status, headers, body, calls = asgi_post(mw, "/quantize", [b"{}"], {"content-type": "application/json",
                                                                        "content-length": "999999999"})
    assert status == 413 and calls == 0 and b"EMBQUANT_MAX_BODY_BYTES" in body and headers[b"connection"] == b"close"
    status, headers, body, calls = asgi_post(mw, "/quantize", [b"ab"], {"content-type": "text/plain"}, complete=True)
    assert status == 415 and calls == 1 and b"connection" not in headers


def test_streamed_body_over_the_limit_closes():
    import orjson

    app = create_app(Settings(device="cpu", max_body_bytes=4096))
    status, headers, body, _ = asgi_post(app, "/quantize", [b"x" * 3000, b"x" * 3000, b""],
                                         {"content-type": "application/json"})
    assert status == 413 and headers[b"connection"] == b"close"
    assert "4096" in orjson.loads(body)["error"]["message"]


def test_by_name_requests_parse_their_params_once(client, monkeypatch):
    """A repeated by-name request is resolved from what it sent (no params parse) to the
    same codec; other params, another dimension, refused params and params JSON has no
    form for each go through the parse."""
    import embquant.api.routes as routes

    calls = []
    real = routes._scheme_params
    monkeypatch.setattr(routes, "_scheme_params", lambda *a: calls.append(a[:2]) or real(*a))
    x = np.random.default_rng(5).standard_normal((3, 24)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # norm="unit" refuses other rows

    def q(params, rows=x, **kw):
        r = client.post("/quantize", json={"vectors": rows.tolist(), "scheme": "lloyd", "params": params}, **kw)
        return r

    first = q({"bits": 3, "norm": "unit"})
    assert first.status_code == 200, first.text
    again = q({"norm": "unit", "bits": 3})  # same params, other key order
    assert again.status_code == 200 and again.json()["codec_id"] == first.json()["codec_id"]
    assert again.json()["codes"] == first.json()["codes"]
    assert calls == [("lloyd", {"bits": 3, "norm": "unit"})]
    # the checks of the rows against the codec still run on a remembered codec
    err(q({"bits": 3, "norm": "unit"}, rows=x * 2), 400, "validation", "needs unit-norm vectors")
    assert len(calls) == 1
    other = q({"bits": 2, "norm": "unit"})
    assert other.status_code == 200 and other.json()["codec_id"] != first.json()["codec_id"]
    wider = q({"bits": 3, "norm": "unit"}, rows=np.full((1, 32), 32**-0.5, np.float32))
    assert wider.status_code == 200 and wider.json()["codec_id"] != first.json()["codec_id"]
    assert len(calls) == 3
    for _ in range(2):  # refused params are refused every time, not remembered
        err(q({"bits": 99}), 400, "validation", "bits")
    assert len(calls) == 5
