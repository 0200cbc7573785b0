"""binary and int8 against sentence-transformers' quantize_embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embquant import codecs
from embquant.codecs import packing
from embquant.errors import InvalidInput

stq = pytest.importorskip("sentence_transformers.util.quantization")


def _x(n=40, d=50, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_sign_bits_match_sentence_transformers(precision):
    x = _x()
    x[0, :5] = 0.0  # zero maps to bit 0 in both
    c = codecs.fit("binary", {"scale": "none"}, x)
    codes, side = codecs.encode(c, x)
    assert side is None
    ours = packing.unpack(codes, 1, 50).numpy().astype(np.uint8)
    theirs = stq.quantize_embeddings(x.numpy(), precision=precision)
    if precision == "binary":
        theirs = (theirs.astype(np.int16) + 128).astype(np.uint8)
    # numpy packs the first dimension into the most significant bit of a byte; we pack LSB first
    assert np.array_equal(ours, np.unpackbits(theirs, axis=1)[:, :50])


def test_binary_decodes_to_row_mean_abs_which_is_the_best_gain():
    x = _x()
    c = codecs.fit("binary", {}, x)
    codes, side = codecs.encode(c, x)
    assert torch.allclose(side[:, 0], x.abs().mean(dim=1))
    y = codecs.decode(c, codes, side)
    assert torch.equal(y.abs(), side.expand_as(y))
    err = ((x - y) ** 2).sum()
    for f in (0.9, 1.1):  # any other gain is worse
        assert ((x - y * f) ** 2).sum() > err


def test_binary_scale_none_and_global():
    x = _x()
    y = codecs.decode(*(lambda c: (c, *codecs.encode(c, x)))(codecs.fit("binary", {"scale": "none"}, x)))
    assert set(y.unique().tolist()) == {-1.0, 1.0}
    g = codecs.fit("binary", {"scale": "global"}, x)
    assert float(g.state["scale"][0]) == pytest.approx(float(x.abs().mean()), rel=1e-6)
    assert g.layout.side_values == 0 and g.layout.bits_per_vector() == 64  # 50 bits in one word


def test_binary_on_minilm(minilm):
    x = torch.from_numpy(minilm).float()
    rel = {}
    for p in ({}, {"rotate": True}):
        c = codecs.fit("binary", p, x)
        rel[bool(p)] = codecs.quality(x, codecs.decode(c, *codecs.encode(c, x)))["relative_squared_error"]
    # 1 - 2/pi = 0.363 for Gaussian coordinates
    assert 0.3 < rel[False] < 0.40 and 0.3 < rel[True] < 0.40


def test_int8_bucket_indices_match_sentence_transformers():
    x = _x(200, 64)
    c = codecs.fit("int8", {}, x)
    ranges = np.stack([c.state["starts"], c.state["maxes"]])
    assert np.array_equal(ranges, np.stack([x.numpy().min(0), x.numpy().max(0)]))
    probe = torch.cat([x, _x(50, 64, seed=1) * 1.5])  # some beyond the fitted range: both clip
    sym = codecs.check_codes(c, *codecs.encode(c, probe)).numpy()
    u = stq.quantize_embeddings(probe.numpy(), precision="uint8", ranges=ranges)
    i = stq.quantize_embeddings(probe.numpy(), precision="int8", ranges=ranges)
    assert np.array_equal(sym, u.astype(np.int64))
    assert np.array_equal(sym - 128, i.astype(np.int64))


def test_int8_midpoint_beats_lower_edge_fourfold():
    x = _x(2000, 32, seed=2)
    c = codecs.fit("int8", {}, x)
    codes, _ = codecs.encode(c, x)
    y = codecs.decode(c, codes, None)
    sym = codecs.check_codes(c, codes, None).float()
    lower = torch.from_numpy(c.state["starts"]) + sym * torch.from_numpy(c.state["steps"])
    ours, edge = float(((x - y) ** 2).mean()), float(((x - lower) ** 2).mean())
    assert 3.0 < edge / ours < 5.0
    assert float((x - y).abs().max()) <= float(c.state["steps"].max()) / 2 + 1e-6


def test_int8_clips_and_handles_constant_dims():
    x = _x(30, 6)
    x[:, 2] = 0.5
    c = codecs.fit("int8", {}, x)
    y = codecs.decode(c, *codecs.encode(c, x))
    assert torch.equal(y[:, 2], x[:, 2])
    far = codecs.decode(c, *codecs.encode(c, x * 100))
    # clipped values decode at the middle of the end bins: at most half a step past the fitted range
    top = torch.from_numpy(c.state["starts"] + np.float32(255.5) * c.state["steps"])
    assert torch.all(far <= top) and torch.all(far >= torch.from_numpy(c.state["starts"]))
    assert torch.all(far.amax(0)[[0, 1, 3, 4, 5]] > torch.from_numpy(c.state["maxes"])[[0, 1, 3, 4, 5]])


def test_int8_equals_faiss_sq8_on_held_out_minilm(minilm):
    """Every bin decodes at its midpoint, the top one too, as faiss SQ8 does: on real
    MiniLM embeddings (fit on 300, measured on 300 others) the codes are faiss's and the
    error is faiss's; decoding the top bin at the fitted maximum (the old rule) is
    worse there (values past the maximum land in it)."""
    faiss = pytest.importorskip("faiss")
    tr, te = minilm[:300], minilm[300:]
    c = codecs.fit("int8", {}, torch.from_numpy(tr))
    codes, _ = codecs.encode(c, torch.from_numpy(te))
    y = codecs.decode(c, codes, None).numpy().astype(np.float64)
    sym = codecs.check_codes(c, codes, None).numpy()
    sq = faiss.ScalarQuantizer(tr.shape[1], faiss.ScalarQuantizer.QT_8bit)
    sq.train(tr)
    fcodes = sq.compute_codes(te)
    fy = sq.decode(fcodes).astype(np.float64)
    assert (fcodes.astype(np.int64) != sym).mean() < 1e-4  # float rounding may move a rare boundary value
    t = te.astype(np.float64)
    ours, theirs = ((t - y) ** 2).sum() / (t**2).sum(), ((t - fy) ** 2).sum() / (t**2).sum()
    assert ours <= theirs * (1 + 1e-4), (ours, theirs)
    old = np.minimum(c.state["starts"] + (sym + 0.5).astype(np.float32) * c.state["steps"], c.state["maxes"])
    assert ((t - old) ** 2).sum() / (t**2).sum() > ours * 1.01


def test_bad_params():
    with pytest.raises(InvalidInput, match="scale"):
        codecs.fit("binary", {"scale": "max"}, _x())
    with pytest.raises(InvalidInput, match="bits"):
        codecs.fit("int8", {"bits": 4}, _x())
