"""The distributional scheme against distquant 0.1.0 (parity, and its defects we
do not have), against an analytic truth, and its own contracts."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
import torch
from scipy import integrate, stats

from embquant import codecs
from embquant.codecs import distributional as dq_mod
from embquant.codecs.distributional import DISTS, strictly_increasing, tables
from embquant.errors import CodecMismatch, InvalidInput

distquant = pytest.importorskip("distquant")
SYMMETRIC = ("gaussian", "gaussian_cdf", "logistic", "logistic_cdf", "cauchy_cdf")


def _x(rows=200, dim=100, seed=0, mu=0.1, sigma=0.3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, dim, generator=g) * sigma + mu


def _ours(params, x):
    """(codec, raw symbols, reconstruction) without packing."""
    codec = codecs.fit("distributional", params, x)
    sym, _ = codec.scheme.encode(codec, x)
    return codec, sym, codec.scheme.decode(codec, sym, None)


# distquant's keyword sets: bits (k) or n, a fixed beta or its own search (None),
# zero (distquant demands odd n for it, exponential aside).
PARITY = [
    dict(k=1, beta=1.0),
    dict(k=2, beta=None),
    dict(k=4, beta=0.7),
    dict(k=8, beta=1.3),
    dict(n=5, beta=1.0),
    dict(n=7, beta=1.6, zero=0.05),
]


@pytest.mark.parametrize("kw", PARITY, ids=lambda kw: orjson.dumps(kw).decode())
@pytest.mark.parametrize("dist", DISTS)
def test_parity_with_distquant(dist, kw):
    x = _x() if kw["beta"] is not None else _x(40, 50)  # distquant's search costs 37 encodes
    q, info = distquant.quantize(x.clone(), dist=dist, packbits=False, **kw)
    y_ref = distquant.dequantize(q.clone(), **info)  # it may shift its input in place: give it a copy
    # beta=None: distquant's own search (absolute error) picked info["beta"]; use the same one.
    params = {"n": info["n"], "dist": dist, "beta": float(info["beta"]), "zero": kw.get("zero")}
    codec, sym, y = _ours(params, x)
    diff = (sym - q).abs()
    # distquant evaluates the CDF in float32 and we compare with thresholds made
    # in float64: values within a rounding error of a bin boundary may land in
    # the neighbouring bin. Only those, and only by one.
    assert int(diff.max()) <= 1
    assert float((diff > 0).float().mean()) <= 1e-3
    same = diff == 0
    scale = float(codec.state["scale"][0])
    torch.testing.assert_close(y[same], y_ref[same], rtol=1e-5, atol=2e-5 * scale)


def test_parity_exponential_with_negative_zero():
    x = _x()
    q, info = distquant.quantize(x.clone(), n=6, dist="exponential_cdf", packbits=False, beta=1.2, zero=-0.5)
    y_ref = distquant.dequantize(q.clone(), **info)
    _, sym, y = _ours({"n": 6, "dist": "exponential_cdf", "beta": 1.2, "zero": -0.5}, x)
    assert torch.equal(sym, q)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dist", SYMMETRIC)
@pytest.mark.parametrize("n", [3, 15, 255])
def test_zero_is_an_exact_level_for_odd_n(dist, n):
    x = _x()
    zero = 0.0371 if dist != "cauchy_cdf" else -0.02
    codec = codecs.fit("distributional", {"n": n, "dist": dist, "zero": zero}, x)
    z32 = torch.tensor([[np.float32(zero)]]).expand(1, x.shape[1])
    y = codecs.decode(codec, *codecs.encode(codec, z32.contiguous()))
    assert torch.equal(y, z32)  # bit-exact, not approximately
    assert codec.state["levels"][n // 2] == 0.0


@pytest.mark.parametrize("dist", SYMMETRIC)
def test_zero_is_a_threshold_for_even_n(dist):
    th, lv = tables(dist, 1.0, 16)
    assert th[7] == 0.0
    np.testing.assert_array_equal(lv, -lv[::-1])  # mirror symmetric, bit for bit


def test_decode_does_not_modify_its_input():
    x = _x(8, 64)
    q, info = distquant.quantize(x.clone(), k=4, dist="gaussian", beta=1.0, packbits=True)
    packed = q.clone()
    first = distquant.dequantize(packed, **info)
    second = distquant.dequantize(packed, **info)
    assert not torch.equal(packed, q)  # distquant's defect: its input was shifted in place
    assert not torch.equal(first, second)
    codec = codecs.fit("distributional", {"bits": 4, "dist": "gaussian"}, x)
    codes, side = codecs.encode(codec, x)
    before = codes.clone()
    y1 = codecs.decode(codec, codes, side)
    y2 = codecs.decode(codec, codes, side)
    assert torch.equal(codes, before) and torch.equal(y1, y2)


def test_extreme_value_clips_to_last_level_and_spares_its_neighbour():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1000, generator=g)
    x[0, 10] = float(x.mean() + 9 * x.std())  # ~9 sigma: Phi(z / sqrt(2)) rounds to 1.0 in float32
    x[0, 9] = float(x.mean() + 0.1 * x.std())  # index 8: an even neighbour, so a stray low bit shows
    # distquant: index n (5 bits at k=4), and packed, the extra bit lands in
    # element 9's low bit while element 10 wraps to 0, the lowest level.
    q, info = distquant.quantize(x.clone(), k=4, dist="gaussian", beta=1.0, packbits=False)
    assert int(q[0, 10]) == 16 and int(q[0, 9]) == 8
    packed, pinfo = distquant.quantize(x.clone(), k=4, dist="gaussian", beta=1.0, packbits=True)
    unpacked_ref = distquant.dequantize(torch.clamp(q, max=15).clone(), **info)
    corrupt = distquant.dequantize(packed.clone(), **pinfo)
    assert float(corrupt[0, 9]) != float(unpacked_ref[0, 9])
    assert float(corrupt[0, 10]) < 0  # a +9 sigma value decoded below the mean
    # ours: the last level; the neighbour decodes to its own level.
    codec = codecs.fit("distributional", {"bits": 4, "dist": "gaussian", "beta": 1.0}, x)
    sym, _ = codec.scheme.encode(codec, x)
    assert int(sym[0, 10]) == 15 and int(sym.max()) == 15
    y = codecs.decode(codec, *codecs.encode(codec, x))
    assert float(y[0, 10]) == float(codec.state["levels"][15] * codec.state["scale"][0] + codec.state["loc"][0])
    torch.testing.assert_close(y[0, 9], unpacked_ref[0, 9], rtol=1e-5, atol=1e-6)
    mask = torch.ones(1000, dtype=torch.bool)
    mask[10] = False
    torch.testing.assert_close(y[0, mask], unpacked_ref[0, mask], rtol=1e-5, atol=1e-6)


def test_statistics_live_in_the_codec():
    a = _x(50, 64, seed=2, mu=0.0, sigma=1.0)
    b = _x(30, 64, seed=3, mu=1.0, sigma=2.0)
    codec = codecs.fit("distributional", {"bits": 3}, torch.cat([a, b]))
    ca, _ = codecs.encode(codec, a)
    cb, _ = codecs.encode(codec, b)
    cab, _ = codecs.encode(codec, torch.cat([a, b]))
    assert torch.equal(torch.cat([ca, cb]), cab)
    # distquant recomputes mean and std per call: the same rows get other codes.
    qa, _ = distquant.quantize(a.clone(), k=3, beta=1.0, packbits=False)
    qab, _ = distquant.quantize(torch.cat([a, b]).clone(), k=3, beta=1.0, packbits=False)
    assert not torch.equal(qa, qab[: len(a)])


def _analytic_distortion(n: int) -> float:
    """E[(X - Q(X))^2] for X ~ N(0,1), bins [Phi^-1(i/n), Phi^-1((i+1)/n)),
    levels Phi^-1((i+.5)/n), in closed form (truncated normal moments)."""
    t = stats.norm.ppf(np.arange(n + 1) / n)
    c = stats.norm.ppf((np.arange(n) + 0.5) / n)
    a, b = t[:-1], t[1:]
    pa, pb = stats.norm.pdf(a), stats.norm.pdf(b)
    apa = np.zeros(n)  # t * pdf(t) -> 0 at t = -inf and +inf
    bpb = np.zeros(n)
    apa[1:] = a[1:] * pa[1:]
    bpb[:-1] = b[:-1] * pb[:-1]
    m0 = 1.0 / n
    m1 = pa - pb
    m2 = m0 + apa - bpb
    return float(np.sum(m2 - 2 * c * m1 + c**2 * m0))


@pytest.mark.parametrize("n", [4, 8, 16])
def test_gaussian_cdf_matches_analytic_distortion(n):
    d = _analytic_distortion(n)
    # the closed form against numerical integration
    t = stats.norm.ppf(np.arange(n + 1) / n)
    c = stats.norm.ppf((np.arange(n) + 0.5) / n)
    num = sum(integrate.quad(lambda v, ci=ci: (v - ci) ** 2 * stats.norm.pdf(v), t[i], t[i + 1])[0] for i, ci in enumerate(c))
    assert abs(num - d) < 1e-8 * d + 1e-12
    x = torch.randn(500, 1000, generator=torch.Generator().manual_seed(n))
    codec = codecs.fit("distributional", {"n": n, "dist": "gaussian_cdf", "beta": 1.0}, x)
    y = codecs.decode(codec, *codecs.encode(codec, x))
    mse = float(((y.double() - x.double()) ** 2).mean())
    assert abs(mse - d) / d < 0.02, (mse, d)


def _mse(codec, x):
    y = codecs.decode(codec, *codecs.encode(codec, x))
    return float(((y.double() - x.double()) ** 2).mean())


def test_beta_search_minimises_squared_error():
    x = torch.randn(60, 200, generator=torch.Generator().manual_seed(5))
    codec = codecs.fit("distributional", {"bits": 4, "beta": None}, x)
    beta = codec.params.beta
    ours = _mse(codec, x)
    # no beta on a fine grid does much better
    grid = [_mse(codecs.fit("distributional", {"bits": 4, "beta": float(b)}, x), x) for b in np.linspace(0.8, 1.6, 41)]
    assert ours <= min(grid) * 1.002
    # distquant's search minimises absolute error, so it picks a smaller beta and a larger squared error
    q, info = distquant.quantize(x.clone(), k=4, dist="gaussian", beta=None, packbits=False)
    theirs = float(((distquant.dequantize(q.clone(), **info).double() - x.double()) ** 2).mean())
    assert info["beta"] < beta and ours < theirs


def test_cauchy_beta_search_follows_the_data_scale():
    # cauchy_cdf does no normalisation: its beta is a scale in data units
    for s in (1e-6, 1.0, 1e6):
        x = _x(50, 40, seed=4, mu=0.0, sigma=s)
        codec = codecs.fit("distributional", {"bits": 4, "dist": "cauchy_cdf", "beta": None}, x)
        assert 1e-2 * s < codec.params.beta < 1e2 * s
        assert _mse(codec, x) < 0.05 * s * s


def test_dist_none_picks_the_lowest_squared_error():
    g = torch.Generator().manual_seed(6)
    x = -torch.log(torch.rand(100, 100, generator=g))  # exponential data
    codec = codecs.fit("distributional", {"bits": 3, "dist": None, "beta": 1.0}, x)
    assert codec.params.dist in DISTS and codec.params.beta == 1.0
    errs = {d: _mse(codecs.fit("distributional", {"bits": 3, "dist": d, "beta": 1.0}, x), x) for d in DISTS}
    assert _mse(codec, x) <= min(errs.values()) * (1 + 1e-6)
    assert errs[codec.params.dist] == _mse(codec, x)
    # the fitted codec names its dist and beta, and travels as JSON
    back = codecs.codec_from_json(orjson.loads(orjson.dumps(codec.to_json())))
    assert back.key == codec.key and back.params.dist == codec.params.dist


def test_an_unresolved_codec_is_refused():
    codec = codecs.fit("distributional", {"bits": 2, "beta": None}, _x(10, 8))
    j = codec.to_json()
    j["params"]["beta"] = None
    with pytest.raises(CodecMismatch, match="dist and beta"):
        codecs.codec_from_json(j)


def test_tampered_thresholds_are_refused():
    codec = codecs.fit("distributional", {"bits": 2}, _x(10, 8))
    bad = dict(codec.state)
    bad["thresholds"] = bad["thresholds"][::-1].copy()
    with pytest.raises(CodecMismatch, match="strictly increasing"):
        codec.scheme.check_state(codecs.Codec(codec.scheme, codec.params, codec.dim, bad))


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("n", [2, 3, 255, 256])
def test_tables_are_ordered_at_the_extremes(dist, n):
    betas = (1e-37, 1e-3, 1.0, 1e36) if dist == "cauchy_cdf" else (1e-3, 1.0, 100.0)
    for beta in betas:
        th, lv = tables(dist, beta, n)
        assert th.dtype == np.float32 and th.shape == (n - 1,) and lv.shape == (n,)
        assert np.isfinite(th).all() and np.isfinite(lv).all()
        assert (np.diff(th) > 0).all()
        # each level lies in its own bin
        assert (lv[:-1] <= th).all() and (lv[1:] >= th).all()


def test_collapsed_thresholds_are_separated_by_one_ulp():
    t = np.array([1.0, 1.0, 1.0, 2.0, 2.0], dtype=np.float32)
    s = strictly_increasing(t)
    assert (np.diff(s) > 0).all()
    assert s[1] == np.nextafter(np.float32(1), np.float32(2)) and s[4] == np.nextafter(np.float32(2), np.float32(3))


@pytest.mark.parametrize(
    "params,match",
    [
        ({"bits": 4, "n": 16}, "bits or n, not both"),
        ({"n": 1}, "n"),
        ({"n": 257}, "n"),
        ({"bits": 9}, "bits"),
        ({"dist": "laplace"}, "dist"),
        ({"beta": 0.0}, "beta"),
        ({"beta": 500.0}, r"beta must be within \[0.001, 100\]"),
        ({"dist": None, "beta": 1e-5}, "beta must be within"),
        ({"dist": "cauchy_cdf", "beta": 1e38}, "beta"),
        ({"zero": float("nan")}, "zero"),
    ],
)
def test_bad_params_are_refused_with_a_clear_message(params, match):
    with pytest.raises(InvalidInput, match=match):
        codecs.fit("distributional", params, _x(4, 8))


def test_default_is_four_bit_gaussian():
    codec = codecs.fit("distributional", {}, _x(4, 8))
    assert codec.params.levels == 16 and codec.params.dist == "gaussian" and codec.layout.bits == 4
    assert codecs.fit("distributional", {"n": 15}, _x(4, 8)).layout.bits == 4
    assert codecs.fit("distributional", {"n": 17}, _x(4, 8)).layout.bits == 5


def test_large_sample_search_is_deterministic():
    x = torch.randn(400, 300, generator=torch.Generator().manual_seed(7))  # above the search's sample size
    assert x.numel() > dq_mod._SEARCH_SAMPLE
    c1 = codecs.fit("distributional", {"bits": 2, "beta": None}, x)
    c2 = codecs.fit("distributional", {"bits": 2, "beta": None}, x)
    assert c1.key == c2.key and math.isfinite(c1.params.beta)
