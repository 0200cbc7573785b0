"""End to end: the real server, the real client."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import numpy as np
import pytest
import torch

import embquant_client as ec
from embquant import codecs
from embquant_client import AsyncClient, Client


def in_process(codec_json, x):
    codec = codecs.codec_from_json(codec_json)
    codes, side = codecs.encode(codec, torch.from_numpy(x))
    return codes.numpy(), None if side is None else side.numpy()


def test_batch_invariance_200_concurrent_requests(server):
    """200 concurrent requests of different sizes and schemes; each answer equals
    that request encoded alone in-process."""
    rng = np.random.default_rng(7)
    sample = rng.standard_normal((256, 48)).astype(np.float32)
    shared = [codecs.fit(name, ex, torch.from_numpy(sample)).to_json()
              for name, s in codecs.all_schemes().items() for ex in s.examples[:1]]
    reqs = []
    for i in range(200):
        x = (rng.standard_normal((int(rng.integers(1, 40)), 48)) * rng.uniform(0.1, 10)).astype(np.float32)
        if i % 4 == 3:  # fit on the request's own vectors
            reqs.append((x, None, ("absmax", {"bits": int(rng.integers(2, 9))}) if i % 8 == 3 else ("distributional", {"bits": 3})))
        else:
            reqs.append((x, shared[i % len(shared)], None))

    async def main():
        async with AsyncClient(server.url, max_retries=0, timeout=120) as c:
            async def one(x, codec, scheme):
                if codec is not None:
                    return await c.quantize(x, codec=codec)
                return await c.quantize(x, scheme[0], **scheme[1])
            return await asyncio.gather(*(one(*r) for r in reqs))

    before = httpx.get(server.url + "/metrics").text
    results = asyncio.run(main())
    for (x, codec, scheme), enc in zip(reqs, results):
        if codec is None:
            codec = codecs.fit(scheme[0], scheme[1], torch.from_numpy(x)).to_json()
            assert enc.codec == codec  # the fit saw this request's vectors only
        codes, side = in_process(codec, x)
        assert np.array_equal(enc.codes, codes)
        if side is not None:
            assert np.array_equal(enc.side, side)
    after = httpx.get(server.url + "/metrics").text

    def batches(text):
        return sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith('embquant_batch_rows_count{op="encode"}'))

    assert batches(after) - batches(before) < 200  # requests really were batched together


def test_real_embeddings_round_trip_at_4_bits(server, minilm):
    """Real MiniLM embeddings through HTTP at 4 bits: the error the codec predicts in-process."""
    x = minilm[:400]
    with Client(server.url) as c:
        fitted = c.fit(x[:200], "distributional", bits=4)
        enc = c.quantize(x, codec=fitted, quality=True)
        y = c.dequantize(enc)
    codec = codecs.codec_from_json(fitted.codec)
    codes, side = codecs.encode(codec, torch.from_numpy(x))
    expect = codecs.decode(codec, codes, side).numpy()
    assert np.array_equal(enc.codes, codes.numpy())
    assert np.array_equal(y, expect)
    rel = float(((x - y) ** 2).sum() / (x**2).sum())
    assert rel == pytest.approx(enc.quality["relative_squared_error"], rel=1e-5)
    assert rel < 0.02  # 4-bit scalar quantization of real embeddings: about 0.01
    assert enc.codes.dtype == np.int64 and enc.codes.shape == (400, 384 // 16)


def test_client_errors_are_typed(server):
    with Client(server.url, max_retries=0) as c:
        with pytest.raises(ec.UnknownSchemeError, match="known schemes"):
            c.quantize(np.ones((2, 4)), "nope")
        with pytest.raises(ec.BadRequestError, match="bits"):
            c.quantize(np.ones((2, 4)), "absmax", bits=1)
        enc = c.quantize(np.ones((2, 4)), "absmax")
        with pytest.raises(ec.CodecMismatchError, match="words per row"):
            c.dequantize(np.zeros((2, 5), np.int64), enc.side, codec=enc.codec)
    with Client("http://127.0.0.1:9", max_retries=1) as c:
        with pytest.raises(ec.APIConnectionError):
            c.schemes()


def test_sigterm_drains_accepted_requests(server_factory):
    """Shutdown during load: every request the server accepted gets its full answer;
    the rest are refused at connect time, none is cut off or answered 5xx."""
    srv = server_factory(max_wait_ms=30)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((int(rng.integers(200, 2000)), 128)).astype(np.float32) for _ in range(60)]
    outcomes: list = [None] * len(xs)

    async def main():
        limits = httpx.Limits(max_keepalive_connections=0)  # a fresh connection per request
        async with httpx.AsyncClient(limits=limits, timeout=60) as http:
            c = AsyncClient(srv.url, max_retries=0, http_client=http)

            async def one(i, x):
                await asyncio.sleep(i * 0.01)
                try:
                    outcomes[i] = await c.quantize(x, "absmax", bits=4)
                except ec.APIConnectionError as e:
                    outcomes[i] = e
                except ec.APIStatusError as e:
                    outcomes[i] = e

            tasks = [asyncio.create_task(one(i, x)) for i, x in enumerate(xs)]
            await asyncio.sleep(0.25)
            srv.proc.send_signal(15)
            await asyncio.gather(*tasks)

    t0 = time.monotonic()
    asyncio.run(main())
    assert srv.proc.wait(60) in (0, -15)  # uvicorn re-raises SIGTERM after a graceful shutdown
    done = [o for o in outcomes if not isinstance(o, Exception)]
    failed = [o for o in outcomes if isinstance(o, Exception)]
    assert done, f"no request was accepted before the signal: {[repr(o)[:200] for o in failed[:3]]}"
    # Requests the app never received were refused at the connection level (the
    # client retries those; behind a load balancer they go to another replica).
    for o in failed:
        assert isinstance(o, ec.APIConnectionError) or getattr(o, "status_code", 0) == 503, repr(o)
    # Every request the app received was answered, and the client got each answer.
    m = re.search(r"drained: (\d+) requests started, (\d+) answered", srv.output())
    assert m, srv.output()[-2000:]
    started, answered = int(m.group(1)), int(m.group(2))
    assert started == answered
    assert answered == len(done) + 1  # + the readiness probe
    for x, o in zip(xs, outcomes):
        if not isinstance(o, Exception):
            assert o.codes.shape == (x.shape[0], 128 // 16)
    assert time.monotonic() - t0 < 60


def test_large_arrays_go_in_chunks_with_the_same_codes(server, minilm):
    x = minilm[:500]
    with Client(server.url) as c:
        fitted = c.fit(x[:200], "lloyd", bits=3)
        whole = c.quantize(x, codec=fitted, quality=True, chunk_rows=None)
        chunked = c.quantize(x, codec=fitted, quality=True, chunk_rows=64)
        assert np.array_equal(whole.codes, chunked.codes) and np.array_equal(whole.side, chunked.side)
        assert chunked.shape == (500, 384)
        assert chunked.quality["relative_squared_error"] == pytest.approx(whole.quality["relative_squared_error"], rel=1e-6)
        assert chunked.quality["mean_cosine"] == pytest.approx(whole.quality["mean_cosine"], rel=1e-6)
        assert np.array_equal(c.dequantize(chunked, chunk_rows=77), c.dequantize(whole, chunk_rows=None))

    async def main():
        async with AsyncClient(server.url) as ac:
            enc = await ac.quantize(x, codec=fitted, chunk_rows=50, concurrency=3)
            return enc, await ac.dequantize(enc, chunk_rows=50)

    enc, y = asyncio.run(main())
    assert np.array_equal(enc.codes, whole.codes)
    assert y.shape == x.shape


def test_client_score_matches_in_process(server):
    """Client.score and AsyncClient.score against a real server: the top k equal the
    in-process scoring of the same codes; the codec travels once, then by id."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((500, 64)).astype(np.float32)
    q = rng.standard_normal((4, 64)).astype(np.float32)
    with Client(server.url) as c:
        fitted = c.fit(x, "lloyd", bits=4, mode="fit_dim")
        enc = c.quantize(x, codec=fitted)
        got = c.score(q, enc, k=5, metric="cosine")
        every = c.score(q, enc, all=True)
    codec = codecs.codec_from_json(fitted.codec)
    want_s, want_i = codecs.score(codec, torch.from_numpy(q), torch.from_numpy(enc.codes), torch.from_numpy(enc.side),
                                  5, "cosine")
    assert np.array_equal(got.indices, want_i.numpy()) and np.array_equal(got.scores, want_s.numpy())
    assert every.indices is None and every.scores.shape == (4, 500)

    async def main():
        async with AsyncClient(server.url) as c:
            return await c.score(q, enc, k=5, metric="cosine")

    assert np.array_equal(asyncio.run(main()).indices, want_i.numpy())


def test_sigterm_stops_fits_and_answers_503_never_500(server_factory):
    """SIGTERM with a long fit and a slow encode in flight, and a grace period shorter
    than both: the fit is stopped at once (503), the encode is answered (200 if it
    finished, else 503 one second before the grace period ends); no 500, no lost
    connection, and the process exits within the grace period."""
    srv = server_factory(graceful_timeout_s=3)
    rng = np.random.default_rng(9)
    sample = rng.standard_normal((4000, 64)).astype(np.float32)
    slow = rng.standard_normal((150, 384)).astype(np.float32)
    outcome: dict = {}

    async def main():
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=120) as http:
            async def post(name, body):
                t0 = time.monotonic()
                try:
                    r = await http.post(srv.url + "/" + name.split("-")[0], json=body)
                    outcome[name] = (r.status_code, r.json(), time.monotonic() - t0)
                except httpx.HTTPError as e:
                    outcome[name] = ("transport", repr(e), time.monotonic() - t0)

            fit = asyncio.create_task(post("fit", {"scheme": "bitcodes", "vectors": sample.tolist(), "params": {
                "num_bits": 64, "iterations": 1000, "max_seconds": 60, "init": "random"}}))
            enc = asyncio.create_task(post("quantize-slow", {"vectors": slow.tolist(), "scheme": "hqq", "params": {
                "iterations": 1000, "early_stop": False}}))
            await asyncio.sleep(1.0)
            t_signal = time.monotonic()
            srv.proc.send_signal(15)
            await asyncio.gather(fit, enc)
            return t_signal

    t_signal = asyncio.run(main())
    assert srv.proc.wait(30) in (0, -15)
    exited = time.monotonic() - t_signal
    status, body, _ = outcome["fit"]
    assert status == 503 and body["error"]["type"] == "unavailable" and "fit was stopped" in body["error"]["message"], outcome
    status, body, _ = outcome["quantize-slow"]
    assert status in (200, 503), outcome
    if status == 503:
        assert "shutting down" in body["error"]["message"]
    assert exited < 3 + 10  # the grace period, plus the worker's drain and the process's exit
    assert "CancelledError" not in srv.output()
