"""The device side, the batching worker and the API on every device present (the CPU,
and CUDA where a GPU is: `bench/gpu_check.sh` runs these there), each against the
CPU's own answer computed job by job in process: batching on a device never changes a
code, a side value, a decoded float or a top-k. On the CPU alone they check batching
against the reference; their reason to exist is the CUDA run, where the worker and the
API set ``device="cuda"`` and every transfer, batch split and pinned result buffer is
the GPU's.
"""

from __future__ import annotations

import asyncio

import msgpack
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from embquant import codecs
from embquant.api import create_app
from embquant.codecs.score import rescore
from embquant.settings import Settings
from embquant.worker import DecodeJob, EncodeJob, Worker
from embquant.worker import device as dev
from embquant.worker.batcher import ScoreJob

D = 48
CASES = [("lloyd", {"bits": 4}), ("lloyd", {"bits": 2, "mode": "fit_dim"}), ("absmax", {"bits": 8}), ("tcq", {"bits": 4}),
         ("transform", {"bits": 2, "trellis": True}), ("binary", {}), ("hqq", {"bits": 4, "group_size": 16}),
         ("blockwise", {}), ("bitcodes", {"num_bits": 32, "iterations": 20})]
IDS = [f"{s}-{'-'.join(f'{k}{v}' for k, v in p.items())}" for s, p in CASES]


def rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fitted(scheme: str, params: dict) -> codecs.Codec:
    return codecs.fit(scheme, params, torch.from_numpy(rows(400, 0)))  # fitted on the CPU


def reference(codec, x):
    codes, side = codecs.encode(codec, torch.from_numpy(x))
    return codes.numpy(), None if side is None else side.numpy()


def same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


@pytest.mark.parametrize(("scheme", "params"), CASES, ids=IDS)
def test_device_batches_equal_the_cpu_job_by_job(device, scheme, params):
    codec = fitted(scheme, params)
    xs = [rows(n, seed) for n, seed in ((1, 1), (37, 2), (1500, 3))]  # the last one's results are pinned on CUDA
    jobs = [EncodeJob(rows=x.shape[0], timeout_s=60, codec=codec, x=x) for x in xs]
    got = dev.run_group("encode", jobs, torch.device(device))
    for x, r in zip(xs, got):
        assert not isinstance(r, Exception), r
        codes, side = reference(codec, x)
        assert np.array_equal(r.codes, codes) and same(r.side, side)
    dec = [DecodeJob(rows=r.codes.shape[0], timeout_s=60, codec=codec, codes=r.codes, side=r.side) for r in got]
    for r, y in zip(got, dev.run_group("decode", dec, torch.device(device))):
        assert not isinstance(y, Exception), y
        want = codecs.decode(codec, torch.from_numpy(r.codes), None if r.side is None else torch.from_numpy(r.side))
        assert np.array_equal(y, want.numpy())
    q = rows(3, 9)
    enc = got[2]
    job = ScoreJob(rows=3 * 1500, timeout_s=60, codec=codec, queries=q, codes=enc.codes, side=enc.side, k=5)
    (s,) = dev.run_group("score", [job], torch.device(device))
    assert not isinstance(s, Exception), s
    ws, wi = codecs.score(codec, torch.from_numpy(q), torch.from_numpy(enc.codes),
                          None if enc.side is None else torch.from_numpy(enc.side), 5, "dot")
    assert np.array_equal(s.indices, wi.numpy())
    np.testing.assert_allclose(s.scores, ws.numpy(), rtol=1e-5, atol=1e-6)
    # two passes: 40 candidates (by Hamming distance for 1-bit codes), rescored decoded
    first = "hamming" if scheme == "binary" else "codes"
    job = ScoreJob(rows=3 * 1500, timeout_s=60, codec=codec, queries=q, codes=enc.codes, side=enc.side, k=5,
                   candidates=40, first_pass=first)
    (r,) = dev.run_group("score", [job], torch.device(device))
    assert not isinstance(r, Exception), r
    rs, ri = rescore(codec, torch.from_numpy(q), torch.from_numpy(enc.codes),
                     None if enc.side is None else torch.from_numpy(enc.side), 5, "dot", 40, None, first)
    assert np.array_equal(r.indices, ri.numpy())
    np.testing.assert_allclose(r.scores, rs.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned result buffers are CUDA's")
def test_large_results_come_off_the_gpu_into_pinned_memory():
    t = torch.arange(1 << 16, dtype=torch.float32, device="cuda")
    a = dev._np(t)
    assert torch.from_numpy(a).is_pinned() and np.array_equal(a, np.arange(1 << 16, dtype=np.float32))
    small = dev._np(t[:8])
    assert not torch.from_numpy(small).is_pinned() and np.array_equal(small, np.arange(8, dtype=np.float32))


def test_the_worker_batches_concurrent_jobs_on_the_device(device):
    codec = fitted("lloyd", {"bits": 4})
    xs = [rows(n, 10 + n) for n in (1, 2, 5, 300, 1, 64)]

    async def main():
        w = Worker(Settings(device=device, max_wait_ms=50))
        await w.start()
        try:
            enc = await asyncio.gather(*(w.submit(EncodeJob(rows=x.shape[0], timeout_s=60, codec=codec, x=x))
                                         for x in xs))
            dec = await asyncio.gather(*(w.submit(DecodeJob(rows=r.codes.shape[0], timeout_s=60, codec=codec,
                                                            codes=r.codes, side=r.side)) for r in enc))
        finally:
            await w.stop()
        return enc, dec

    enc, dec = asyncio.run(main())
    for x, r, y in zip(xs, enc, dec):
        codes, side = reference(codec, x)
        assert np.array_equal(r.codes, codes) and same(r.side, side)
        assert np.array_equal(y, codecs.decode(codec, torch.from_numpy(codes), torch.from_numpy(side)).numpy())


def test_the_api_answers_on_the_device_as_on_the_cpu(device):
    x = rows(700, 20)
    mp = {"content-type": "application/msgpack", "accept": "application/msgpack"}

    def arr(a):
        return {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.tobytes()}

    def unarr(o):
        return np.frombuffer(o["data"], np.dtype(o["dtype"])).reshape(o["shape"])

    with TestClient(create_app(Settings(device=device))) as c:
        def post(path, obj):
            r = c.post(path, content=msgpack.packb(obj, use_bin_type=True), headers=mp)
            assert r.status_code == 200, r.text[:300]
            return msgpack.unpackb(r.content)

        assert c.get("/readyz").json()["device"].split(":")[0] == device
        fit = post("/fit", {"scheme": "transform", "params": {"bits": 4, "trellis": True}, "vectors": arr(x[:400])})
        codec = codecs.codec_from_json(fit["codec"])
        enc = post("/quantize", {"codec_id": fit["codec_id"], "vectors": arr(x)})
        codes, side = reference(codec, x)
        assert np.array_equal(unarr(enc["codes"]), codes) and same(None if enc.get("side") is None
                                                                   else unarr(enc["side"]), side)
        y = post("/dequantize", {"codec_id": fit["codec_id"], "codes": enc["codes"], "side": enc.get("side")})
        want = codecs.decode(codec, torch.from_numpy(codes), None if side is None else torch.from_numpy(side))
        assert np.array_equal(unarr(y["vectors"]), want.numpy())
        s = post("/score", {"codec_id": fit["codec_id"], "codes": enc["codes"], "side": enc.get("side"),
                            "queries": arr(x[:4]), "k": 10})
        _ws, wi = codecs.score(codec, torch.from_numpy(x[:4]), torch.from_numpy(codes),
                               None if side is None else torch.from_numpy(side), 10, "dot")
        assert np.array_equal(unarr(s["indices"]), wi.numpy())
