"""The `blockwise` scheme, and parity with bitsandbytes' block-wise quantizers on CPU.

Parity findings (bitsandbytes 0.50.2, CPU):
- absmax per block: identical.
- 4-bit (nf4, fp4, `quantize_4bit`): identical codes and reconstructions on these
  samples; ties at a midpoint could go either way (bnb multiplies by 1/absmax and
  uses bucketize with right=False), so a fraction of 1e-3 is allowed.
- 8-bit dynamic map (`quantize_blockwise`, native C++ kernel): about 0.13-0.18% of
  codes differ, almost all by one level (a handful by 2-3 levels, for values below
  1e-5 of the absmax), and in every case ours is the nearer level: the kernel's
  search is not an exact nearest-level search (it misses by up to 3e-5 of the
  absmax). So the test checks that ours is never farther, instead of equality.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embquant import codecs
from embquant.codecs import tables
from embquant.errors import InvalidInput


def _bnb():
    return pytest.importorskip("bitsandbytes.functional")


def _gauss(n=64, d=256, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32))


def _ours(params, x):
    codec = codecs.fit("blockwise", params, x)
    sym, side = codec.scheme.encode(codec, x)
    return codec, sym, side


# ----------------------------------------------------------------------------- bitsandbytes parity


@pytest.mark.parametrize("block", [64, 256, 4096])
def test_dynamic_8bit_parity_with_bitsandbytes(block):
    F = _bnb()
    x = _gauss(32, 4096, seed=block)
    codec, sym, side = _ours({"table": "dynamic", "block_size": block}, x)
    q, state = F.quantize_blockwise(x.reshape(-1), blocksize=block)
    q = q.long()
    assert torch.equal(side.reshape(-1), state.absmax)
    assert np.array_equal(state.code.numpy(), tables.DYNAMIC)
    ours = sym.reshape(-1)
    diff = ours != q
    assert float(diff.float().mean()) < 5e-3
    # where they differ, ours is the nearer level (bnb's search is approximate)
    z = (x.reshape(-1, block) / side.reshape(-1, 1)).reshape(-1).double()
    # mostly the neighbouring level; further only for tiny values (|z| < 1e-4)
    far = (ours - q).abs() > 1
    assert bool((z[far].abs() < 1e-4).all())
    lv = torch.from_numpy(tables.DYNAMIC.astype(np.float64))
    assert bool(((z - lv[ours]).abs() <= (z - lv[q]).abs() + 1e-12).all())
    # reconstructions: equal where the codes agree, and no worse overall
    y = codecs.decode(codec, *codecs.encode(codec, x)).reshape(-1)
    yb = F.dequantize_blockwise(q.to(torch.uint8), state)
    torch.testing.assert_close(y[~diff], yb[~diff], rtol=1e-6, atol=0)
    xf = x.reshape(-1)
    assert float((y - xf).abs().mean()) <= float((yb - xf).abs().mean()) + 1e-9


def _bnb_4bit_codes(F, packed: torch.Tensor, quant_type: str) -> torch.Tensor:
    """bnb packs two codes per byte, the first in the high nibble; map them to our sorted indices."""
    p = packed.reshape(-1).long()
    raw = torch.stack([p >> 4, p & 15], dim=1).reshape(-1)
    values = F.get_4bit_type(quant_type, device="cpu")[raw]
    return torch.searchsorted(torch.from_numpy(tables.get_table(quant_type).copy()), values)  # -0 finds 0


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("block", [64, 128])
def test_4bit_parity_with_bitsandbytes(quant_type, block):
    F = _bnb()
    x = _gauss(48, 512, seed=block)
    codec, sym, side = _ours({"table": quant_type, "block_size": block}, x)
    packed, state = F.quantize_4bit(x.reshape(-1), blocksize=block, quant_type=quant_type)
    assert torch.equal(side.reshape(-1), state.absmax)
    theirs = _bnb_4bit_codes(F, packed, quant_type)
    diff = sym.reshape(-1) != theirs
    assert float(diff.float().mean()) <= 1e-3
    # bnb's CPU dequantize_4bit is wrong for some 2-D shapes: compare on the 1-D view
    yb = F.dequantize_4bit(packed, state).reshape(-1)
    y = codecs.decode(codec, *codecs.encode(codec, x)).reshape(-1)
    torch.testing.assert_close(y[~diff], yb[~diff], rtol=1e-6, atol=0)


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_partial_last_block_matches_bitsandbytes_per_row(quant_type):
    """D = 100 with blocks of 64: each row is blocks [64, 36], as bnb does for a lone row."""
    F = _bnb()
    x = _gauss(8, 100, seed=3)
    codec, sym, side = _ours({"table": quant_type, "block_size": 64}, x)
    assert side.shape == (8, 2)
    for i in range(8):
        packed, state = F.quantize_4bit(x[i].contiguous(), blocksize=64, quant_type=quant_type)
        assert torch.equal(side[i], state.absmax)
        assert torch.equal(sym[i], _bnb_4bit_codes(F, packed, quant_type)[:100])


# ----------------------------------------------------------------------------- the scheme

CASES = [("dynamic", None), ("dynamic_unsigned", None), ("nf4", None), ("fp4", None)] + [
    ("linear", b) for b in range(2, 9)  # linear at 1 bit is refused (test_weak_settings.py)
]


@pytest.mark.parametrize("table,bits", CASES, ids=[f"{t}-{b}" for t, b in CASES])
@pytest.mark.parametrize("block,dim", [(64, 256), (48, 100), (7, 20), (4096, 300)])
def test_round_trip_every_table(table, bits, block, dim, device):
    x = _gauss(16, dim).to(device)
    if table == "dynamic_unsigned":
        x = x.abs()  # signed data is refused for the unsigned table (test_weak_settings.py)
    params = {"table": table, "block_size": block} | ({"bits": bits} if bits else {})
    codec = codecs.fit("blockwise", params, x)
    lv = tables.get_table(table, bits)
    g = math.ceil(dim / block)
    lay = codec.layout
    assert (lay.bits, lay.symbols, lay.side_values, lay.levels) == (bits or tables.native_bits(table), dim, g, len(lv))
    assert lay.bits_per_vector() == 64 * lay.words + 32 * g
    codes, side = codecs.encode(codec, x)
    assert side.shape == (16, g)
    y = codecs.decode(codec, codes, side)
    # each block scaled by its own absmax; error within half the widest gap of the table
    pad = g * block - dim
    xb = torch.nn.functional.pad(x, (0, pad)).reshape(16, g, block)
    assert torch.equal(side, xb.abs().amax(dim=2))
    half_gap = float(np.diff(lv.astype(np.float64)).max()) / 2
    err = torch.nn.functional.pad((y - x).abs(), (0, pad)).reshape(16, g, block)
    lo = -1.0 if lv.min() < 0 else 0.0  # unsigned tables clip negatives to 0
    if lo < 0:
        assert bool((err <= half_gap * side.unsqueeze(2) * (1 + 1e-5)).all())
    c_cpu, s_cpu = codecs.encode(codec, x.cpu())
    assert torch.equal(codes.cpu(), c_cpu) and torch.equal(side.cpu(), s_cpu)


def test_user_levels_blockwise():
    x = _gauss(4, 50)
    levels = [-1.0, -0.5, -0.25, -0.075, 0.075, 0.25, 0.5, 1.0]
    codec = codecs.fit("blockwise", {"levels": levels, "block_size": 16}, x)
    assert codec.params.bits == 3 and codec.layout.side_values == 4
    sym, side = codec.scheme.encode(codec, x)
    y = codecs.decode(codec, *codecs.encode(codec, x))
    scale = side.repeat_interleave(16, dim=1)[:, :50]
    assert torch.equal(y, torch.tensor(levels)[sym] * scale)


def test_outlier_only_coarsens_its_block():
    x = _gauss(2, 256)
    codec = codecs.fit("blockwise", {"table": "nf4", "block_size": 64}, x)
    y = codecs.decode(codec, *codecs.encode(codec, x))
    x2 = x.clone()
    x2[0, 70] = 1000.0
    y2 = codecs.decode(codec, *codecs.encode(codec, x2))
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[0, 64:128] = False
    assert torch.equal(y[keep], y2[keep])
    assert not torch.equal(y[0, 64:128], y2[0, 64:128])


def test_blocks_are_better_than_one_scale_per_row():
    x = _gauss(64, 1024)
    err = {}
    for name, params in [("codebook", {"table": "nf4"}), ("blockwise", {"table": "nf4", "block_size": 64})]:
        codec = codecs.fit(name, params, x)
        err[name] = codecs.quality(x, codecs.decode(codec, *codecs.encode(codec, x)))["relative_squared_error"]
    assert err["blockwise"] < 0.8 * err["codebook"]


def test_block_as_wide_as_the_row_equals_codebook():
    x = _gauss(8, 96)
    a = codecs.fit("blockwise", {"table": "dynamic", "block_size": 96}, x)
    b = codecs.fit("codebook", {"table": "dynamic"}, x)
    ca, sa = codecs.encode(a, x)
    cb, sb = codecs.encode(b, x)
    assert torch.equal(ca, cb) and torch.equal(sa, sb)


def test_seed_blockwise_beats_global_absmax():
    """Seed: dynamic 8-bit with one absmax gives about 0.012 mean abs error; "we could do even
    better when we use block-wise quantization" (bnb's default block of 4096, and 64)."""
    F = _bnb()
    x = _gauss(64, 4096, seed=7)
    codec = codecs.fit("codebook", {"table": "dynamic", "scale": "codec"}, x)
    global_err = float((codecs.decode(codec, *codecs.encode(codec, x)) - x).abs().mean())
    errs = {}
    for block in (4096, 64):
        codec = codecs.fit("blockwise", {"block_size": block}, x)
        errs[block] = float((codecs.decode(codec, *codecs.encode(codec, x)) - x).abs().mean())
    q, state = F.quantize_blockwise(x)  # the seed's call: default blocksize 4096
    bnb_err = float((F.dequantize_blockwise(q, state) - x).abs().mean())
    assert errs[4096] == pytest.approx(bnb_err, rel=1e-3)
    assert errs[64] < errs[4096] < global_err


@pytest.mark.parametrize(
    "params,message",
    [
        ({"block_size": 0}, r"block_size: .*greater than or equal to 2"),
        ({"block_size": 1}, r"block_size: .*greater than or equal to 2"),
        ({"block_size": 4097}, r"block_size: .*less than or equal to 4096"),
        ({"block_size": 1.5}, r"block_size: .*integer"),
        ({"block_size": "big"}, r"block_size: .*integer"),
        ({"table": "fp4", "bits": 8}, r"table 'fp4' is a 4-bit table, got bits=8"),
        ({"levels": [1.0, 0.0]}, r"levels must be sorted ascending"),
        ({"levels": [0.0, 0.0, 1.0]}, r"levels must be distinct"),
        ({"levels": [float("nan"), 1.0]}, r"levels must be finite"),
        ({"table": "nf4", "levels": [0.0, 1.0]}, r"give table or levels, not both"),
    ],
)
def test_bad_params_refused_with_clear_messages(params, message):
    with pytest.raises(InvalidInput, match=message):
        codecs.fit("blockwise", params, _gauss(2, 8))


def test_defaults_resolve_to_dynamic_8bit_block_64():
    codec = codecs.fit("blockwise", {}, _gauss(2, 8))
    assert codec.params.model_dump() == {
        "table": "dynamic", "bits": 8, "levels": None, "block_size": 64, "rotate": False, "rotation_seed": 0,
        "center": False,
    }
