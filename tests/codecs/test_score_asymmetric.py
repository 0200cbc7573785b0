"""Asymmetric scoring on packed codes (`codecs.score`, numba lookup tables) against
the exact path (decode then score): the same top 10, ties aside, for every scheme
and setting that has the fast path, every metric, odd and embedding dimensions,
with and without rotation; the fallback for the rest; and recall at 1 bit on real
MiniLM embeddings."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from embquant import codecs
from embquant.codecs import kernels, rotation
from embquant.errors import CodecMismatch
from tests.support.codecs import anisotropic

S = importlib.import_module("embquant.codecs.score")

pytestmark = pytest.mark.skipif(kernels.active() != "numba", reason="the asymmetric path needs the numba backend")

SETTINGS = [
    ("lloyd", {"bits": 1}),
    ("lloyd", {"bits": 4}),
    ("lloyd", {"bits": 3, "rotate": False}),
    ("lloyd", {"bits": 2, "mode": "fit_global"}),
    ("lloyd", {"bits": 4, "mode": "fit_dim"}),
    ("lloyd", {"bits": 4, "mode": "fit_dim", "rotate": False}),
    ("lloyd", {"bits": 4, "norm": "unit"}),
    ("lloyd", {"bits": 8}),
    ("absmax", {"bits": 4}),
    ("absmax", {"bits": 5, "rotate": True}),
    ("absmax", {"bits": 8}),
    ("codebook", {}),
    ("codebook", {"table": "dynamic", "scale": "codec"}),
    ("codebook", {"levels": [-1.0, 0.0, 1.0], "rotate": True}),
    ("codebook", {"table": "linear", "bits": 3}),
    ("binary", {}),
    ("binary", {"scale": "global", "rotate": True}),
    ("binary", {"scale": "none"}),
    ("lloyd", {"bits": 4, "center": True}),
    ("absmax", {"bits": 4, "rotate": True, "center": True}),
    ("tcq", {"bits": 4}),
    ("tcq", {"bits": 1, "norm": "unit"}),
    ("tcq", {"bits": 3, "rotate": False}),
    ("tcq", {"bits": 2, "center": True}),
    ("tcq", {"bits": 6}),
    ("bitcodes", {"num_bits": 96, "iterations": 2}),  # dot on the codes; cosine and l2 exact
]
DIMS = (7, 64, 384)


def _data(dim: int, unit: bool, n: int = 1500, nq: int = 7, seed: int = 0):
    return anisotropic(dim, n, nq, seed, unit)


def check_same_topk(fast, exact, full_exact, metric, k):
    """Same top k ties aside: every index the fast path returns has an exact score
    within a small tolerance of the exact k-th best, its score matches its exact
    score, and where the exact scores are well separated the indices are the same."""
    (fs, fi), (es, ei) = fast, exact
    ref = full_exact.double().numpy()
    scale = np.abs(ref).max(axis=1, keepdims=True) + 1e-30
    tol = 1e-4 * scale
    got = np.take_along_axis(ref, fi.numpy(), axis=1)
    assert np.allclose(fs.double().numpy(), got, rtol=1e-4, atol=float(tol.max()))
    assert np.allclose(fs.double().numpy(), es.double().numpy(), rtol=1e-4, atol=float(tol.max()))
    kth = es.double().numpy()[:, k - 1 : k]
    if metric == "l2":
        assert (got <= kth + tol).all()
    else:
        assert (got >= kth - tol).all()
    # the indices themselves, wherever the exact top k is separated from its neighbours
    e = es.double().numpy()
    for r in range(e.shape[0]):
        for j in range(k):
            gaps = [abs(e[r, j] - e[r, j2]) for j2 in (j - 1, j + 1) if 0 <= j2 < k]
            # (the k-th may swap with the (k+1)-th, which is not shown)
            if j < k - 1 and all(g > tol[r, 0] for g in gaps):
                assert int(fi[r, j]) == int(ei[r, j]), (r, j)
    for row in fi.numpy():
        assert len(set(row.tolist())) == k


@pytest.fixture(params=["tables", "levels", "bound"])
def scan_path(request, monkeypatch):
    """Each asymmetric kernel in turn: table lookups (`scan`, `scan_words`),
    multiply-adds on decoded levels (`scan_dense`), or bounds then the levels' way for
    the rows that may count (`fastscan_cpu.scan_fast`: 1, 2 and 4 bits, top k; the others
    then take the kernel `dense_scan` picks), whatever the query count."""
    if request.param == "bound":
        monkeypatch.setattr(S, "FAST_MIN_QUERIES", 1)
        monkeypatch.setattr(S, "FAST_BITS", dict.fromkeys(S.FAST_BITS))  # every width it takes, any query count
    else:
        monkeypatch.setattr(S, "FAST_MAX_K", 0)
        monkeypatch.setattr(S, "DENSE_MIN", 0 if request.param == "levels" else 1 << 30)
    return request.param


def _bound_applies(name, params):
    """Settings whose codes the bound kernel takes: 1, 2 and 4 bits, off tcq's trellis."""
    bits = 1 if name in ("binary", "bitcodes") else len(params["levels"]).bit_length() if "levels" in params \
        else params.get("bits")
    return name != "tcq" and bits in S.FAST_BITS


COMBOS = [(n, p, path) for n, p in SETTINGS for path in ("tables", "levels", "bound")
          if path != "bound" or _bound_applies(n, p)]


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("name,params,scan_path", COMBOS, ids=[f"{n}-{p}-{path}" for n, p, path in COMBOS],
                         indirect=["scan_path"])
def test_asymmetric_top10_equals_exact(name, params, dim, scan_path):
    x, q = _data(dim, params.get("norm") == "unit")
    codec = codecs.fit(name, params, x)
    assert S.score_path(codec) == "asymmetric"
    assert scan_path != "bound" or codec.layout.bits in S.FAST_BITS
    codes, side = codecs.encode(codec, x)
    for metric in ("dot", "cosine", "l2"):
        st = {}
        fast = S.score(codec, q, codes, side, 10, metric, stats=st)
        assert (st["kernel"] == "exact") == (not S._metric_ok(codec, metric))
        if scan_path == "bound" and S._has_pshufb() and S._metric_ok(codec, metric):
            assert st["kernel"] == "bound"
        exact = S.score_exact(codec, q, codes, side, 10, metric)
        full_exact, _ = S.score_exact(codec, q, codes, side, None, metric)
        full_fast, none = S.score(codec, q, codes, side, None, metric)
        assert none is None and full_fast.shape == full_exact.shape and full_fast.dtype == torch.float32
        scale = float(full_exact.abs().max())
        assert float((full_fast - full_exact).abs().max()) <= 1e-5 * scale
        check_same_topk(fast, exact, full_exact, metric, 10)


def test_rotation_identity_matches_exact():
    """q . R^T z == (R q) . z: the rotated query against the unrotated levels."""
    x, q = _data(384, False)
    codec = codecs.fit("lloyd", {"bits": 4}, x)
    codes, side = codecs.encode(codec, x)
    y = codecs.decode(codec, codes, side).double()
    sym = codecs.check_codes(codec, codes, side)
    from embquant.codecs.lloyd import gaussian_tables

    z = torch.from_numpy(gaussian_tables(4)[1]).double()[sym] * side.double()
    qr = rotation.forward(q.double(), codec.params.rotation_seed)
    assert torch.allclose(q.double() @ y.T, qr @ z.T, rtol=1e-5, atol=1e-5 * float((q.double() @ y.T).abs().max()))


@pytest.mark.parametrize("name,params", [("hqq", {}), ("int8", {}), ("affine", {}), ("blockwise", {})])
def test_other_schemes_fall_back_to_exact(name, params, monkeypatch):
    x, q = _data(64, False)
    codec = codecs.fit(name, params, x)
    assert S.score_path(codec) == "exact"
    codes, side = codecs.encode(codec, x)
    called = []
    monkeypatch.setattr(S, "_score_asymmetric", lambda *a: called.append(1))
    s, i = S.score(codec, q, codes, side, 5, "dot")
    assert not called and s.shape == (7, 5)
    es, ei = S.score_exact(codec, q, codes, side, 5, "dot")
    assert torch.equal(s, es) and torch.equal(i, ei)


def test_path_choice_by_backend_and_device():
    x, q = _data(64, False)
    codec = codecs.fit("lloyd", {"bits": 4}, x)
    assert S.score_path(codec) == "asymmetric"
    assert S.score_path(codec, "cuda") == "exact"
    with kernels.using("torch"):
        assert S.score_path(codec) == "exact"


def test_asymmetric_runs_and_ties_keep_lower_index(monkeypatch, scan_path):
    x, q = _data(64, False)
    codec = codecs.fit("binary", {"scale": "none"}, x)
    codes, side = codecs.encode(codec, x[:1].repeat(7000, 1))  # one tie over several tasks
    ran = []
    real = S._score_asymmetric
    monkeypatch.setattr(S, "_score_asymmetric", lambda *a: ran.append(1) or real(*a))
    monkeypatch.setattr(S, "TASK_ROWS", 512)
    _, idx = S.score(codec, q[:2], codes, side, 5, "dot")
    assert ran and idx.tolist() == [[0, 1, 2, 3, 4]] * 2
    _, idx = S.score(codec, q[:2], codes, side, 5, "l2")
    assert idx.tolist() == [[0, 1, 2, 3, 4]] * 2


def test_task_size_and_query_chunks_change_nothing(monkeypatch, scan_path):
    x, q = _data(64, False, n=5000, nq=9)
    codec = codecs.fit("lloyd", {"bits": 2}, x)
    codes, side = codecs.encode(codec, x)
    a = S.score(codec, q, codes, side, 25, "cosine")
    monkeypatch.setattr(S, "TASK_ROWS", 256)
    monkeypatch.setattr(S, "LUT_CHUNK_VALUES", 1)  # one query per chunk
    monkeypatch.setattr(S, "DENSE_QUERIES", 1)
    monkeypatch.setattr(S, "FAST_LUT_BYTES", 1)
    monkeypatch.setattr(S, "FAST_TASKS_PER_THREAD", 8)
    b = S.score(codec, q, codes, side, 25, "cosine")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    big = S.score(codec, q, codes, side, 6000, "l2")  # k beyond N: every code, best first
    assert big[1].shape == (9, 5000)
    assert torch.equal(big[1].sort(dim=1).values[0], torch.arange(5000))


def test_invalid_codes_raise_the_exact_paths_errors(scan_path):
    x, q = _data(48, False, n=50)
    c5 = codecs.fit("absmax", {"bits": 5}, x)  # 12 symbols per word: 4 unused bits
    codes, side = codecs.encode(c5, x)
    bad = codes.clone()
    bad[3, 0] |= 1 << 62
    with pytest.raises(CodecMismatch, match="row 3"):
        S.score(c5, q, bad, side, 5, "dot")
    bad = codes.clone()
    bad[4, 0] |= 31  # symbol 31: absmax 5 bits has 31 levels (0..30)
    with pytest.raises(CodecMismatch, match="row 4"):
        S.score(c5, q, bad, side, 5, "dot")
    huge = side.clone()
    huge[2, 0] = 3e38
    with pytest.raises(CodecMismatch, match="float32 range"):
        S.score(c5, q, codes, huge, 5, "dot")


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


@pytest.mark.parametrize("name,params", [("binary", {"rotate": True}), ("lloyd", {"bits": 1, "norm": "unit"})])
def test_one_bit_recall_on_minilm(minilm, name, params):
    """At 1 bit per dimension on real embeddings, asymmetric recall@10 (against float
    brute force on the originals) is at least that of the decoded vectors."""
    x = torch.from_numpy(minilm[100:])
    q = torch.from_numpy(minilm[:100])
    x = x / x.norm(dim=1, keepdim=True)
    truth = (q.double() @ x.double().T).topk(10, dim=1).indices.numpy()
    codec = codecs.fit(name, params, x)
    assert S.score_path(codec) == "asymmetric" and codec.layout.bits == 1
    codes, side = codecs.encode(codec, x)
    _, fast = S.score(codec, q, codes, side, 10, "cosine")
    y = codecs.decode(codec, codes, side).double()
    dec = ((q.double() @ y.T) / y.norm(dim=1)[None, :]).topk(10, dim=1).indices.numpy()
    r_fast, r_dec = _recall(fast.numpy(), truth), _recall(dec, truth)
    assert r_fast >= r_dec - 0.005, (r_fast, r_dec)  # equal up to ties
    assert r_fast > 0.3
