"""The bound kernel of /score (`kernels.fastscan_cpu.scan_fast`): byte-table bounds,
then the levels kernel's own arithmetic for the rows that may reach the top k. Its
answer must be the levels kernel's (`scan_dense`) bit for bit: the same rows in the
same order and the same float32 scores, for every 1- and 2-bit setting (and 4-bit), metric, k,
width past the 16-bit flush, ties, candidate overflow and hostile side values; its
bounds must hold the levels kernel's sums; and on real embeddings it must prune."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from embquant import codecs
from embquant.codecs import kernels
from tests.support.codecs import anisotropic

S = importlib.import_module("embquant.codecs.score")

pytestmark = pytest.mark.skipif(kernels.active() != "numba" or not S._has_pshufb(),
                                reason="the bound kernel needs the numba backend on a CPU with AVX2")

SETTINGS = [
    ("binary", {}),
    ("binary", {"scale": "global", "rotate": True}),
    ("binary", {"scale": "none"}),
    ("lloyd", {"bits": 1}),
    ("lloyd", {"bits": 2}),
    ("lloyd", {"bits": 2, "mode": "fit_dim", "rotate": False}),
    ("lloyd", {"bits": 1, "norm": "unit"}),
    ("lloyd", {"bits": 2, "center": True}),
    ("codebook", {"levels": [-1.0, 0.0, 1.0]}),  # a zero level: rows of norm 0 can occur
    ("absmax", {"bits": 2, "rotate": True}),
    ("lloyd", {"bits": 4}),
    ("absmax", {"bits": 4}),  # 15 levels of 16 symbols
    ("bitcodes", {"num_bits": 200, "iterations": 2}),  # the query projected on the codebook; dot only
]


def _both(codec, q, codes, side, k, metric, monkeypatch):
    """(bound kernel's answer (the levels kernel's where it declines), its stats, the
    levels kernel's answer)."""
    st = {}
    with monkeypatch.context() as m:
        m.setattr(S, "FAST_MIN_QUERIES", 1)
        m.setattr(S, "FAST_BITS", dict.fromkeys(S.FAST_BITS))  # any query count
        m.setattr(S, "DENSE_MIN", 0)
        a = S.score(codec, q, codes, side, k, metric, stats=st)
    with monkeypatch.context() as m:
        m.setattr(S, "FAST_MAX_K", 0)
        m.setattr(S, "DENSE_MIN", 0)
        lv = {}
        b = S.score(codec, q, codes, side, k, metric, stats=lv)
        assert lv["kernel"] == "levels"
    return a, st, b


def _same(a, b):
    assert torch.equal(a[1], b[1]), (a[1] != b[1]).nonzero()[:5]
    assert torch.equal(a[0], b[0])


# 1100 dimensions at 1 bit: past 128 bytes, the 16-bit flush (bitcodes' symbols are its
# bits whatever the dimension, and its fit is the slow part: up to 384)
CASES = [(n, p, d) for n, p in SETTINGS for d in (7, 64, 100, 384, 1100) if n != "bitcodes" or d <= 384]


@pytest.mark.parametrize("name,params,dim", CASES, ids=[f"{n}-{p}-{d}" for n, p, d in CASES])
def test_bound_kernel_is_the_levels_kernel_bit_for_bit(name, params, dim, monkeypatch):
    x, q = anisotropic(dim, 2500, 5, unit=params.get("norm") == "unit")
    codec = codecs.fit(name, params, x)
    codes, side = codecs.encode(codec, x)
    monkeypatch.setattr(S, "TASK_ROWS", 600)  # several tasks, and sub-blocks cut inside tasks
    monkeypatch.setattr(S, "FAST_TASKS_PER_THREAD", 1 << 20)
    for metric in [m for m in ("dot", "cosine", "l2") if S._metric_ok(codec, m)]:  # e.g. centred cosine: exact
        for k in (1, 10, 200):
            a, st, b = _both(codec, q, codes, side, k, metric, monkeypatch)
            assert st["kernel"] == "bound"
            _same(a, b)


@pytest.mark.parametrize("metric", ["dot", "cosine", "l2"])
def test_ties_and_candidate_overflow(metric, monkeypatch):
    """Many rows with the same codes (every score tied with hundreds of others) and room
    for few candidates: the candidates are pruned and scored midway, in row order, and
    ties still keep the lower index."""
    x, q = anisotropic(9, 30, 6)
    codec = codecs.fit("binary", {"scale": "none"}, x)
    rng = np.random.default_rng(1)
    codes, side = codecs.encode(codec, x[torch.from_numpy(rng.integers(0, 30, 9000))])
    monkeypatch.setattr(S, "FAST_CAP_MIN", 8)
    for k in (1, 5, 40):
        a, st, b = _both(codec, q, codes, side, k, metric, monkeypatch)
        _same(a, b)
        assert st["rescored"] > 6 * k  # the tied rows were all scored: they may all count


def test_hostile_side_values(monkeypatch):
    """Negative, zero and huge row gains (a client's side values): the same answer as the
    levels kernel, or the levels kernel itself where the bounds would leave float32."""
    x, q = anisotropic(64, 3000, 4)
    codec = codecs.fit("binary", {}, x)
    codes, side = codecs.encode(codec, x)
    side = side.clone()
    side[::7, 0] = -side[::7, 0]
    side[::11, 0] = 0.0
    for metric in ("dot", "cosine", "l2"):
        a, st, b = _both(codec, q, codes, side, 10, metric, monkeypatch)
        assert st["kernel"] == "bound"
        _same(a, b)
    side[5, 0] = 1e36  # the score is in float32 range, the bound's terms are not
    a, st, b = _both(codec, q, codes, side, 10, "l2", monkeypatch)
    assert st["kernel"] == "levels"
    _same(a, b)


def test_bounds_hold_the_levels_kernels_sums():
    """C + delta * A - h <= f <= C + delta * A + h, f the float32 fused multiply-add chain
    the levels kernel computes (reproduced in numpy: each step's product and sum in
    float64, then rounded to float32), A the integer sum of the table bytes of each
    row's packed bytes; and the exact dot product within the same bounds."""
    for bits, dim in ((1, 384), (2, 100), (1, 1100)):
        rng = np.random.default_rng(bits + dim)
        nlev = 1 << bits
        lvf = np.zeros((dim, 16), np.float32)
        base = {1: [-0.798, 0.798], 2: [-1.51, -0.453, 0.453, 1.51]}[bits]  # Lloyd-Max for N(0, 1)
        lvf[:, :nlev] = (np.array(base) + 0.1 * rng.standard_normal((dim, nlev))).astype(np.float32)
        q = (rng.standard_normal((3, dim)) * rng.uniform(0.01, 5, dim)).astype(np.float32)
        q[0] = rng.standard_normal(dim)
        sym = rng.integers(0, nlev, (200, dim))
        luts, cc, delta, hw = S.fast_tables(q, lvf, bits, dim)
        nbytes = -(-dim * bits // 8)
        # the row's bytes: symbol d at bit d * bits of the row's bit string
        bitstr = np.zeros((200, nbytes * 8), np.uint8)
        for t in range(bits):
            bitstr[:, np.arange(dim) * bits + t] = (sym >> t) & 1
        byts = np.packbits(bitstr.reshape(200, nbytes, 8), axis=2, bitorder="little").reshape(200, nbytes)
        tab = luts.reshape(3, nbytes, 2, 2, 16)[:, :, :, 0, :].astype(np.int64)
        A = tab[:, np.arange(nbytes)[None, :], 0, byts & 15].sum(axis=2) + \
            tab[:, np.arange(nbytes)[None, :], 1, byts >> 4].sum(axis=2)  # (3, 200)
        y = lvf[np.arange(dim)[None, :], sym]  # (200, dim) float32 levels
        for qi in range(3):
            f = np.zeros(200, np.float32)
            for d in range(dim):  # fl32(y * q + f)
                f = (y[:, d].astype(np.float64) * np.float64(q[qi, d]) + f.astype(np.float64)).astype(np.float32)
            est = cc[qi] + delta[qi] * A[qi]
            assert (np.abs(f.astype(np.float64) - est) <= hw[qi]).all()
            exact = (y.astype(np.float64) * q[qi].astype(np.float64)).sum(axis=1)
            assert (np.abs(exact - est) <= hw[qi]).all()
            if qi == 0:  # an isotropic query: bounds tight enough to prune
                assert hw[qi] < 0.3 * exact.std(), (hw[qi], exact.std())


def test_prunes_on_minilm(minilm, monkeypatch):
    """On real embeddings (1-bit codes of MiniLM vectors, cosine), the rows scored
    exactly are a small part of the rows: the bound does the work."""
    x = torch.from_numpy(minilm[100:])
    q = torch.from_numpy(minilm[:100])
    codec = codecs.fit("binary", {"rotate": True}, x)
    codes, side = codecs.encode(codec, x)
    a, st, b = _both(codec, q, codes, side, 10, "cosine", monkeypatch)
    _same(a, b)
    assert st["kernel"] == "bound"
    assert st["rescored"] < 0.25 * q.shape[0] * x.shape[0], st


def test_large_k_and_small_state_chunks(monkeypatch):
    """k past a task's rows, and the queries cut into chunks by the state budget: still
    the levels kernel's answer."""
    x, q = anisotropic(100, 3000, 7)
    codec = codecs.fit("binary", {}, x)
    codes, side = codecs.encode(codec, x)
    monkeypatch.setattr(S, "TASK_ROWS", 700)
    monkeypatch.setattr(S, "FAST_TASKS_PER_THREAD", 1 << 20)
    monkeypatch.setattr(S, "FAST_STATE_BYTES", 1)  # one query per chunk
    for k in (1000, 2999, 3000):
        a, st, b = _both(codec, q, codes, side, k, "cosine", monkeypatch)
        assert st["kernel"] == "bound"
        _same(a, b)


def test_kernel_choice():
    x, q = anisotropic(64, 500, S.FAST_BITS[4] + 1)
    for name, params, kernel in (("binary", {}, "bound"), ("lloyd", {"bits": 2}, "bound"),
                                 ("lloyd", {"bits": 4}, "levels"), ("tcq", {"bits": 1}, "levels")):
        codec = codecs.fit(name, params, x)
        codes, side = codecs.encode(codec, x)
        st = {}
        S.score(codec, q, codes, side, 10, "dot", stats=st)  # more queries than 4 bits take the bound kernel for
        assert st["kernel"] == kernel, (name, st)
        for nq in (1, S.FAST_BITS[4]):  # fewer: 4 bits too
            S.score(codec, q[:nq], codes, side, 10, "dot", stats=st)
            assert st["kernel"] == ("levels" if name == "tcq" else "bound")
        S.score(codec, q, codes, side, None, "dot", stats=st)  # every score: no top k to bound
        assert st["kernel"] != "bound"


def test_bitcodes_codebook_out_of_range_goes_exact():
    """A bitcodes codebook whose projected query would overflow the float32 sums (a
    corrupted or hostile codec) is scored the exact way, with the exact path's answer."""
    x, q = anisotropic(32, 400, 3)
    codec = codecs.fit("bitcodes", {"num_bits": 64, "iterations": 2}, x)
    codes, _ = codecs.encode(codec, x)
    bad = codecs.codec_from_json(codec.to_json())
    bad.state["codebook"] = (np.asarray(bad.state["codebook"], np.float32) * np.float32(1e37)).astype(np.float32)
    st = {}
    got = S.score(bad, q, codes, None, 5, "dot", stats=st)
    assert st["kernel"] == "exact"
    want = S.score_exact(bad, q, codes, None, 5, "dot")
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    st = {}
    S.score(codec, q, codes, None, 5, "dot", stats=st)  # the same codes, the codec as fitted
    assert st["kernel"] == "bound"
