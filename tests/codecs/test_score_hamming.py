"""The Hamming first pass of a two-pass search (`score.hamming_candidates`,
`rescore(first_pass="hamming")`): the compiled kernel against the torch reference and
against Python's own bit counts, ties to the lower index, and what it refuses."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from embquant import codecs
from embquant.codecs import kernels
from embquant.errors import CodecMismatch, InvalidInput

S = importlib.import_module("embquant.codecs.score")  # `codecs.score` is the function


def _coded(n, d, name="binary", params=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    x = x / x.norm(dim=1, keepdim=True)  # unit rows: what norm="unit" takes
    codec = codecs.fit(name, params or {}, x)
    codes, side = codecs.encode(codec, x)
    q = torch.randn(9, d, generator=g)
    return codec, codes, side, q / q.norm(dim=1, keepdim=True)


def _by_python(codec, q, codes, m):
    """The m rows of fewest differing bits per query, ties to the lower index, counted
    with int.bit_count on each word."""
    qc = codecs.encode(codec, q)[0].numpy().tolist()
    rows = codes.numpy().tolist()
    out = []
    for qw in qc:
        d = [sum(((a ^ b) & (2**64 - 1)).bit_count() for a, b in zip(qw, row)) for row in rows]
        out.append(sorted(range(len(rows)), key=lambda i: (d[i], i))[:m])
    return torch.tensor(out, dtype=torch.int64)


def test_popcount_of_every_kind_of_word():
    vals = [0, 1, -1, 2**63 - 1, -(2**63), 0x5555555555555555, -0x5555555555555556, 12345678901234]
    rng = np.random.default_rng(1)
    vals += rng.integers(-(2**63), 2**63 - 1, size=200, dtype=np.int64).tolist()
    got = S._popcount(torch.tensor(vals, dtype=torch.int64)).tolist()
    assert got == [(v & (2**64 - 1)).bit_count() for v in vals]


@pytest.mark.parametrize("d", [1, 7, 64, 65, 130])
@pytest.mark.parametrize("m", [1, 5, 37])
def test_kernel_and_reference_give_pythons_rows(d, m):
    """Few dimensions make many ties: the lower index must win in both."""
    codec, codes, side, q = _coded(211, d, seed=d)
    want = _by_python(codec, q, codes, m)
    with kernels.using("torch"):
        ref = S.hamming_candidates(codec, q, codes, side, m)
    assert torch.equal(ref, want)
    if kernels.set_backend("auto") == "numba":
        assert torch.equal(S.hamming_candidates(codec, q, codes, side, m), want)


def test_kernel_across_tasks_and_query_groups(monkeypatch):
    """More rows than one task holds and a query count that is not a multiple of 4."""
    if kernels.set_backend("auto") != "numba":
        pytest.skip("the compiled kernels do not load here")
    monkeypatch.setattr(S, "TASK_ROWS", 64)
    monkeypatch.setattr(S, "HAMMING_TASKS_PER_THREAD", 64)
    codec, codes, side, q = _coded(1000, 96, seed=3)
    for nq in (1, 2, 3, 5, 9):
        want = _by_python(codec, q[:nq], codes, 25)
        assert torch.equal(S.hamming_candidates(codec, q[:nq], codes, side, 25), want)


@pytest.mark.parametrize("name,params", [("binary", {}), ("binary", {"rotate": True, "scale": "row"}),
                                         ("lloyd", {"bits": 1}), ("lloyd", {"bits": 1, "norm": "unit"})])
def test_rescore_with_every_code_a_candidate_is_score_exact(name, params):
    codec, codes, side, q = _coded(120, 32, name, params)
    for metric in ("dot", "cosine", "l2"):
        want = S.score_exact(codec, q, codes, side, 10, metric)
        got = S.rescore(codec, q, codes, side, 10, metric, 120, first_pass="hamming")
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_rescore_answers_the_best_of_the_hamming_candidates():
    codec, codes, side, q = _coded(500, 64, seed=7)
    cand = S.hamming_candidates(codec, q, codes, side, 30)
    s, i = S.rescore(codec, q, codes, side, 5, "dot", 30, first_pass="hamming")
    full = S.score_exact(codec, q, codes, side, None, "dot")[0]
    for j in range(q.shape[0]):
        assert set(i[j].tolist()) <= set(cand[j].tolist())
        pool = full[j, cand[j]]
        assert torch.equal(s[j], pool.sort(descending=True).values[:5])


@pytest.mark.parametrize("name,params", [("lloyd", {"bits": 4}), ("tcq", {"bits": 1}), ("absmax", {"bits": 2}),
                                         ("distributional", {"bits": 1})])
def test_codes_of_more_than_one_bit_or_without_levels_are_refused(name, params):
    codec, codes, side, q = _coded(64, 16, name, params)
    with pytest.raises(InvalidInput, match="first_pass=hamming needs codes of one bit per dimension"):
        S.rescore(codec, q, codes, side, 5, "dot", 10, first_pass="hamming")


def test_bad_first_pass_and_shapes():
    codec, codes, side, q = _coded(64, 16)
    with pytest.raises(InvalidInput, match="first_pass must be one of codes, hamming"):
        S.rescore(codec, q, codes, side, 5, "dot", 10, first_pass="popcount")
    with pytest.raises(CodecMismatch, match=r"queries must be \(Q, 16\)"):
        S.hamming_candidates(codec, q[:, :8], codes, side, 5)
