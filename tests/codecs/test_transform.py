"""transform: bit allocation (budget, follows variances, greedy = reverse
water-filling), known truth on Gaussian data, 0-bit components decode to the
mean, the held-out MiniLM target, bad params and bad state."""

from __future__ import annotations


import numpy as np
import orjson
import pytest
import torch

from embquant import codecs
from embquant.codecs import lloyd, transform
from embquant.errors import CodecMismatch, InvalidInput
from tests.support.codecs import predicted_distortion
import threading
from threadpoolctl import threadpool_limits
from embquant.codecs import cancel_scope


def _rel(codec, x):
    return codecs.quality(x, codecs.decode(codec, *codecs.encode(codec, x)))["relative_squared_error"]


def _gauss(n, sd, seed):
    """Gaussian rows with independent coordinates of standard deviations sd."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, len(sd), generator=g, dtype=torch.float64).mul(torch.as_tensor(sd)).float()


@pytest.mark.parametrize("bits", [1, 1.5, 3, 4, 8])
def test_round_trip_and_layout(bits, device):
    x = _gauss(300, np.linspace(2.0, 0.1, 40), 0).to(device)
    c = codecs.fit("transform", {"bits": bits}, x)
    total = int(np.floor(bits * 40 + 0.5))
    assert c.layout.bits == 1 and c.layout.symbols == total and c.layout.side_values == 0
    assert int(c.state["alloc"].sum()) == total
    codes, side = codecs.encode(c, x)
    assert side is None and codes.shape == (300, c.layout.words)
    y = codecs.decode(c, codes, side)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # re-encoding a reconstruction gives the same codes (levels map to themselves)
    assert torch.equal(codecs.encode(c, y)[0], codes)
    assert _rel(c, x) < 1.0


def test_allocation_follows_variances_and_sums_to_budget():
    lam = np.array([16.0, 8.0, 4.0, 4.0, 1.0, 0.25, 0.01, 0.0])
    for total in (1, 5, 12, 20, 40, 64):
        a = transform.allocate(lam, total)
        assert a.dtype == np.uint8 and a.max() <= 8
        # every bit spent (the zero-variance component takes none, the others can hold 56)
        assert int(a.sum()) == min(total, 56) and a[-1] == 0
        assert np.all(np.diff(a.astype(int)) <= 0)  # more variance, at least as many bits


def test_allocation_is_the_greedy_optimum():
    """Same as a naive greedy; and no single bit moved elsewhere lowers sum lambda_i d(b_i)."""
    rng = np.random.default_rng(3)
    lam = np.sort(rng.lognormal(0, 2, 30))[::-1]
    d = transform.distortions()
    assert d[0] == 1.0 and d[4] == pytest.approx(0.009497, rel=1e-3)
    assert np.all(np.diff(d) < 0) and np.all(np.diff(np.diff(d)) > 0)  # convex: greedy is optimal
    total = 90
    a = transform.allocate(lam, total)
    b = [0] * 30
    for _ in range(total):
        i = max((i for i in range(30) if b[i] < 8), key=lambda i: (lam[i] * (d[b[i]] - d[b[i] + 1]), -i))
        b[i] += 1
    assert a.tolist() == b
    best = predicted_distortion(lam, a)
    for i in range(30):
        for j in range(30):
            if i != j and a[i] > 0 and a[j] < 8:
                m = a.copy()
                m[i] -= 1
                m[j] += 1
                assert predicted_distortion(lam, m) >= best - 1e-12


def test_known_truth_matches_reverse_water_filling():
    """Gaussian data, known diagonal covariance: measured error = sum lambda_i d(b_i)."""
    sd = 2.0 ** (-np.arange(24) / 5.0)  # variances from 1 down to 1/600, all distinct
    lam = sd**2
    train, test = _gauss(20_000, sd, 1), _gauss(20_000, sd, 2)
    for bits in (1, 2, 3):
        for shrink in (False, True):
            c = codecs.fit("transform", {"bits": bits, "shrink": shrink}, train)
            a = c.state["alloc"]
            assert np.all(np.diff(a.astype(int)) <= 0)
            predicted = predicted_distortion(lam, a)
            measured = float(((test - codecs.decode(c, *codecs.encode(c, test))) ** 2).sum(dim=1).mean())
            assert measured == pytest.approx(predicted, rel=0.04), (bits, shrink)
    # and it beats the same bits spent uniformly (lloyd per coordinate, no rotation)
    c = codecs.fit("transform", {"bits": 2}, train)
    uniform = codecs.fit("lloyd", {"bits": 2, "mode": "fit_dim", "rotate": False}, train)
    assert _rel(c, test) < 0.6 * _rel(uniform, test)


def test_zero_bit_components_decode_to_the_mean():
    # 4 informative dims, 12 near-constant ones: at 1 bit/dim the small ones get nothing
    sd = np.r_[np.full(4, 10.0), np.full(12, 1e-3)]
    x = _gauss(500, sd, 4) + torch.arange(16.0)
    c = codecs.fit("transform", {"bits": 1, "shrink": False}, x)
    a = c.state["alloc"]
    assert a.sum() == 16 and np.all(a[:4] == 4) and np.all(a[4:] == 0)
    # all-zero codes: every component at its lowest level except 0-bit ones, which sit at the mean
    y = codecs.decode(c, *codecs.encode(c, x))
    mu, v = c.state["mean"].astype(np.float64), c.state["basis"].astype(np.float64)
    z_hat = (y.double().numpy() - mu) @ v
    assert np.abs(z_hat[:, 4:]).max() < 1e-4
    # a constant sample: nothing to code, everything decodes to the constant
    k = torch.full((10, 6), 3.25)
    ck = codecs.fit("transform", {"bits": 4}, k)
    assert ck.state["alloc"].sum() == 0
    assert torch.equal(codecs.decode(ck, *codecs.encode(ck, k)), k)


def test_rank_deficient_sample():
    """Fewer rows than dimensions: the sample spans a subspace, still codes it."""
    x = _gauss(10, np.ones(50), 5)
    c = codecs.fit("transform", {"bits": 2, "shrink": False}, x)
    a = c.state["alloc"]
    assert np.all(a[9:] == 0) and a.sum() == min(100, 9 * 8)  # rank 9 after centring
    assert _rel(c, x) < 0.01
    cs = codecs.fit("transform", {"bits": 2}, x)  # shrinkage gives the unseen directions bits
    assert cs.state["alloc"].sum() == 100


def test_scale_invariance():
    x = _gauss(200, np.linspace(1, 0.1, 16), 6)
    c = codecs.fit("transform", {"bits": 3}, x)
    codes = codecs.encode(c, x)[0]
    for s in (2.0**60, 2.0**-60):
        cs = codecs.fit("transform", {"bits": 3}, x * s)
        assert torch.equal(codecs.encode(cs, x * s)[0], codes)
        assert _rel(cs, x * s) == pytest.approx(_rel(c, x), rel=1e-5)


def test_minilm_held_out_target(minilm):
    x = torch.from_numpy(minilm).float()
    train, test = x[:400], x[400:]
    # measured 0.00637 (lloyd gaussian after rotation, same 4 bits: 0.0094)
    assert _rel(codecs.fit("transform", {"bits": 4}, train), test) <= 0.0075
    for bits, bound in ((1, 0.215), (2, 0.076), (3, 0.024)):  # measured 0.206, 0.0725, 0.0222
        held = _rel(codecs.fit("transform", {"bits": bits}, train), test)
        assert held <= bound
        assert held < _rel(codecs.fit("lloyd", {"bits": bits}, train), test)
    # without shrinkage the small sample variances are too narrow: held out 0.039
    assert _rel(codecs.fit("transform", {"bits": 4, "shrink": False}, train), test) > 0.02
    # the per-vector gain does not pay its 32 bits: the same bits in the allocation win
    with_gain = _rel(codecs.fit("transform", {"bits": 4, "gain": True}, train), test)
    more_bits = _rel(codecs.fit("transform", {"bits": 4 + 32 / 384}, train), test)
    assert more_bits < with_gain


def test_fitted_levels(minilm):
    x = torch.from_numpy(minilm).float()
    c = codecs.fit("transform", {"bits": 2, "levels": "fitted"}, x)
    g = codecs.fit("transform", {"bits": 2}, x)
    assert not np.array_equal(c.state["levels"], g.state["levels"])
    assert _rel(c, x) <= _rel(g, x) * 1.01  # in sample, k-means is at least as good
    # too small a sample for k-means: the Gaussian levels are kept
    small = x[:40]
    assert np.array_equal(
        codecs.fit("transform", {"bits": 2, "levels": "fitted"}, small).state["levels"],
        codecs.fit("transform", {"bits": 2}, small).state["levels"],
    )


def test_gain_side_value():
    x = _gauss(300, np.linspace(2, 0.2, 32), 7)
    c = codecs.fit("transform", {"bits": 2, "gain": True}, x)
    codes, side = codecs.encode(c, x)
    assert c.layout.side_values == 1 and side.shape == (300, 1)
    assert float(side.mean()) == pytest.approx(1.0, abs=0.1)
    y = codecs.decode(c, codes, side)
    y1 = codecs.decode(c, codes, torch.ones_like(side))
    assert float(((x - y) ** 2).sum()) <= float(((x - y1) ** 2).sum())


def test_wide_input_refused_clearly():
    with pytest.raises(InvalidInput, match="transform supports D <= 2048"):
        codecs.fit("transform", {}, torch.randn(4, 2049))


@pytest.mark.parametrize(
    "params,match",
    [
        ({"bits": 0}, "bits"),
        ({"bits": 9}, "bits"),
        ({"bits": "four"}, "bits"),
        ({"levels": "uniform"}, "levels"),
        ({"rotate": True}, "rotate"),
    ],
)
def test_bad_params(params, match):
    with pytest.raises(InvalidInput, match=match):
        codecs.fit("transform", params, torch.randn(20, 8))


def test_bad_state_and_codes_refused():
    x = _gauss(100, np.linspace(1, 0.1, 8), 8)
    c = codecs.fit("transform", {"bits": 2}, x)
    obj = orjson.loads(orjson.dumps(c.to_json()))

    def with_state(name, arr):
        o = orjson.loads(orjson.dumps(obj))
        o["state"][name] = codecs.base.to_b64(arr)
        return o

    with pytest.raises(CodecMismatch, match="basis"):
        codecs.codec_from_json(with_state("basis", np.eye(7, dtype=np.float32)))
    a = c.state["alloc"].copy()
    a[0] += 1
    with pytest.raises(CodecMismatch, match="budget"):
        codecs.codec_from_json(with_state("alloc", a))
    with pytest.raises(CodecMismatch, match="sorted"):
        codecs.codec_from_json(with_state("levels", c.state["levels"][::-1].copy()))
    # bits past those the allocation uses must be zero
    rank_def = codecs.fit("transform", {"bits": 8, "shrink": False}, x[:3])
    codes, side = codecs.encode(rank_def, x[:3])
    codes[0, -1] |= 1 << ((rank_def.layout.symbols - 1) % 64)
    with pytest.raises(CodecMismatch, match="past"):
        codecs.decode(rank_def, codes, side)


def test_reuses_lloyd_tables():
    assert transform.distortions()[1:] == tuple(lloyd.gaussian_tables(b)[2] for b in range(1, 9))


def test_trellis_coding_lowers_held_out_error(minilm):
    """trellis=true codes each bit width's components along tcq's trellis: the same
    bits, less error than one Lloyd-Max quantizer per component, at every budget."""
    x = torch.from_numpy(minilm).float()
    train, test = x[:400], x[400:]
    for bits in (1, 2, 4):
        scalar = codecs.fit("transform", {"bits": bits}, train)
        trellis = codecs.fit("transform", {"bits": bits, "trellis": True}, train)
        assert trellis.layout == scalar.layout
        assert np.array_equal(trellis.state["alloc"], scalar.state["alloc"])
        assert _rel(trellis, test) < _rel(scalar, test) * 0.92, bits


def test_trellis_state_and_params_checked():
    x = _gauss(300, np.linspace(2, 0.2, 32), 3)
    c = codecs.fit("transform", {"bits": 3, "trellis": True}, x)
    assert c.to_json()["params"]["trellis"] is True
    # a codec without the option keeps the JSON (and the id) it had before it existed
    assert "trellis" not in codecs.fit("transform", {"bits": 3}, x).to_json()["params"]
    with pytest.raises(InvalidInput, match="trellis"):
        codecs.fit("transform", {"bits": 3, "trellis": True, "levels": "fitted"}, x)
    blob = c.to_json()
    from embquant.arrays import to_b64

    for key, broken, why in (
        ("scale", np.zeros(32, np.float32), "scale"),
        ("levels", np.asarray(c.state["levels"])[::-1].copy(), "sorted"),
        ("levels", np.asarray(c.state["levels"])[:-1].copy(), "levels"),
    ):
        bad = {**blob, "state": {**blob["state"], key: to_b64(broken)}}
        with pytest.raises(CodecMismatch, match=why):
            codecs.codec_from_json(bad)


def test_trellis_compiled_kernels_are_per_row():
    """The fused trellis encode and decode work in 16-row blocks: a row's codes, gain and
    decoded vector do not depend on the rows beside it, and a NaN row is refused."""
    from embquant.codecs import kernels

    if kernels.active() != "numba":
        pytest.skip("numba is not available")
    x = _gauss(200, np.linspace(2, 0.2, 32), 5)
    for params in ({"bits": 3, "trellis": True}, {"bits": 2.5, "trellis": True, "gain": True}):
        c = codecs.fit("transform", params, x)
        codes, side = codecs.encode(c, x)
        whole = codecs.decode(c, codes, side)
        for lo, hi in ((0, 1), (7, 30), (150, 200), (31, 64)):
            part_codes, part_side = codecs.encode(c, x[lo:hi])
            assert torch.equal(part_codes, codes[lo:hi])
            assert (part_side is None) == (side is None) and (side is None or torch.equal(part_side, side[lo:hi]))
            assert torch.equal(codecs.decode(c, codes[lo:hi], None if side is None else side[lo:hi]), whole[lo:hi])
        bad = x.clone()
        bad[150, 3] = float("nan")
        with pytest.raises(InvalidInput, match="NaN"):
            codecs.encode(c, bad)


# -- test_transform_threads.py, folded in ------------------------------------------------------------------
# transform fits do not depend on the number of BLAS/LAPACK or torch threads: the
# eigen-decomposition of the covariance (LAPACK through OpenBLAS) gives other bits with
# another thread count, which made the codec fitted over HTTP differ from the one fitted
# in process on the same rows.

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
