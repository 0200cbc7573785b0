"""transform fits do not depend on the number of BLAS/LAPACK or torch threads: the
eigen-decomposition of the covariance (LAPACK through OpenBLAS) gives other bits with
another thread count, which made the codec fitted over HTTP differ from the one fitted
in process on the same rows."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from embquant import codecs
from embquant.codecs import cancel_scope


@pytest.fixture()
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("params", [{"bits": 2}, {"bits": 3, "levels": "fitted"}, {"bits": 4, "shrink": False}])
def test_same_codec_with_one_or_two_threads(minilm, torch_threads, params):
    x = torch.from_numpy(minilm)
    keys = set()
    for blas in (1, 2):
        for intra in (1, 2):
            torch.set_num_threads(intra)
            with threadpool_limits(limits=blas):
                keys.add(codecs.fit("transform", params, x).key)
    assert len(keys) == 1, keys


def test_the_eigh_itself_does_depend_on_threads(minilm):
    """The premise, on the same data: LAPACK's eigh through OpenBLAS with 1 and with
    2 threads gives other bits (so the fit must pin it)."""
    x = minilm.astype(np.float64)
    xc = x - x.mean(0)
    cov = (xc.T @ xc) / x.shape[0]
    with threadpool_limits(limits=1):
        w1, v1 = np.linalg.eigh(cov)
    with threadpool_limits(limits=2):
        w2, v2 = np.linalg.eigh(cov)
    if np.array_equal(w1, w2) and np.array_equal(v1, v2):
        pytest.skip("this BLAS gives the same bits with 1 and 2 threads here")
    assert not (np.array_equal(w1, w2) and np.array_equal(v1, v2))


def test_same_codec_in_a_fit_lane_thread_under_a_cancel_scope(minilm):
    """As the service fits: in another thread, under a cancel scope (the eigh then
    runs in a helper thread), the process at its default BLAS thread count."""
    x = torch.from_numpy(minilm)
    here = codecs.fit("transform", {"bits": 2}, x)
    box = {}

    def lane():
        with cancel_scope(lambda: None):
            box["codec"] = codecs.fit("transform", {"bits": 2}, x)

    t = threading.Thread(target=lane)
    t.start()
    t.join()
    assert box["codec"].key == here.key


def test_fit_over_http_equals_the_fit_in_process(minilm):
    from fastapi.testclient import TestClient

    from embquant.api import create_app
    from embquant.settings import Settings
    from tests.support.api import b64

    here = codecs.fit("transform", {"bits": 2}, torch.from_numpy(minilm))
    with threadpool_limits(limits=2):
        assert codecs.fit("transform", {"bits": 2}, torch.from_numpy(minilm)).key == here.key
    with TestClient(create_app(Settings(device="cpu"))) as c:
        r = c.post("/fit", json={"vectors": b64(minilm), "scheme": "transform", "params": {"bits": 2}})
    assert r.status_code == 200, r.text
    assert codecs.codec_from_json(r.json()["codec"]).key == here.key
