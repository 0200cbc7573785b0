"""lloyd: the Gaussian Lloyd-Max tables (known truth), the fitted modes, and the
error targets on real MiniLM embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embquant import codecs
from embquant.codecs import lloyd
from embquant.errors import CodecMismatch, InvalidInput

# Max (1960), distortion of the Lloyd-Max quantizer of N(0, 1) at 1..4 bits.
LLOYD_MAX = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497}


@pytest.mark.parametrize("bits", sorted(LLOYD_MAX))
def test_gaussian_tables_are_lloyd_max(bits):
    th, lv, dist = lloyd.gaussian_tables(bits)
    assert dist == pytest.approx(LLOYD_MAX[bits], rel=1e-3)
    assert np.allclose(lv, -lv[::-1], atol=1e-6)  # symmetric
    assert np.all(np.diff(lv) > 0) and np.all((lv[:-1] < th) & (th < lv[1:]))
    # measured on a large sample, through the codec's own table lookup
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(bits), dtype=torch.float64).float()
    q = torch.from_numpy(lv)[torch.bucketize(z, torch.from_numpy(th), right=True)]
    assert float(((z - q) ** 2).mean()) == pytest.approx(LLOYD_MAX[bits], rel=0.01)


@pytest.mark.parametrize("bits", range(1, 10))
def test_gaussian_tables_are_the_iteration_value_for_value(bits):
    """The constants (codecs/lloyd_max.py) are what Lloyd's iteration on the exact
    density gives (tests/support/lloyd_max.py), bit for bit, except the middle threshold:
    its exact value is 0 and the iteration leaves a rounding residue there (1e-16 to
    1e-15) that depends on the scipy release (ndtri's last bit; scipy 1.17 differs
    from the release the table was written with). The stored residue stays: codes do not
    change across versions. The distortion agrees to rounding."""
    from tests.support.lloyd_max import lloyd_max

    th, lv, dist = lloyd.gaussian_tables(bits)
    want = lloyd_max(bits)
    assert th.dtype == lv.dtype == np.float32 and lv.shape == (1 << bits,)
    assert np.array_equal(lv, want[1])
    mid = len(th) // 2 if bits > 1 else None
    others = np.ones(len(th), bool)
    if mid is not None:
        others[mid] = False
        assert abs(float(th[mid])) < 1e-14 and abs(float(want[0][mid])) < 1e-14
    assert np.array_equal(th[others], want[0][others])
    assert dist == pytest.approx(want[2], rel=1e-9)


def test_gaussian_tables_only_for_the_widths_computed():
    with pytest.raises(ValueError, match="1 to 9 bits"):
        lloyd.gaussian_tables(10)


def test_known_levels():
    assert lloyd.gaussian_tables(1)[1][1] == pytest.approx(0.7979, abs=1e-4)  # sqrt(2/pi)
    assert lloyd.gaussian_tables(2)[1][2:].tolist() == pytest.approx([0.4528, 1.5104], abs=1e-4)


def test_codec_on_gaussian_data_hits_the_bound():
    x = torch.randn(2000, 256, generator=torch.Generator().manual_seed(1))
    for bits in (1, 2, 4):
        c = codecs.fit("lloyd", {"bits": bits}, x)
        y = codecs.decode(c, *codecs.encode(c, x))
        rel = codecs.quality(x, y)["relative_squared_error"]
        # the per-row least-squares gain makes it slightly better than the table's distortion
        assert rel <= LLOYD_MAX[bits] * 1.01


def _rel(codec, x):
    return codecs.quality(x, codecs.decode(codec, *codecs.encode(codec, x)))["relative_squared_error"]


def test_minilm_targets(minilm):
    x = torch.from_numpy(minilm).float()
    # data oblivious, after rotation: the Lloyd-Max figure (measured 0.00930)
    assert _rel(codecs.fit("lloyd", {"bits": 4}, x), x) <= 0.0095
    # rotation helps on real embeddings
    assert _rel(codecs.fit("lloyd", {"bits": 4}, x), x) < _rel(codecs.fit("lloyd", {"bits": 4, "rotate": False}, x), x)
    # fitted per dimension, in sample (measured 0.00738); held out it is about 0.0093 on 300 rows
    assert _rel(codecs.fit("lloyd", {"bits": 4, "mode": "fit_dim"}, x), x) <= 0.0075
    train, test = x[:300], x[300:]
    held = _rel(codecs.fit("lloyd", {"bits": 4, "mode": "fit_global"}, train), test)
    assert held <= 0.0095
    for bits, bound in ((1, 0.365), (2, 0.118)):
        assert _rel(codecs.fit("lloyd", {"bits": bits}, x), x) <= bound


def test_fit_global_on_gaussian_matches_lloyd_max():
    x = torch.randn(4000, 64, generator=torch.Generator().manual_seed(2))
    c = codecs.fit("lloyd", {"bits": 3, "mode": "fit_global", "rotate": False}, x)
    # close, not equal: rows are RMS-normalised (64 dims: lighter tails) and Lloyd stops after 60 steps
    assert np.allclose(c.state["levels"], lloyd.gaussian_tables(3)[1], atol=0.1)


def test_fit_dim_learns_each_dimension():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3000, 8, generator=g)
    x[:, 0] = torch.rand(3000, generator=g) * 4 - 2  # a uniform coordinate: evenly spaced optimal levels
    c = codecs.fit("lloyd", {"bits": 2, "mode": "fit_dim", "rotate": False}, x)
    assert c.state["levels"].shape == (8, 4) and c.state["thresholds"].shape == (8, 3)
    lv0 = c.state["levels"][0]
    assert np.allclose(np.diff(lv0), np.diff(lv0).mean(), rtol=0.1)
    assert _rel(c, x) < _rel(codecs.fit("lloyd", {"bits": 2, "rotate": False}, x), x)


def test_fit_dim_encode_is_per_dimension_searchsorted():
    x = torch.randn(50, 12)
    c = codecs.fit("lloyd", {"bits": 3, "mode": "fit_dim", "rotate": False}, x)
    codes, side = codecs.encode(c, x)
    sym = codecs.check_codes(c, codes, side)
    th = torch.from_numpy(c.state["thresholds"])
    z = x / x.double().square().mean(dim=1, keepdim=True).sqrt().float()
    for j in range(12):
        assert torch.equal(sym[:, j], torch.bucketize(z[:, j].contiguous(), th[j], right=True))


def test_gaussian_mode_stores_no_state_and_is_data_oblivious():
    a = codecs.fit("lloyd", {"bits": 4}, torch.randn(10, 32))
    b = codecs.fit("lloyd", {"bits": 4}, torch.randn(10, 32) * 5)
    assert dict(a.state) == {} and a.key == b.key


def test_bad_params_and_state():
    with pytest.raises(InvalidInput, match="bits"):
        codecs.fit("lloyd", {"bits": 9}, torch.randn(4, 8))
    with pytest.raises(InvalidInput, match="mode"):
        codecs.fit("lloyd", {"mode": "kmeans"}, torch.randn(4, 8))
    c = codecs.fit("lloyd", {"bits": 2, "mode": "fit_dim"}, torch.randn(20, 8))
    js = c.to_json()
    js["dim"] = 9
    with pytest.raises(CodecMismatch, match="levels"):
        codecs.codec_from_json(js)


def test_rms_square_root_is_correctly_rounded():
    """The RMS (a side value's basis) uses the correctly rounded float32 square root, as
    CUDA and the compiled kernels do; torch's CPU float32 sqrt is not always (2.13)."""
    from embquant.codecs._scalar import fixed_mean

    x = torch.randn(20000, 48, generator=torch.Generator().manual_seed(7))
    m = lloyd._row_max(x)
    mean = fixed_mean((x / m).square(), dim=1, keepdim=True)
    want = torch.from_numpy(np.sqrt(mean.numpy())) * m  # numpy's float32 sqrt is IEEE-exact
    assert torch.equal(lloyd._rms(x), want)


# -- test_lloyd_unit_norm.py, folded in ------------------------------------------------------------------
# lloyd with norm='unit': exactly `bits` per dimension, no side value.

def test_four_bits_per_dimension_at_the_gaussian_optimum(minilm):
    x = torch.from_numpy(minilm)
    codec = codecs.fit("lloyd", {"bits": 4, "norm": "unit"}, x)
    codes, side = codecs.encode(codec, x)
    assert side is None and codec.layout.bits_per_vector() == 4 * 384
    y = codecs.decode(codec, codes, side)
    rel = float(((x - y) ** 2).sum() / (x**2).sum())
    assert rel <= 0.0095, rel  # Lloyd-Max on N(0,1): 0.009497; measured 0.00939 on these 600


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_matches_lloyd_max_on_rotated_unit_vectors(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(2000, 256, generator=g, dtype=torch.float64)
    x = (x / x.norm(dim=1, keepdim=True)).float()
    codec = codecs.fit("lloyd", {"bits": bits, "norm": "unit"}, x)
    y = codecs.decode(codec, *codecs.encode(codec, x))
    rel = float(((x - y) ** 2).sum() / (x**2).sum())
    expected = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497}[bits]
    assert rel == pytest.approx(expected, rel=0.03)


def test_non_unit_vectors_are_refused_with_the_row():
    x = torch.randn(5, 64)
    x = x / x.norm(dim=1, keepdim=True)
    x[3] *= 1.1
    codec = codecs.fit("lloyd", {"norm": "unit"}, x[:3])
    with pytest.raises(InvalidInput, match="row 3 has norm 1.1"):
        codecs.encode(codec, x)
