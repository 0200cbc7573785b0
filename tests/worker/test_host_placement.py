"""Sequential-loop schemes (tcq, transform trellis, bitcodes) run on the host's compiled
kernels when the worker's device is CUDA: their eager torch on a GPU is 20 times slower
(docs/throughput-cuda.md), and every device gives the same codes. Checked here on a
machine without a GPU: a job sent to the CUDA device that is not placed on the host
could not run at all (this torch cannot move a tensor to CUDA), so a right answer shows
where it ran."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embquant import codecs
from embquant.codecs import kernels
from embquant.worker import DecodeJob, EncodeJob
from embquant.worker import device as dev
from embquant.worker.batcher import FitJob, ScoreJob

CUDA = torch.device("cuda")
D = 48
HOST = [("tcq", {"bits": 4}), ("tcq", {"bits": 2, "norm": "unit"}), ("transform", {"bits": 2, "trellis": True}),
        ("bitcodes", {"num_bits": 32, "iterations": 5})]
DEVICE = [("lloyd", {"bits": 4}), ("transform", {"bits": 2}), ("hqq", {"bits": 4, "group_size": 16}), ("absmax", {})]


def rows(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, D)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fitted(scheme: str, params: dict) -> codecs.Codec:
    return codecs.fit(scheme, params, torch.from_numpy(rows(300, 0)))


def test_placement():
    with kernels.using("numba"):
        for scheme, params in HOST:
            c = fitted(scheme, params)
            assert dev.placed(scheme, c.params, CUDA).type == "cpu", scheme
            assert dev.placed(scheme, c.params, torch.device("cpu")).type == "cpu"
        for scheme, params in DEVICE:
            c = fitted(scheme, params)
            assert dev.placed(scheme, c.params, CUDA).type == "cuda", scheme
    with kernels.using("torch"):  # no compiled kernels to run them: the device's reference
        c = fitted("tcq", {"bits": 4})
        assert dev.placed("tcq", c.params, CUDA).type == "cuda"


@pytest.mark.skipif(torch.cuda.is_available(), reason="shows the placement by CUDA being unusable here")
@pytest.mark.parametrize(("scheme", "params"), HOST, ids=[f"{s}-{p}" for s, p in HOST])
def test_host_bound_jobs_for_cuda_run_on_the_host(scheme, params):
    with kernels.using("numba"):
        codec = fitted(scheme, params)
        xs = [rows(n, seed) for n, seed in ((1, 1), (37, 2))]
        jobs = [EncodeJob(rows=x.shape[0], timeout_s=60, codec=codec, x=x) for x in xs]
        got = dev.run_group("encode", jobs, CUDA)
        for x, r in zip(xs, got):
            assert not isinstance(r, Exception), r
            codes, side = codecs.encode(codec, torch.from_numpy(x))
            assert np.array_equal(r.codes, codes.numpy())
            assert (side is None and r.side is None) or np.array_equal(r.side, side.numpy())
        dec = dev.run_group("decode", [DecodeJob(rows=r.codes.shape[0], timeout_s=60, codec=codec, codes=r.codes,
                                                 side=r.side) for r in got], CUDA)
        for r, y in zip(got, dec):
            assert not isinstance(y, Exception), y
            want = codecs.decode(codec, torch.from_numpy(r.codes), None if r.side is None else torch.from_numpy(r.side))
            assert np.array_equal(y, want.numpy())
        q = rows(3, 5)
        [s] = dev.run_group("score", [ScoreJob(rows=3 * 37, timeout_s=60, codec=codec, queries=q, codes=got[1].codes,
                                                side=got[1].side, k=5)], CUDA)
        assert not isinstance(s, Exception), s
        ws, wi = codecs.score(codec, torch.from_numpy(q), torch.from_numpy(got[1].codes),
                              None if got[1].side is None else torch.from_numpy(got[1].side), 5, "dot")
        assert np.array_equal(s.indices, wi.numpy()) and np.array_equal(s.scores, ws.numpy())
        job = FitJob(rows=300, timeout_s=60, scheme=codec.scheme, params=codec.params, x=rows(300, 0), encode=True)
        res = dev.run_fit(job, CUDA)
        assert np.array_equal(res.codes, codecs.encode(fitted(scheme, params), torch.from_numpy(rows(300, 0)))[0].numpy())


@pytest.mark.skipif(torch.cuda.is_available(), reason="shows the placement by CUDA being unusable here")
def test_other_schemes_still_go_to_the_device():
    with kernels.using("numba"):
        codec = fitted("lloyd", {"bits": 4})
        [r] = dev.run_group("encode", [EncodeJob(rows=2, timeout_s=60, codec=codec, x=rows(2, 1))], CUDA)
    assert isinstance(r, Exception)  # this torch has no CUDA: the job really went to the device


@pytest.mark.skipif(torch.cuda.is_available(), reason="shows the placement by CUDA being unusable here")
def test_evaluate_measures_each_candidate_where_it_would_run():
    """/evaluate on a CUDA worker: host-bound candidates are fitted and measured on the
    host (their speed as the service runs them), the rest on the device."""
    from embquant.worker.batcher import EvaluateJob

    x = rows(400, 7)
    with kernels.using("numba"):
        cands = [(codecs.get_scheme(s), codecs.parse_params(codecs.get_scheme(s), p), p) for s, p in HOST[:2]]
        job = EvaluateJob(rows=400, timeout_s=60, x=x, candidates=cands, fit_x=x[:200], base=x[200:380],
                          queries=x[380:], k=5, seconds=60)
        table = dev.run_evaluate(job, CUDA)
        assert len(table) == 2 and all("error" not in r for r in table), table
        here = dev.run_evaluate(job, torch.device("cpu"))
        strip = ("encode_rows_per_s", "fit_seconds")
        assert [{k: v for k, v in r.items() if k not in strip} for r in table] == \
            [{k: v for k, v in r.items() if k not in strip} for r in here]
        lloyd = codecs.get_scheme("lloyd")
        job.candidates = [(lloyd, codecs.parse_params(lloyd, {"bits": 4}), {"bits": 4})]
        with pytest.raises(Exception):  # noqa: B017 - whatever this torch raises for CUDA: it went to the device
            dev.run_evaluate(job, CUDA)
