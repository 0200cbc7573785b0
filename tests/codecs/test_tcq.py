"""tcq (trellis-coded quantization): the Viterbi path is the best sequence the trellis
allows (checked by brute force), the distortion on N(0, 1) beats Lloyd-Max by the
margins the literature reports for 8-state TCQ, the compiled kernel and the torch
reference agree bit for bit, and the levels are deterministic and checked."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from embquant import codecs
from embquant.codecs import kernels, tcq
from embquant.codecs.lloyd import gaussian_tables
from embquant.errors import CodecMismatch

BACKENDS = ["torch"] + (["numba"] if kernels.active() == "numba" else [])


def _tables(bits: int):
    lv = np.array(tcq.gaussian_levels(bits))
    return torch.from_numpy(lv), torch.from_numpy(tcq.midpoints(lv))


def test_trellis_is_ungerboecks():
    """Even states branch into D0 / D2, odd ones into D1 / D3; both branches into any
    state come from the same pair of subsets; every state is reached twice."""
    into = {t: [] for t in range(tcq.STATES)}
    for s, (a, b) in enumerate(tcq.SUB):
        assert {a, b} == ({0, 2} if s % 2 == 0 else {1, 3})
        for bit, subset in enumerate((a, b)):
            into[(2 * s) % tcq.STATES + bit].append(subset)
    for t, subsets in into.items():
        assert len(subsets) == 2 and len(set(subsets)) == 2
        assert set(subsets) <= {0, 2} or set(subsets) <= {1, 3}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bits,dim", [(1, 7), (2, 5), (3, 3)])
def test_viterbi_finds_the_best_path(backend, bits, dim):
    """Among every symbol sequence (2**(bits * dim) of them), none decodes closer to
    the row than the Viterbi path's."""
    lv, mids = _tables(bits)
    rng = np.random.default_rng(bits)
    z = torch.from_numpy(rng.standard_normal((6, dim)).astype(np.float32) * 1.3)
    with kernels.using(backend):
        sym, chosen = tcq.viterbi(z, lv, mids)
        assert torch.equal(tcq.walk(sym, lv), chosen)  # the decoder walks the same path
    allseq = torch.tensor(list(itertools.product(range(1 << bits), repeat=dim)), dtype=torch.int64)
    with kernels.using("torch"):
        every = tcq.walk(allseq, lv).double()  # (2**(bits*dim), dim)
    for r in range(z.shape[0]):
        errs = ((every - z[r].double()) ** 2).sum(dim=1)
        got = float(((chosen[r].double() - z[r].double()) ** 2).sum())
        assert got <= float(errs.min()) * (1 + 1e-12) + 1e-15


@pytest.mark.parametrize("bits,gain_db", [(1, 0.7), (2, 1.2), (4, 1.5)])
def test_distortion_on_gaussian_beats_lloyd_max(bits, gain_db):
    """8-state TCQ on memoryless N(0, 1) is 0.8-1.7 dB better than Lloyd-Max at the
    same rate (Marcellin & Fischer 1990 report about 1 to 1.7 dB from 2 bits); measured
    on a sample the levels were not trained on."""
    lv, mids = _tables(bits)
    z = torch.from_numpy(np.random.default_rng(123).standard_normal((600, 384)).astype(np.float32))
    _, chosen = tcq.viterbi(z, lv, mids)
    mse = float(((chosen.double() - z.double()) ** 2).mean())
    lloyd = gaussian_tables(bits)[2]
    assert 10 * np.log10(lloyd / mse) >= gain_db, (mse, lloyd)


@pytest.mark.parametrize("bits", range(1, 9))
def test_levels_are_the_constants_training_gives(bits):
    """The constants (`tcq_levels`) are, bit for bit, what training through the trellis
    on the fixed sample gives (tests/support/tcq_levels.py), sorted and symmetric."""
    from tests.support import tcq_levels as support

    lv = np.array(tcq.gaussian_levels(bits))
    assert lv.shape == (2 << bits,) and lv.dtype == np.float32
    assert np.all(np.diff(lv) > 0) and np.allclose(lv, -lv[::-1], atol=1e-6)
    assert np.array_equal(support.train(bits).view(np.int32), lv.view(np.int32))
    with pytest.raises(ValueError, match="1 to 8 bits"):
        tcq.gaussian_levels(9)


@pytest.mark.parametrize("dim", [1, 2, 7, 384])
@pytest.mark.parametrize("params", [{"bits": 1}, {"bits": 3, "rotate": False}, {"bits": 4, "center": True}])
def test_compiled_equals_reference_every_batch_size(dim, params):
    if "numba" not in BACKENDS:
        pytest.skip("numba is not available")
    x = torch.from_numpy(np.random.default_rng(dim).standard_normal((37, dim)).astype(np.float32))
    codec = codecs.fit("tcq", params, x)
    with kernels.using("torch"):
        ref_codes, ref_side = codecs.encode(codec, x)
        ref_y = codecs.decode(codec, ref_codes, ref_side)
    with kernels.using("numba"):
        for n in (1, 2, 17, 37):
            codes, side = codecs.encode(codec, x[:n])
            assert torch.equal(codes, ref_codes[:n]) and torch.equal(side, ref_side[:n])
        assert torch.equal(codecs.decode(codec, ref_codes, ref_side), ref_y)


def test_better_than_lloyd_on_the_same_rows():
    x = torch.from_numpy(np.random.default_rng(5).standard_normal((500, 384)).astype(np.float32))
    for bits in (1, 2, 4):
        errs = []
        for name in ("lloyd", "tcq"):
            c = codecs.fit(name, {"bits": bits}, x)
            codes, side = codecs.encode(c, x)
            assert c.layout.bits_per_vector() == codecs.fit("lloyd", {"bits": bits}, x).layout.bits_per_vector()
            errs.append(codecs.quality(x, codecs.decode(c, codes, side))["relative_squared_error"])
        assert errs[1] < errs[0] * 0.85, (bits, errs)


def test_codec_state_is_checked():
    x = torch.randn(20, 8)
    codec = codecs.fit("tcq", {"bits": 2}, x)
    blob = codec.to_json()
    bad = dict(blob)
    lv = np.array(codec.state["levels"])
    for broken, why in ((lv[::-1].copy(), "sorted"), (lv[:4].copy(), "levels")):
        from embquant.arrays import to_b64

        bad["state"] = {**blob["state"], "levels": to_b64(broken)}
        with pytest.raises(CodecMismatch, match=why):
            codecs.codec_from_json(bad)


def test_unit_norm_stores_no_side_value_and_refuses_other_norms():
    from embquant.errors import InvalidInput

    x = torch.from_numpy(np.random.default_rng(9).standard_normal((50, 384)).astype(np.float32))
    x = x / x.norm(dim=1, keepdim=True)
    unit = codecs.fit("tcq", {"bits": 4, "norm": "unit"}, x)
    row = codecs.fit("tcq", {"bits": 4}, x)
    assert unit.layout.side_values == 0 and unit.layout.bits_per_vector() == 4 * 384
    codes, side = codecs.encode(unit, x)
    assert side is None
    # the same symbols as norm=row (unit rows have RMS 1/sqrt(D)), decoded without a gain
    assert torch.equal(codes, codecs.encode(row, x)[0])
    y = codecs.decode(unit, codes, None)
    assert codecs.quality(x, y)["relative_squared_error"] < 0.0075
    with pytest.raises(InvalidInput, match="norm='unit'"):
        codecs.encode(unit, x * 1.01)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5])
def test_kernels_agree_on_and_around_levels_and_midpoints(bits):
    """Values exactly at a level or a subset midpoint, their float32 neighbours, +-0,
    subnormals and huge values: the compiled Viterbi (16 rows at a time up to 4 bits,
    row by row above) picks the reference's symbols."""
    if "numba" not in BACKENDS:
        pytest.skip("numba is not available")
    lv, mids = _tables(bits)
    base = np.concatenate([lv.numpy(), mids.numpy().ravel(), [0.0, -0.0, 1e-45, -1e-45, 3e38, -3e38, 1.0, -1.0]])
    vals = np.concatenate([base, np.nextafter(base, np.inf), np.nextafter(base, -np.inf)]).astype(np.float32)
    for d in (7, 48):
        flat = np.tile(vals, -(-37 * d // vals.size))[: 37 * d]
        z = torch.from_numpy(np.random.default_rng(d).permutation(flat).reshape(37, d).copy())
        with kernels.using("torch"):
            ref = tcq.viterbi(z, lv, mids)
        with kernels.using("numba"):
            got = tcq.viterbi(z, lv, mids)
        assert torch.equal(ref[0], got[0]) and torch.equal(ref[1], got[1])
