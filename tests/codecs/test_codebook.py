"""Level tables and the `codebook` scheme (bitsandbytes-style: absmax-scaled non-linear codebooks)."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import torch

from embquant import codecs
from embquant.codecs import tables
from embquant.errors import CodecMismatch, InvalidInput

SEED_NONLINEAR = [-1.0, -0.5, -0.25, -0.075, 0.075, 0.25, 0.5, 1.0]


def _bnb():
    return pytest.importorskip("bitsandbytes.functional")


def _gauss(n=64, d=96, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


# ----------------------------------------------------------------------------- tables


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_equals_bitsandbytes(signed):
    ref = _bnb().create_dynamic_map(signed=signed).numpy()
    ours = tables.get_table("dynamic" if signed else "dynamic_unsigned")
    assert ours.dtype == np.float32 and ours.shape == (256,)
    assert np.array_equal(ours, ref)  # bit for bit, not just close
    assert np.array_equal(tables.create_dynamic_map(signed=signed), ref)


def test_dynamic_map_matches_the_seed_float64_version():
    """The seed computes in float64; we follow bitsandbytes' float32 arithmetic: 1-ulp apart at most."""

    def seed_map(signed=True, n=7):
        data = []
        for i in range(n):
            items = 2 ** (i + 7 - n) + 1 if signed else 2 ** (i + 7 - n + 1) + 1
            b = np.linspace(0.1, 1, items)
            m = (b[:-1] + b[1:]) / 2.0
            data += ((10 ** (-(n - 1) + i)) * m).tolist()
            if signed:
                data += (-(10 ** (-(n - 1) + i)) * m).tolist()
        data += [0, 1.0]
        return np.sort(np.array(data))

    for signed, name in [(True, "dynamic"), (False, "dynamic_unsigned")]:
        np.testing.assert_allclose(tables.get_table(name), seed_map(signed), rtol=2e-7, atol=0)


@pytest.mark.parametrize("n", [3, 5, 7])
@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_generalised_exponent_bits(n, signed):
    m = tables.create_dynamic_map(signed=signed, n=n)
    assert m.shape == (256,) and np.all(np.diff(m) >= 0)
    assert m.max() == 1.0 and (m.min() >= 0 if not signed else m.min() < -0.9)


def test_nf4_and_fp4_equal_bitsandbytes():
    F = _bnb()
    nf4 = F.get_4bit_type("nf4", device="cpu").numpy()
    assert np.array_equal(tables.get_table("nf4"), np.sort(nf4))
    fp4 = F.get_4bit_type("fp4", device="cpu").numpy()
    # bitsandbytes lists +0 and -0; one level here, so 15 distinct levels in 4 bits.
    assert np.array_equal(tables.get_table("fp4"), np.unique(fp4))
    assert tables.get_table("fp4").shape == (15,)


@pytest.mark.parametrize("name", tables.table_names())
def test_tables_sorted_distinct_normalised_readonly(name):
    t = tables.get_table(name)
    assert t.dtype == np.float32 and np.all(np.diff(t) > 0)
    assert t.max() == 1.0 and t.min() >= (0.0 if name.endswith("unsigned") else -1.0)
    assert not t.flags.writeable
    assert tables.get_table(name) is t  # computed once


@pytest.mark.parametrize("bits", range(1, 9))
def test_linear_table(bits):
    assert np.array_equal(tables.get_table("linear", bits), np.linspace(-1, 1, 2**bits).astype(np.float32))


def test_get_table_errors():
    with pytest.raises(InvalidInput, match="unknown level table 'nf5'; known tables: dynamic, dynamic_unsigned, nf4"):
        tables.get_table("nf5")
    with pytest.raises(InvalidInput, match="'nf4' is a 4-bit table, got bits=8"):
        tables.get_table("nf4", 8)
    with pytest.raises(InvalidInput, match="linear table bits must be in 1..8, got 9"):
        tables.get_table("linear", 9)
    with pytest.raises(InvalidInput, match="exponent bits n must be in 1..7, got 8"):
        tables.create_dynamic_map(n=8)


# ----------------------------------------------------------------------------- scheme

TABLE_CASES = [("dynamic", None), ("dynamic_unsigned", None), ("nf4", None), ("fp4", None)] + [
    ("linear", b) for b in range(2, 9)  # linear at 1 bit is refused (test_weak_settings.py)
]


def _nearest_ok(z: np.ndarray, levels: np.ndarray, sym: np.ndarray) -> None:
    """The chosen level is a nearest one (float64 distances; float32 midpoints may split a tie)."""
    d = np.abs(z[..., None].astype(np.float64) - levels.astype(np.float64))
    chosen = np.take_along_axis(d, sym[..., None], axis=-1)[..., 0]
    assert np.all(chosen <= d.min(axis=-1) + 1e-7)


@pytest.mark.parametrize("table,bits", TABLE_CASES, ids=[f"{t}-{b}" for t, b in TABLE_CASES])
@pytest.mark.parametrize("scale", ["row", "codec"])
def test_round_trip_every_table(table, bits, scale, device):
    x = _gauss().to(device)
    if table == "dynamic_unsigned":
        x = x.abs()  # signed data is refused for the unsigned table (test_weak_settings.py)
    params = {"table": table, "scale": scale} | ({"bits": bits} if bits else {})
    codec = codecs.fit("codebook", params, x)
    lv = tables.get_table(table, bits)
    lay = codec.layout
    assert lay.bits == codec.params.bits == (bits or tables.native_bits(table)) and lay.levels == len(lv)
    assert lay.side_values == (1 if scale == "row" else 0)
    sym, side = codec.scheme.encode(codec, x)
    amax = x.abs().amax(dim=1, keepdim=True) if scale == "row" else x.abs().max().view(1, 1)
    if scale == "row":
        assert torch.equal(side, amax)
    z = (x / amax).cpu().numpy()
    _nearest_ok(z, lv, sym.cpu().numpy())
    codes, side2 = codecs.encode(codec, x)
    y = codecs.decode(codec, codes, side2)
    # decoded values are table levels times the absmax
    assert torch.equal(y, torch.from_numpy(lv.copy()).to(device)[sym] * amax)
    # the same codes on every device
    c_cpu, _ = codecs.encode(codec, x.cpu())
    assert torch.equal(codes.cpu(), c_cpu)


def test_layout_cost():
    c = codecs.fit("codebook", {"table": "nf4"}, _gauss(4, 384))
    assert c.layout.bits_per_vector() == 4 * 384 + 32
    c = codecs.fit("codebook", {"table": "dynamic", "scale": "codec"}, _gauss(4, 384))
    assert c.layout.bits_per_vector() == 8 * 384


@pytest.mark.parametrize(
    "levels,bits",
    [([-1.0, 1.0], 1), ([-2.0, -0.3, 0.0, 0.4, 1.5], 3), (SEED_NONLINEAR, 3), (list(np.linspace(-1, 1, 129)), 8),
     (list(np.linspace(-1, 1, 256)), 8)],
    ids=["2", "5-unnormalised", "seed", "129", "256"],
)
def test_user_levels(levels, bits):
    x = _gauss()
    codec = codecs.fit("codebook", {"levels": levels}, x)
    assert codec.params.bits == bits and codec.params.table is None
    assert codec.layout.levels == len(levels)
    sym, side = codec.scheme.encode(codec, x)
    lv = np.asarray(levels, dtype=np.float32)
    _nearest_ok((x / side).numpy(), lv, sym.numpy())
    y = codecs.decode(codec, *codecs.encode(codec, x))
    assert torch.equal(y, torch.from_numpy(lv)[sym] * side)
    back = codecs.codec_from_json(orjson.loads(orjson.dumps(codec.to_json())))
    assert back.key == codec.key and back.params.levels == codec.params.levels


@pytest.mark.parametrize(
    "params,message",
    [
        ({"levels": [0.0, -1.0, 1.0]}, r"levels must be sorted ascending: levels\[0\]=0.0 > levels\[1\]=-1.0"),
        ({"levels": [-1.0, 0.5, 0.5, 1.0]}, r"levels must be distinct \(as float32\): levels\[1\] and levels\[2\]"),
        ({"levels": [-1.0, 0.5, 0.50000001, 1.0]}, r"levels must be distinct \(as float32\)"),
        ({"levels": [-1.0, float("nan"), 1.0]}, r"levels must be finite numbers"),
        ({"levels": [-1.0, float("inf")]}, r"levels must be finite numbers"),
        ({"levels": [-1.0, 1e39]}, r"levels must fit in float32"),
        ({"levels": [0.5]}, r"levels: .*at least 2"),
        ({"levels": list(range(257))}, r"levels: .*at most 256"),
        ({"levels": [-1.0, 1.0], "table": "nf4"}, r"give table or levels, not both"),
        ({"levels": [-1.0, 0.0, 1.0], "bits": 3}, r"3 levels take 2 bits; bits=3 was given"),
        ({"table": "nf4", "bits": 8}, r"table 'nf4' is a 4-bit table, got bits=8"),
        ({"table": "dynamic", "bits": 4}, r"table 'dynamic' is a 8-bit table, got bits=4"),
        ({"table": "linear", "bits": 9}, r"bits: .*less than or equal to 8"),
        ({"table": "nf5"}, r"table: .*'dynamic'.*'linear'"),
        ({"scale": "block"}, r"scale: .*'row' or 'codec'"),
        ({"nope": 1}, r"nope: .*not permitted"),
    ],
)
def test_bad_params_refused_with_clear_messages(params, message):
    with pytest.raises(InvalidInput, match=message):
        codecs.fit("codebook", params, _gauss(2, 8))


def test_codec_scale_needs_a_nonzero_sample():
    with pytest.raises(InvalidInput, match='scale="codec" needs a sample with a non-zero value'):
        codecs.fit("codebook", {"scale": "codec"}, torch.zeros(3, 8))


def test_codec_scale_state_checked_on_load():
    codec = codecs.fit("codebook", {"scale": "codec"}, _gauss())
    obj = orjson.loads(orjson.dumps(codec.to_json()))
    missing = dict(obj, state={})
    with pytest.raises(CodecMismatch, match="codec state lacks 'absmax'"):
        codecs.codec_from_json(missing)
    neg = codecs.fit("codebook", {"scale": "codec"}, _gauss()).to_json()
    from embquant.arrays import to_b64

    neg["state"] = {"absmax": to_b64(np.array([-1.0], dtype=np.float32))}
    with pytest.raises(CodecMismatch, match="codec absmax must be positive, got -1.0"):
        codecs.codec_from_json(orjson.loads(orjson.dumps(neg)))


def test_codec_scale_clips_values_beyond_the_fitted_absmax():
    x = _gauss()
    codec = codecs.fit("codebook", {"table": "nf4", "scale": "codec"}, x)
    amax = float(x.abs().max())
    y = codecs.decode(codec, *codecs.encode(codec, x * 10))
    assert float(y.max()) == pytest.approx(amax, rel=1e-6) and float(y.min()) == pytest.approx(-amax, rel=1e-6)


def test_rows_are_independent_and_zero_rows_decode_to_zero():
    x = _gauss(6, 32)
    x[2] = 0
    codec = codecs.fit("codebook", {"table": "dynamic"}, x)
    codes, side = codecs.encode(codec, x)
    y = codecs.decode(codec, codes, side)
    assert torch.equal(y[2], torch.zeros(32))
    for i in range(6):
        c, s = codecs.encode(codec, x[i : i + 1])
        assert torch.equal(c, codes[i : i + 1]) and torch.equal(s, side[i : i + 1])


# ----------------------------------------------------------------------------- the seed tutorial

# One absmax over the whole array, as the seed does (our scale="codec"), on a
# quarter of its randn(1024, 1024) for speed.
SEED_X = torch.from_numpy(np.random.default_rng(1).standard_normal((256, 1024)).astype(np.float32))


def _mae(params) -> float:
    codec = codecs.fit("codebook", dict(params, scale="codec"), SEED_X)
    y = codecs.decode(codec, *codecs.encode(codec, SEED_X))
    return float((y - SEED_X).abs().mean())


def test_seed_linear_vs_nonlinear_3bit():
    linear = _mae({"table": "linear", "bits": 3})
    nonlinear = _mae({"levels": SEED_NONLINEAR})
    # "an error of about 0.34 per value"; the global absmax of a smaller sample moves it a little
    assert linear == pytest.approx(0.34, abs=0.04)
    assert nonlinear < linear * 0.75  # "We can do better with non-linear quantization"


def test_seed_dynamic_8bit_error():
    assert _mae({"table": "dynamic"}) == pytest.approx(0.012, abs=0.0015)  # "an error as low as 0.012"


def test_seed_nearest_level_equals_the_seed_argmin():
    """The seed picks argmin |x/absmax - level| (cdist); thresholds pick the same level."""
    x = SEED_X[:16]
    for params, lv in [({"levels": SEED_NONLINEAR}, np.array(SEED_NONLINEAR, np.float32)), ({"table": "dynamic"}, tables.DYNAMIC)]:
        codec = codecs.fit("codebook", dict(params, scale="codec"), x)
        sym, _ = codec.scheme.encode(codec, x)
        normed = x.numpy() / np.abs(x.numpy()).max()
        ref = np.argmin(np.abs(normed.reshape(-1, 1) - lv.reshape(1, -1)), axis=1).reshape(x.shape)
        assert (ref != sym.numpy()).mean() <= 1e-4


def test_defaults_and_schema():
    codec = codecs.fit("codebook", {}, _gauss(2, 8))
    assert codec.params.model_dump() == {
        "table": "nf4", "bits": 4, "levels": None, "scale": "row", "rotate": False, "rotation_seed": 0,
        "center": False,
    }
    d = codecs.describe(codecs.get_scheme("codebook"))
    assert d["params"]["table"]["default"] == "nf4" and "fp4" in d["params"]["table"]["enum"]
    # a stored codec with explicit levels (table null) loads back
    p = codecs.parse_params(codecs.get_scheme("codebook"), {"table": None, "bits": 2, "levels": [-1.0, 0.0, 1.0]})
    assert p.table is None and p.bits == 2
