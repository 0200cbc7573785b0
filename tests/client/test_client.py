"""The client on a mock transport: error mapping, retries, wire forms, bit helpers."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import time

import httpx
import msgpack
import numpy as np
import pytest

import embquant_client as ec
from embquant_client import _core


def body_of(request: httpx.Request):
    """A request's body as an object, whichever wire form the client used."""
    if not request.content:
        return None
    if request.headers.get("content-type") == "application/msgpack":
        return msgpack.unpackb(request.content, raw=False)
    return json.loads(request.content)


def mock(responses):
    calls = []

    def handler(request: httpx.Request):
        calls.append(body_of(request))
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


@pytest.mark.parametrize("status,type_,cls", [(413, "payload_too_large", ec.PayloadTooLargeError), (504, "timeout", ec.DeadlineExceededError),
                                              (400, "codec_mismatch", ec.CodecMismatchError), (500, "internal", ec.InternalServerError)])
def test_error_mapping(status, type_, cls):
    c, _ = client([err(status, type_)], max_retries=0)
    with pytest.raises(cls):
        c.quantize(np.ones((1, 3)), "absmax")


def test_wire_is_msgpack_with_raw_little_endian_bytes_by_default():
    c, calls = client([OK])
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    c.quantize(x, "absmax", bits=4)
    v = calls[0]["vectors"]
    assert v["dtype"] == "float32" and v["shape"] == [2, 3] and isinstance(v["data"], bytes)
    assert np.array_equal(np.frombuffer(v["data"], "<f4").reshape(2, 3), x)
    assert calls[0]["params"] == {"bits": 4}


def test_base64_wire_form():
    c, calls = client([OK], wire="base64")
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    c.quantize(x, "absmax", bits=4)
    v = calls[0]["vectors"]
    assert np.array_equal(np.frombuffer(base64.b64decode(v["data"]), "<f4").reshape(2, 3), x)


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


# -- retry policy per route, Retry-After, lost connections (issue 13) ----------------------
FITTED = httpx.Response(200, json={"codec": {"scheme": "x", "dim": 3}, "layout": {"words": 1, "side": 0}})


def test_retry_after_http_date_honoured(no_sleep):
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    c, calls = client([err(429, "overloaded", headers={"Retry-After": when}), OK])
    c.quantize(np.ones(3), "absmax")
    assert len(calls) == 2 and 27 <= no_sleep[0] <= 30
    assert _core.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 7) == 7.0
    assert _core.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 + 5) == 0.0
    assert _core.parse_retry_after(" 12 ") == 12.0
    assert _core.parse_retry_after("soon") is None and _core.parse_retry_after("nan") is None


def test_retry_after_over_the_cap_is_raised_not_shortened(no_sleep):
    c, calls = client([err(429, "overloaded", headers={"Retry-After": "120"}), OK])
    with pytest.raises(ec.OverloadedError) as e:
        c.quantize(np.ones(3), "absmax")
    assert len(calls) == 1 and no_sleep == [] and e.value.headers["retry-after"] == "120"
    c, calls = client([err(429, "overloaded", headers={"Retry-After": "120"}), OK],
                      retry=ec.RetryPolicy(max_retry_after=300))
    c.quantize(np.ones(3), "absmax")
    assert len(calls) == 2 and no_sleep == [120.0]


@pytest.mark.parametrize("failure", [err(504, "timeout"), err(500, "internal"), httpx.ReadTimeout("slow"),
                                     httpx.RemoteProtocolError("Server disconnected without sending a response.")])
def test_fit_not_retried_where_it_may_have_run(no_sleep, failure):
    c, calls = client([failure, FITTED])
    with pytest.raises(ec.EmbquantClientError):
        c.fit(np.ones((2, 3)), "int8")
    assert len(calls) == 1 and no_sleep == []
    c, calls = client([failure, OK])  # /quantize without a codec fits too
    with pytest.raises(ec.EmbquantClientError):
        c.quantize(np.ones((2, 3)), "absmax")
    assert len(calls) == 1


@pytest.mark.parametrize("failure", [err(429, "overloaded", headers={"Retry-After": "1"}), err(503, "unavailable"),
                                     err(408, "request_timeout"), httpx.ConnectError("refused")])
def test_fit_retried_where_it_cannot_have_run(no_sleep, failure):
    c, calls = client([failure, FITTED])
    assert c.fit(np.ones((2, 3)), "int8").codec["scheme"] == "x"
    assert len(calls) == 2


@pytest.mark.parametrize("failure", [err(504, "timeout"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("gone")])
def test_encoding_with_a_codec_is_retried_after_a_timeout(no_sleep, failure):
    c, calls = client([failure, OK], limits=ec.Limits())
    c.quantize(np.ones((1, 3)), codec={"scheme": "x", "dim": 3})
    assert len(calls) == 2


def test_connection_lost_mid_answer_is_reported_as_such():
    c, _ = client([httpx.RemoteProtocolError("Server disconnected without sending a response.")], max_retries=0)
    with pytest.raises(ec.APIConnectionLostError) as e:
        c.schemes()
    assert "lost before the answer was complete" in str(e.value) and "could not reach" not in str(e.value)
    assert isinstance(e.value, ec.APIConnectionError)
    c, _ = client([httpx.ConnectError("refused")], max_retries=0)
    with pytest.raises(ec.APIConnectionError) as e:
        c.schemes()
    assert "could not reach the service" in str(e.value) and not isinstance(e.value, ec.APIConnectionLostError)


# -- chunks sized by bytes against the advertised limits -----------------------------------
def test_default_chunks_fit_the_default_body_limit_for_1536_dims():
    # the measured case: 8,192 rows of 1,536 dims were 67 MB as base64, over 64 MiB
    core = _core.Core(wire="base64")
    limits = ec.Limits(max_body_bytes=64 * 1024 * 1024, max_output_bytes=64 * 1024 * 1024)
    codec = {"scheme": "lloyd", "dim": 1536}
    ref = core.codec_ref(codec)
    rows = core.quantize_rows(limits, np.empty((20000, 1536), np.float32), codec, ref, 8192)
    assert rows < 8192
    body = len(_core._dumps({"vectors": _core.encode_array(np.zeros((rows, 1536), np.float32)), "codec": codec}))
    assert body <= 64 * 1024 * 1024
    assert core.quantize_rows(limits, np.empty((20000, 384), np.float32), codec, ref, 8192) == 8192
    # msgpack carries raw bytes: the same limit holds a third more rows, and the body fits
    mp = _core.Core(wire="msgpack")
    rows_mp = mp.quantize_rows(limits, np.empty((20000, 1536), np.float32), codec, ref, 8192)
    call = mp.quantize(np.zeros((rows_mp, 1536), np.float32), None, ref, {}, False, False, None)
    assert rows_mp > rows and len(call.body) <= 64 * 1024 * 1024


def test_chunks_sized_by_the_limits_the_service_advertises():
    seen = []

    def handler(request: httpx.Request):
        if request.url.path == "/limits":
            seen.append("limits")
            return httpx.Response(200, json={"max_body_bytes": 200_000, "max_output_bytes": 1 << 30, "max_rows": 10})
        body = body_of(request)
        seen.append(len(request.content))
        n = body["codes"]["shape"][0] if "codes" in body else body["vectors"]["shape"][0]
        if "codes" in body:
            v = np.zeros((n, 64), np.float32)
            return httpx.Response(200, json={"vectors": {"dtype": "float32", "shape": [n, 64],
                                                         "data": base64.b64encode(v.tobytes()).decode()}, "shape": [n, 64]})
        codes = np.zeros((n, 16), np.int64)
        return httpx.Response(200, json={"codes": {"dtype": "int64", "shape": [n, 16],
                                                   "data": base64.b64encode(codes.tobytes()).decode()},
                                         "side": None, "shape": [n, 64], "layout": {"words": 16, "side": 0}})

    c = ec.Client("http://t", http_client=httpx.Client(transport=httpx.MockTransport(handler), base_url="http://t"))
    codec = {"scheme": "x", "dim": 64}
    enc = c.quantize(np.ones((3000, 64), np.float32), codec=codec)
    assert enc.codes.shape == (3000, 16)
    assert seen[0] == "limits" and seen.count("limits") == 1
    assert len(seen) > 3 and all(n <= 200_000 for n in seen[1:])
    seen.clear()
    y = c.dequantize(enc.codes, codec=codec)  # 128 bytes of codes per row in, 256 out
    assert y.shape == (3000, 64) and "limits" not in seen and all(n <= 200_000 for n in seen)
    # a tight output limit cuts chunks as well: 64 float32 out per row, 100 rows at most
    c2 = ec.Client("http://t", http_client=httpx.Client(transport=httpx.MockTransport(handler), base_url="http://t"),
                   limits=ec.Limits(max_body_bytes=1 << 30, max_output_bytes=25_600))
    seen.clear()
    c2.dequantize(enc.codes[:1000], codec=codec)
    assert len(seen) == 10


def test_older_service_without_limits_gets_safe_defaults():
    c, calls = client([err(404, "not_found"), OK])
    assert c.limits() == ec.Limits() and ec.Limits().max_body_bytes < 64 * 1024 * 1024
    c.limits()
    assert len(calls) == 1


# -- codec ids ------------------------------------------------------------------------------
def ok_with_id(cid: str, rows: int = 1) -> httpx.Response:
    codes = base64.b64encode(np.full(rows, 5, np.int64).tobytes()).decode()
    return httpx.Response(200, json={"codes": {"dtype": "int64", "shape": [rows, 1], "data": codes}, "side": None,
                                     "shape": [rows, 3], "layout": {"words": 1, "side": 0}, "codec_id": cid})


def test_a_fitted_codec_travels_by_id():
    c, calls = client([ok_with_id("a" * 64)], limits=ec.Limits())
    fitted = ec.Fitted(codec={"scheme": "x", "dim": 3}, layout={"words": 1, "side": 0}, codec_id="a" * 64)
    enc = c.quantize(np.ones((1, 3)), codec=fitted)
    assert calls[0]["codec_id"] == "a" * 64 and "codec" not in calls[0]
    assert enc.codec == fitted.codec and enc.codec_id == "a" * 64  # the Encoded still holds the codec itself


def test_unknown_codec_id_resends_the_codec_once_then_uses_the_id():
    codec = {"scheme": "x", "dim": 3}
    c, calls = client([err(404, "unknown_codec", "not known to this replica"), ok_with_id("b" * 64, 2),
                       ok_with_id("b" * 64, 2)], max_retries=0, limits=ec.Limits())
    fitted = ec.Fitted(codec=codec, layout={"words": 1, "side": 0}, codec_id="b" * 64)
    enc = c.quantize(np.ones((4, 3)), codec=fitted, chunk_rows=2)
    assert [("codec_id" in b, "codec" in b) for b in calls] == [(True, False), (False, True), (True, False)]
    assert enc.codes.shape == (4, 1)


def test_a_codec_dict_learns_its_id_from_the_first_answer():
    codec = {"scheme": "x", "dim": 3}
    c, calls = client([ok_with_id("c" * 64)], limits=ec.Limits())
    c.quantize(np.ones((1, 3)), codec=codec)
    c.quantize(np.ones((1, 3)), codec=codec)
    assert "codec" in calls[0] and calls[1] == {**calls[1], "codec_id": "c" * 64} and "codec" not in calls[1]


def test_sync_chunks_go_concurrently_in_order_codec_once_then_its_id():
    """Client.quantize sends chunks ``concurrency`` at a time on threads: the first
    alone with the codec in full, the rest by the id it taught; answers in input order."""
    import threading

    lock, calls, live, most = threading.Lock(), [], [0], [0]
    gate = threading.Event()  # (time.sleep is patched out in this module)

    def handler(request: httpx.Request):
        body = body_of(request)
        with lock:
            calls.append(body)
            live[0] += 1
            most[0] = max(most[0], live[0])
        gate.wait(0.05)
        first = np.frombuffer(body["vectors"]["data"], np.float32)[0]
        rows = body["vectors"]["shape"][0]
        with lock:
            live[0] -= 1
        codes = np.full(rows, int(first), np.int64)
        return httpx.Response(200, json={"codes": {"dtype": "int64", "shape": [rows, 1],
                                                   "data": base64.b64encode(codes.tobytes()).decode()},
                                         "side": None, "shape": [rows, 3], "layout": {"words": 1, "side": 0},
                                         "codec_id": "e" * 64})

    c = ec.Client("http://t", http_client=httpx.Client(transport=httpx.MockTransport(handler), base_url="http://t"),
                  limits=ec.Limits())
    x = np.repeat(np.arange(16, dtype=np.float32), 3).reshape(16, 3)
    enc = c.quantize(x, codec={"scheme": "x", "dim": 3}, chunk_rows=2, concurrency=4)
    assert enc.codes[:, 0].tolist() == [0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12, 12, 14, 14]  # in order
    assert "codec" in calls[0] and all(b.get("codec_id") == "e" * 64 and "codec" not in b for b in calls[1:])
    assert len(calls) == 8 and most[0] > 1  # more than one in flight at once


def test_async_chunks_send_the_codec_once_then_its_id(no_sleep):
    transport, calls = mock([ok_with_id("d" * 64, 2)])
    codec = {"scheme": "x", "dim": 3}

    async def main():
        async with ec.AsyncClient("http://t", http_client=httpx.AsyncClient(transport=transport, base_url="http://t"),
                                  limits=ec.Limits()) as c:
            return await c.quantize(np.ones((8, 3)), codec=codec, chunk_rows=2, concurrency=4)

    enc = asyncio.run(main())
    assert enc.codes.shape == (8, 1)
    assert "codec" in calls[0] and all(b.get("codec_id") == "d" * 64 and "codec" not in b for b in calls[1:])


@pytest.mark.parametrize("rows", [0, 1, 4095, 4096, 16384, 70000])
def test_packb_gives_msgpacks_own_bytes(rows):
    """The client's body writer copies large bins once; its bytes are msgpack's."""
    from embquant_client._arrays import encode_array

    x = np.random.default_rng(rows).random((rows, 4)).astype(np.float32)
    body = {"vectors": encode_array(x, "msgpack"), "quality": False, "codec_id": "a" * 64, "timeout_s": 1.5,
            "codec": {"scheme": "x", "dim": 4, "state": {str(i): i for i in range(20)}},
            "many": {str(i): None for i in range(70_000)}, "b": b"y" * 70_000, "ba": bytearray(65_536), "l": [1, b"z"]}
    assert _core.packb(body) == msgpack.packb(body, use_bin_type=True)


@pytest.mark.parametrize("rows", [1, 4096, 70000])
def test_body_in_pieces_is_msgpacks_bytes_and_lets_go(rows):
    """A body with a large bin goes as a Body: the same bytes as msgpack (whole and
    piece by piece, twice: a retry sends it again), the array never copied whole;
    release() drops the pieces. Small bodies stay plain bytes."""
    from embquant_client._arrays import encode_array

    x = np.random.default_rng(rows).random((rows, 384)).astype(np.float32)
    body = {"vectors": encode_array(x, "msgpack"), "quality": False, "codec_id": "a" * 64,
            "b": b"y" * 70_000, "small": b"z" * 10}
    want = msgpack.packb(body, use_bin_type=True)
    got = _core.pack_body(body)
    assert isinstance(got, _core.Body) and len(got) == len(want)  # (the 70,000-byte field alone makes one)
    assert bytes(got) == want
    assert b"".join(got) == want and b"".join(got) == want
    assert all(len(p) <= _core._PIECE for p in got)
    # a large array is held as a view of the caller's memory, not copied into the body
    shared = any(isinstance(p, memoryview) and np.shares_memory(np.frombuffer(p, np.uint8), x) for p in got.parts)
    assert shared == (x.nbytes >= 65536)
    got.release()
    assert got.parts == [] and b"".join(got) == b""
    assert isinstance(_core.pack_body({"vectors": encode_array(x[:1, :8], "msgpack")}), bytes)


def test_large_bodies_go_in_pieces_and_are_released(monkeypatch):
    """Client sends a Body with its Content-Length (not chunked), the service gets
    msgpack's bytes, and the body is released once the call is over, retried or not."""
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.headers.get("content-length"), request.headers.get("transfer-encoding"),
                     request.read()))
        if len(seen) == 1:
            return httpx.Response(503, json={"error": {"type": "unavailable", "message": "again"}})
        return httpx.Response(200, json={"codes": [[1]] * 5000, "side": None, "shape": [5000, 384], "layout": {}})

    monkeypatch.setattr(time, "sleep", lambda s: None)
    released = []
    real = _core.Body.release
    monkeypatch.setattr(_core.Body, "release", lambda self: released.append(len(self)) or real(self))
    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://t")
    with ec.Client("http://t", http_client=http, limits=ec.Limits()) as c:
        x = np.ones((5000, 384), np.float32)
        enc = c.quantize(x, codec={"scheme": "x", "dim": 384}, chunk_rows=None)
    assert enc.codes.shape == (5000, 1)
    assert len(seen) == 2 and seen[0][2] == seen[1][2]  # the retry sent the same bytes
    assert seen[0][0] == str(len(seen[0][2])) and seen[0][1] is None
    assert msgpack.unpackb(seen[1][2])["vectors"]["data"] == x.tobytes()
    assert released == [len(seen[0][2])]


def test_the_504_error_no_longer_shadows_the_builtin_timeout_error():
    """The 504 error is DeadlineExceededError; the old name TimeoutError still resolves
    (with a DeprecationWarning) until 0.2, and a star import leaves the builtin alone."""
    assert ec.DeadlineExceededError.__name__ == "DeadlineExceededError"
    assert "TimeoutError" not in ec.__all__ and "DeadlineExceededError" in ec.__all__
    with pytest.warns(DeprecationWarning, match="DeadlineExceededError"):
        old = ec.TimeoutError
    assert old is ec.DeadlineExceededError
    scope: dict = {}
    exec("from embquant_client import *", scope)
    assert "TimeoutError" not in scope and scope["DeadlineExceededError"] is ec.DeadlineExceededError
    assert issubclass(ec.APITimeoutError, TimeoutError)  # the client's own timeout is the builtin's kind
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        ec.Nope  # noqa: B018
