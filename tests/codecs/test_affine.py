"""affine (lixilinx/Flexible_quantization): all eight variants, power-of-two scales, symmetric zero points,
the round(y + 1) - 1 tie rule, and unbiased, batch-invariant stochastic rounding."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from embquant import codecs
from embquant.codecs.affine import AffineParams, affine_dequantize, affine_quantize, row_uniforms
from embquant.errors import CodecMismatch, InvalidInput

VARIANTS = [
    {"power_of_two": pw, "symmetric": sym, "rounding": rnd}
    for pw, sym, rnd in itertools.product([False, True], [False, True], ["nearest", "stochastic"])
]
VIDS = ["-".join(["pow2" if v["power_of_two"] else "float", "sym" if v["symmetric"] else "asym", v["rounding"]]) for v in VARIANTS]


def _x(n=32, d=40, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _steps(side: torch.Tensor, p: AffineParams, ng: int) -> torch.Tensor:
    s = side[:, :ng].double()
    return torch.pow(2.0, -s) if p.power_of_two else s


@pytest.mark.parametrize("variant", VARIANTS, ids=VIDS)
@pytest.mark.parametrize("bits", range(2, 9))
def test_round_trip_error_within_a_step(bits, variant):
    p = AffineParams(bits=bits, group_size=8, **variant)
    x = _x()
    q, side = affine_quantize(x, p)
    assert q.dtype == torch.int64 and int(q.min()) >= 0 and int(q.max()) < (1 << bits)
    ng = 5
    assert side.shape == (32, ng * (1 if p.symmetric else 2))
    y = affine_dequantize(q, side, p)
    step = _steps(side, p, ng).repeat_interleave(8, dim=1)
    err = (y.double() - x.double()).abs() / step
    # nearest: half a step; stochastic: under one step (floor(y + u) is a neighbour of y)
    bound = 0.5 if variant["rounding"] == "nearest" else 1.0
    assert float(err.max()) <= bound + 1e-5, float(err.max())
    # through the public verbs too
    codec = codecs.fit("affine", p.model_dump(), x)
    codes, side2 = codecs.encode(codec, x)
    assert torch.equal(side2, side)
    assert torch.equal(codecs.decode(codec, codes, side2), y)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_power_of_two_decode_is_an_exact_shift(bits, symmetric):
    p = AffineParams(bits=bits, power_of_two=True, symmetric=symmetric, group_size=10)
    x = _x() * 3.7
    q, side = affine_quantize(x, p)
    e = side[:, :4].numpy().astype(np.float64)
    assert np.array_equal(e, np.round(e)), "the side value is the integer exponent"
    b = np.zeros_like(e) if symmetric else side[:, 4:].numpy().astype(np.float64)
    signed = q.numpy().astype(np.float64) - (1 << (bits - 1))
    expect = ((signed - np.repeat(b, 10, axis=1)) * np.repeat(2.0 ** -e, 10, axis=1)).astype(np.float32)
    assert np.array_equal(affine_dequantize(q, side, p).numpy(), expect)
    # and a = 2**e is the largest power of two that keeps the block's range in the codes
    steps = (1 << bits) - 1
    xb = x.double().reshape(32, 4, 10)
    span = (2 * xb.abs().amax(2)) if symmetric else (xb.amax(2) - xb.amin(2))
    assert torch.all(torch.pow(2.0, torch.from_numpy(e)) <= steps / span)
    assert torch.all(torch.pow(2.0, torch.from_numpy(e) + 1) > steps / span)


@pytest.mark.parametrize("power_of_two", [False, True])
def test_symmetric_has_zero_offset_and_exact_zero(power_of_two):
    p = AffineParams(bits=4, symmetric=True, power_of_two=power_of_two)
    x = _x(8, 33)
    x[:, ::4] = 0.0
    q, side = affine_quantize(x, p)
    assert side.shape == (8, 1), "symmetric blocks carry no b"
    y = affine_dequantize(q, side, p)
    assert torch.all(y[:, ::4] == 0), "b = 0: zero is a level"
    assert torch.all(q[:, ::4] == 8)  # signed 0 + 2**(bits-1)
    # the symmetric range is about zero: x and -x decode to mirrored values (except
    # the one extra negative code, never reached: the range's ends tie to odd)
    y_neg = affine_dequantize(*affine_quantize(-x, p), p)
    assert torch.equal(y_neg, -y)


def test_round_y_plus_one_minus_one_keeps_the_top_tie_in_range():
    """8 bits, symmetric, max|x| = 127.5: a = 1, b = 0 and y = x. round() ties to even
    would give 128 for 127.5 (one past the largest code); the seed's rule ties to odd."""
    p = AffineParams(bits=8, symmetric=True)
    x = torch.tensor([[127.5, -127.5, 0.5, 1.5, -0.5, 2.5, 126.5, 0.4]])
    q, side = affine_quantize(x, p)
    assert float(side[0, 0]) == 1.0  # step 1/a = 1
    signed = (q - 128).tolist()[0]
    assert signed == [127, -127, 1, 1, -1, 3, 127, 0]
    # same with the float64 rule written out, without the clamp doing the work
    y = x.double()
    assert (torch.round(y + 1) - 1).max() == 127 and torch.round(y).max() == 128


def test_uniform_data_error_matches_step_squared_over_12():
    """A uniform quantizer on uniform data: error ~ U(-step/2, step/2), MSE = step^2/12."""
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 4096, generator=g) * 2 - 1
    for bits in (3, 4, 6):
        p = AffineParams(bits=bits)
        q, side = affine_quantize(x, p)
        y = affine_dequantize(q, side, p)
        step = side[:, :1].double()
        mse = ((y.double() - x.double()) ** 2 / step**2).mean()
        assert abs(float(mse) - 1 / 12) < 0.03 / 12, float(mse)


def _draws(x, p, seeds):
    return torch.stack([affine_dequantize(*affine_quantize(x, p.model_copy(update={"seed": s})), p) for s in seeds])


def test_stochastic_rounding_is_unbiased_and_nearest_is_not():
    # Values a quarter of a step above a level: nearest always rounds down (bias -step/4).
    base = torch.arange(-8, 8, dtype=torch.float64).repeat(4)  # 64 values; 4 bits float a: step 1
    x = (base + 0.25 + torch.linspace(0, 0.5, 64, dtype=torch.float64)).float()[None]
    x[0, 0], x[0, -1] = -8.0, 7.0  # pin the range so the grid is exactly the integers
    pn = AffineParams(bits=4)
    ps = AffineParams(bits=4, rounding="stochastic")
    y_near = affine_dequantize(*affine_quantize(x, pn), pn)
    bias_near = float((y_near - x).abs().mean())
    assert bias_near > 0.1
    rms = {}
    for n in (16, 256, 2048):
        mean_y = _draws(x, ps, range(n)).double().mean(0)
        rms[n] = float(((mean_y - x.double()) ** 2).mean().sqrt())
    step = float(affine_quantize(x, ps)[1][0, 0])
    # For u uniform, Var(q) = f(1-f) step^2 <= step^2/4: the mean's error ~ step/(2 sqrt(N)).
    for n, r in rms.items():
        assert r < 1.5 * step / (2 * math.sqrt(n)), (n, r)
    # and it shrinks like 1/sqrt(N): 2048/16 = 128 draws -> about 11x smaller
    assert 5 < rms[16] / rms[2048] < 25, rms
    assert rms[2048] < bias_near / 10


def test_stochastic_noise_is_per_row_pure_and_seeded():
    p = AffineParams(bits=3, rounding="stochastic", seed=11, group_size=16)
    x = _x(20, 48)
    q, side = affine_quantize(x, p)
    for i in (0, 7, 19):
        qi, si = affine_quantize(x[i : i + 1], p)
        assert torch.equal(qi, q[i : i + 1]) and torch.equal(si, side[i : i + 1])
    shuffled = torch.flip(x, dims=[0])
    assert torch.equal(affine_quantize(shuffled, p)[0], torch.flip(q, dims=[0]))
    # a duplicate row gets the same noise; another seed gives other codes
    dup = torch.cat([x[:1], x[:1]])
    qd = affine_quantize(dup, p)[0]
    assert torch.equal(qd[0], qd[1])
    assert not torch.equal(affine_quantize(x, p.model_copy(update={"seed": 12}))[0], q)


def test_row_uniforms_look_uniform():
    x = _x(64, 512)
    u = row_uniforms(x, 3)
    assert float(u.min()) >= 0 and float(u.max()) < 1
    hist = torch.histc(u.float(), bins=16, min=0, max=1)
    expected = u.numel() / 16
    assert float((hist - expected).abs().max()) < 5 * math.sqrt(expected)
    # neighbouring elements and neighbouring seeds are uncorrelated
    assert abs(float(np.corrcoef(u[:, :-1].flatten(), u[:, 1:].flatten())[0, 1])) < 0.02
    assert abs(float(np.corrcoef(u.flatten(), row_uniforms(x, 4).flatten())[0, 1])) < 0.02


def test_far_from_zero_and_constant_blocks_stay_exact_enough():
    x = torch.tensor([[1e6, 1e6 + 1.0, 1e6 + 0.5, 1e6 + 0.25], [3.0, 3.0, 3.0, 3.0]])
    for variant in VARIANTS:
        p = AffineParams(bits=4, **variant)
        q, side = affine_quantize(x, p)
        y = affine_dequantize(q, side, p)
        assert torch.isfinite(y).all()
        if not variant["symmetric"]:
            assert float((y - x).abs().max()) <= 0.1, (variant, y)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"bits": 0}, "bits"),
        ({"bits": 9}, "bits"),
        ({"bits": 1}, "affine needs bits >= 2: with 1 bit the codes are {-1, 0}"),
        ({"bits": 1, "rounding": "stochastic"}, "affine needs bits >= 2"),
        ({"bits": 1, "symmetric": True, "power_of_two": True}, "affine needs bits >= 2"),
        ({"rounding": "up"}, "rounding"),
        ({"group_size": 0}, "group_size"),
        ({"seed": -1}, "seed"),
        ({"scale": "pow2"}, "scale"),
    ],
)
def test_bad_params(params, match):
    with pytest.raises(InvalidInput, match=match):
        codecs.fit("affine", params, _x())


def test_impossible_side_values_refused():
    p = {"bits": 4, "power_of_two": True}
    x = _x()
    codec = codecs.fit("affine", p, x)
    codes, side = codecs.encode(codec, x)
    bad = side.clone()
    bad[0, 0] += 0.5
    with pytest.raises(CodecMismatch, match="integer exponents"):
        codecs.decode(codec, codes, bad)
    codec = codecs.fit("affine", {"bits": 4}, x)
    codes, side = codecs.encode(codec, x)
    bad = side.clone()
    bad[0, 0] = -1.0
    with pytest.raises(CodecMismatch, match="positive"):
        codecs.decode(codec, codes, bad)
    bad = side.clone()
    bad[0, 1] += 0.5
    with pytest.raises(CodecMismatch, match="integer"):
        codecs.decode(codec, codes, bad)


def test_one_bit_is_refused_because_its_levels_collapse_on_zero(minilm):
    """Why bits=1 is refused, shown with the seed's own formula on real embeddings:
    with codes {-1, 0} and an integer b, one of the two levels of a row straddling
    zero is 0 itself, so nearly every coordinate decodes to 0 (no better than
    sending nothing), where sign bits with a gain halve the error."""
    x = torch.from_numpy(minilm[:200]).double()
    a = 1.0 / (x.amax(1, keepdim=True) - x.amin(1, keepdim=True))  # 2**1 - 1 = 1 step over the range
    b = torch.floor(-a * (x.amax(1, keepdim=True) + x.amin(1, keepdim=True)) / 2)
    q = (torch.round(x * a + b + 1) - 1).clamp(-1, 0)
    y = (q - b) / a
    assert float((y == 0).double().mean()) > 0.95
    rel = float(((x - y) ** 2).sum() / (x**2).sum())
    assert rel > 0.9
    sign = torch.sign(x) * x.abs().mean(1, keepdim=True)
    assert float(((x - sign) ** 2).sum() / (x**2).sum()) < 0.5
    with pytest.raises(InvalidInput, match="use binary"):
        codecs.fit("affine", {"bits": 1}, x.float())
