"""The compiled CPU kernels against the torch reference: the same codes, side values
and decoded floats for every scheme and bit width, any dimension, any batch; the
same errors for bad input; a fallback when numba cannot load."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from embquant import codecs
from embquant.codecs import kernels
from embquant.errors import CodecMismatch, InvalidInput
from tests.support.codecs import kernel_rows

numba = pytest.importorskip("numba")

DIMS = (1, 7, 100, 384, 1536)


_rows = kernel_rows


def _both(codec, x):
    with kernels.using("torch"):
        ref = codecs.encode(codec, x)
        yref = codecs.decode(codec, *ref)
    with kernels.using("numba"):
        got = codecs.encode(codec, x)
        y = codecs.decode(codec, *got)
    return ref, yref, got, y


def _assert_same(ref, yref, got, y):
    assert torch.equal(ref[0], got[0]), "codes differ"
    assert (ref[1] is None) == (got[1] is None)
    if ref[1] is not None:
        assert torch.equal(ref[1], got[1]), "side values differ"
        assert torch.equal(ref[1].view(torch.int32), got[1].view(torch.int32)), "side values' bits differ (+-0.0)"
    assert torch.equal(yref, y), "decoded values differ"


def _cases():
    for name, scheme in codecs.all_schemes().items():
        for params in scheme.examples:
            yield name, params


FUSED = [
    ("lloyd", {"bits": b, **extra})
    for b in (1, 3, 4, 8)
    for extra in ({}, {"rotate": False}, {"norm": "unit"}, {"mode": "fit_global"}, {"mode": "fit_dim"})
] + [("absmax", {"bits": b, "rotate": r}) for b in (2, 4, 7, 8) for r in (False, True)] + [
    ("codebook", p) for p in (
        {}, {"rotate": True}, {"table": "dynamic"}, {"table": "fp4", "scale": "codec"}, {"table": "linear", "bits": 3},
        {"levels": [-1.0, 0.0, 1.0]}, {"levels": [float(v) for v in np.linspace(-1, 1, 100)], "rotate": True},
    )
] + [
    ("distributional", p) for p in (
        {"bits": 4}, {"bits": 1}, {"n": 3, "zero": 0.0}, {"bits": 8, "rotate": True}, {"n": 100, "dist": "logistic"}, {"bits": 3, "dist": "cauchy_cdf"},
    )
] + [("int8", {}), ("int8", {"rotate": True})] + [
    ("binary", p) for p in ({}, {"rotate": True}, {"scale": "global"}, {"scale": "none", "rotate": True})
] + [
    ("transform", p) for p in ({"bits": 4}, {"bits": 1.5, "levels": "fitted"}, {"bits": 2, "gain": True}, {"bits": 8},
                               {"bits": 4, "trellis": True}, {"bits": 1.5, "trellis": True}, {"bits": 7, "trellis": True},
                               {"bits": 2, "trellis": True, "gain": True}, {"bits": 6, "trellis": True, "gain": True})
] + [
    ("affine", p) for p in (
        {"bits": 4}, {"bits": 3, "power_of_two": True, "group_size": 16},
        {"bits": 8, "rounding": "stochastic", "symmetric": True, "seed": 5},
        {"bits": 2, "rotate": True, "rounding": "stochastic", "group_size": 5, "power_of_two": True},
    )
] + [
    ("blockwise", p) for p in (
        {}, {"table": "nf4", "block_size": 20}, {"table": "linear", "bits": 3, "block_size": 8},
        {"levels": [float(v) for v in np.linspace(-1.5, 1.5, 100)], "block_size": 7, "rotate": True},
    )
] + [
    ("tcq", {"bits": b, **extra})
    for b in (1, 2, 3, 4)
    for extra in ({}, {"rotate": False}, {"norm": "unit"}, {"mode": "fit"})
] + [("tcq", {"bits": 4, "center": True}), ("tcq", {"bits": 5})]


@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("name,params", FUSED, ids=str)
def test_fused_kernels_equal_reference(name, params, d):
    unit = params.get("norm") == "unit"
    x = _rows(300 if d < 1000 else 60, d, unit=unit)
    # fitted with the default kernels (the same state as the torch reference gives:
    # test_fit_is_the_same_on_both_kernels; a torch fit of tcq or trellis takes a minute)
    codec = codecs.fit(name, params, x)
    _assert_same(*_both(codec, x))


def _same_state(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(u, v) for u, v in zip(a, b))
    if isinstance(a, (np.ndarray, torch.Tensor)):
        return np.array_equal(np.asarray(a), np.asarray(b))
    return a == b


@pytest.mark.parametrize("d", (7, 100))
@pytest.mark.parametrize("name,params", FUSED, ids=str)
def test_fit_is_the_same_on_both_kernels(name, params, d):
    """A fit gives the same codec state with the compiled kernels as with the torch
    reference (the kernel test above fits once, with the compiled ones)."""
    x = _rows(120, d, unit=params.get("norm") == "unit")
    with kernels.using("torch"):
        ref = codecs.fit(name, params, x)
    with kernels.using("numba"):
        got = codecs.fit(name, params, x)
    assert _same_state(ref.state, got.state)


def _edge_values(th: np.ndarray) -> np.ndarray:
    """Every threshold, its float32 neighbours and its negation; +-0.0, subnormals, the
    smallest normals, +-1 and values near float32's top."""
    th = np.asarray(th, np.float32).reshape(-1)
    special = np.array(
        [0.0, -0.0, 1e-45, -1e-45, 3e-39, -3e-39, 1.1754944e-38, -1.1754944e-38, 1.0, -1.0, 3e38, -3e38], np.float32
    )
    up, down = np.nextafter(th, np.float32(np.inf)), np.nextafter(th, np.float32(-np.inf))
    return np.concatenate([th, up, down, -th, special]).astype(np.float32)


def _spread(vals: np.ndarray, d: int, rows: int = 37) -> torch.Tensor:
    """vals repeated and shuffled over a (rows, d) batch: they land in every lane of a
    16-row block, in whole 16 x 16 transposition tiles and in the remainders."""
    flat = np.tile(vals, -(-rows * d // vals.size))[: rows * d]
    return torch.from_numpy(np.random.default_rng(d).permutation(flat).reshape(rows, d).copy())


@pytest.mark.parametrize("d", [5, 48, 67])
@pytest.mark.parametrize(
    "params",
    [
        {"table": "nf4"},  # 15 thresholds: the kernels' in-register binary search
        {"table": "linear", "bits": 5},  # 31: compared with all
        {"table": "dynamic"},  # 255: the bucketed search on float32 bit patterns
        {"levels": [float(v) for v in np.linspace(-1, 1, 100)]},  # 99
        # adjacent float32 levels: their midpoints round onto each other (tied thresholds)
        {"levels": [-1.0, -0.5, 0.25, 0.25000003, 0.25000006, 0.2500001, 0.25000012, 0.5, 1.0]},
    ],
    ids=str,
)
def test_codebook_values_on_and_around_thresholds(params, d):
    """scale='codec' with absmax 0.5 encodes z = x / 0.5 = 2x exactly, so these rows put z
    exactly on every threshold, one float32 step either side, on -0.0, on subnormals, and
    past float32's top (z = +-inf, at or past every threshold)."""
    from embquant.codecs.codebook import level_tensors

    codec = codecs.fit("codebook", {**params, "scale": "codec"}, torch.full((1, d), 0.5))
    th = level_tensors(codec.params, "cpu")[1].numpy()
    _assert_same(*_both(codec, _spread(_edge_values(th) * np.float32(0.5), d)))


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("d", [4, 64])
def test_lloyd_values_on_and_around_thresholds(bits, d):
    """norm='unit' without rotation encodes z = x * sqrt(D), exact for D = 4 and 64: one
    coordinate of each row is a threshold (a neighbour, -0.0, a subnormal) / sqrt(D),
    another makes the row unit-norm."""
    from embquant.codecs.lloyd import gaussian_tables

    v = _edge_values(gaussian_tables(bits)[0]) / np.float32(math.sqrt(d))
    v = v[np.abs(v) <= 0.99]
    x = np.zeros((v.size, d), np.float32)
    x[:, 0] = v
    x[:, d // 2 + 1] = np.sqrt(1.0 - v.astype(np.float64) ** 2).astype(np.float32)
    x = torch.from_numpy(x)
    codec = codecs.fit("lloyd", {"bits": bits, "norm": "unit", "rotate": False}, x)
    _assert_same(*_both(codec, x))


def test_bucket_index_counts_like_searchsorted():
    """`cpu_ops.bucket_index` + `cpu._bucket_count_T` (via table encode) against numpy on
    random and adversarial thresholds, including -0.0 and +0.0 in one table."""
    from embquant.codecs.kernels import cpu_ops

    g = np.random.default_rng(7)
    th = np.sort(np.concatenate([g.standard_normal(60), [-0.0, 0.0, 1e-40, -1e-40, 5.0, 5.0]]).astype(np.float32))
    bstart, tkeys, steps = cpu_ops.bucket_index(th)
    z = np.concatenate([_edge_values(th), g.standard_normal(5000).astype(np.float32) * 3])
    bits = (z + np.float32(0.0)).view(np.int32)
    keys = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    c = bstart[(keys >> 16) + (1 << 15)].astype(np.int64)
    for _ in range(steps):
        c += keys >= tkeys[c]
    assert steps > 1  # the general layout (a bucket with several thresholds)
    assert np.array_equal(c, np.searchsorted(th, z, side="right"))
    # the kernel itself, on this table and on lloyd 8-bit's (one threshold per bucket at
    # most: the paired layout, one 64-bit gather per lane)
    from embquant.codecs.kernels import cpu
    from embquant.codecs.lloyd import gaussian_tables

    for table in (th, gaussian_tables(8)[0]):
        bstart, tkeys, steps = cpu_ops.bucket_index(table)
        zz = np.concatenate([_edge_values(table), g.standard_normal(4096).astype(np.float32) * 3])
        zz = zz[~np.isnan(zz)]  # (a NaN counts nothing in the kernel; numpy sorts it last)
        zz = np.concatenate([zz, np.zeros(-len(zz) % 16, np.float32)])
        got = np.empty(len(zz), np.int32)
        cpu._bucket_count_T(zz.copy(), len(zz) // 16, bstart, tkeys, steps, got, 16)
        assert np.array_equal(got, np.searchsorted(table, zz, side="right")), steps
    assert steps == 1


@pytest.mark.parametrize("name,params", list(_cases()), ids=str)
def test_every_scheme_equal_reference(name, params):
    """Every scheme's examples, the compiled paths against the torch reference: the
    fused kernels, and the kernels hqq, bitcodes and tcq above 4 bits call from their
    torch code between compiled rotation and packing. Bit for bit."""
    d = 48 if name in ("bitcodes", "hqq", "transform") else 97
    x = _rows(120, d, seed=1, unit=params.get("norm") == "unit")
    with kernels.using("torch"):
        codec = codecs.fit(name, params, x)
    _assert_same(*_both(codec, x))


@pytest.mark.parametrize("name,params", [("lloyd", {"bits": 4}), ("absmax", {"bits": 4, "rotate": True}),
                                         ("transform", {"bits": 3, "gain": True})], ids=str)
def test_batch_sizes_1_to_n(name, params):
    """A row gets the same bits in a batch of any size and at any position (blocks
    of 16 rows and tasks of 512 are internal)."""
    x = _rows(1100, 384, seed=2)
    codec = codecs.fit(name, params, x)
    with kernels.using("numba"):
        codes, side = codecs.encode(codec, x)
        y = codecs.decode(codec, codes, side)
        lo = 0
        for size in (1, 2, 15, 16, 17, 33, 511, 512, 513):
            c, s = codecs.encode(codec, x[lo : lo + size])
            assert torch.equal(c, codes[lo : lo + size]) and torch.equal(s, side[lo : lo + size])
            assert torch.equal(codecs.decode(codec, c, s), y[lo : lo + size])
            lo = (lo + size) % 500


def test_rotation_kernel_equals_reference():
    from embquant.codecs import rotation
    from embquant.codecs.kernels import cpu_ops

    for d in DIMS:
        x = _rows(40, d, seed=3)
        for seed in (0, 12345):
            fwd = rotation.forward(x, seed)
            assert torch.equal(torch.from_numpy(cpu_ops.rotate(x.numpy(), seed)), fwd)
            assert torch.equal(torch.from_numpy(cpu_ops.rotate(fwd.numpy(), seed, inverse=True)), rotation.inverse(fwd, seed))


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8, 16])
def test_pack_unpack_kernels_equal_reference(bits):
    from embquant.codecs import packing
    from embquant.codecs.kernels import cpu_ops

    g = np.random.default_rng(bits)
    for length in (1, 63, 64, 65, 384):
        sym = g.integers(0, 1 << bits, size=(9, length), dtype=np.int64)
        words = cpu_ops.pack(sym, bits)
        assert np.array_equal(words, packing.pack(torch.from_numpy(sym), bits).numpy())
        back, status = cpu_ops.unpack(words, bits, length)
        assert np.array_equal(back, sym) and not status.any()


@pytest.mark.parametrize("bits", [3, 5, 6, 7])
def test_stray_bits_in_any_word_are_refused(bits):
    """Bits above the last whole symbol of every word, not only the last word, must be zero."""
    x = _rows(4, 384, seed=4)
    codec = codecs.fit("absmax", {"bits": bits}, x)
    codes, side = codecs.encode(codec, x)
    bad = codes.clone()
    bad[2, 0] |= 1 << 63  # the top bit of the first word is never used for 3, 5, 6, 7 bits
    for backend in ("torch", "numba"):
        with kernels.using(backend), pytest.raises(CodecMismatch, match="codes row 2: unused bits"):
            codecs.decode(codec, bad, side)
        with kernels.using(backend), pytest.raises(CodecMismatch, match="codes row 2: unused bits"):
            codecs.check_codes(codec, bad, side)


def test_errors_match_reference():
    x = _rows(40, 64, seed=5, unit=True)
    absmax = codecs.fit("absmax", {"bits": 4}, x)
    unit = codecs.fit("lloyd", {"bits": 4, "norm": "unit"}, x)
    codes, side = codecs.encode(absmax, x)
    over = codes.clone()
    over[7, 1] = 0xF  # symbol 16 of row 7: 15 is one past the 15 levels of 4-bit absmax
    nan = x.clone()
    nan[9, 3] = float("nan")
    off = x.clone()
    off[11] *= 1.01
    cases = [
        (lambda: codecs.decode(absmax, over, side), CodecMismatch, "codes row 7, symbol 16: value 15"),
        (lambda: codecs.encode(absmax, nan), InvalidInput, "NaN or Inf"),
        (lambda: codecs.encode(unit, off), InvalidInput, "row 11 has norm 1.01"),
        (lambda: codecs.decode(absmax, codes, torch.full_like(side, 1e38)), CodecMismatch, "beyond float32 range"),
    ]
    for fn, exc, msg in cases:
        for backend in ("torch", "numba"):
            with kernels.using(backend), pytest.raises(exc, match=msg):
                fn()


def test_affine_side_value_errors_match_reference():
    x = _rows(20, 40, seed=8)
    for params, bad, msg in (
        ({"bits": 4, "power_of_two": True}, lambda s: s.__setitem__((3, 0), 0.5), "integer exponents"),
        ({"bits": 4, "power_of_two": True}, lambda s: s.__setitem__((3, 0), 200.0), "integer exponents"),
        ({"bits": 4}, lambda s: s.__setitem__((2, 0), -1.0), "every step"),
        ({"bits": 4, "group_size": 8}, lambda s: s.__setitem__((2, 7), 0.25), "zero point b must be an integer"),
    ):
        codec = codecs.fit("affine", params, x)
        codes, side = codecs.encode(codec, x)
        side = side.clone()
        bad(side)
        for backend in ("torch", "numba"):
            with kernels.using(backend), pytest.raises(CodecMismatch, match=msg):
                codecs.decode(codec, codes, side)


def test_blockwise_errors_match_reference():
    x = _rows(30, 50, seed=9)
    codec = codecs.fit("blockwise", {"levels": [float(v) for v in np.linspace(-2, 2, 100)], "block_size": 16}, x)
    codes, side = codecs.encode(codec, x)
    over = codes.clone()
    over[6, 0] |= 0x7F << 7  # symbol 1 of row 6 becomes 127 (100 levels in 7 bits)
    pad = codes.clone()
    pad[4, 0] |= 1 << 63  # 9 symbols of 7 bits use 63 bits of a word
    top = codes.clone()
    top[2, 0] = (top[2, 0] & ~0x7F) | 99  # level +2.0 ...
    big = side.clone()
    big[2, 0] = 3e38  # ... times 3e38 is past float32's top
    nan = x.clone()
    nan[8, 9] = float("nan")
    cases = [
        (lambda: codecs.decode(codec, over, side), CodecMismatch, "codes row 6, symbol 1: value 127"),
        (lambda: codecs.decode(codec, pad, side), CodecMismatch, "codes row 4: unused bits"),
        (lambda: codecs.decode(codec, top, big), CodecMismatch, "beyond float32 range"),
        (lambda: codecs.encode(codec, nan), InvalidInput, "NaN or Inf"),
    ]
    for fn, exc, msg in cases:
        for backend in ("torch", "numba"):
            with kernels.using(backend), pytest.raises(exc, match=msg):
                fn()


def test_transform_errors_match_reference():
    """transform's own checks, in the reference's order: unused bits of the last word,
    then bits past the allocation (a rank-3 sample leaves components without bits),
    then a decoded row beyond float32."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(200, 3, generator=g) @ torch.randn(3, 16, generator=g)
    codec = codecs.fit("transform", {"bits": 4, "gain": True, "shrink": False}, x)
    used = int(codec.state["alloc"].sum())
    assert used < codec.layout.symbols  # the premise: bits the allocation leaves unused
    codes, side = codecs.encode(codec, x)
    extra = codes.clone()
    extra[5, used // 64] |= 1 << (used % 64)
    nan = x.clone()
    nan[4, 2] = float("inf")
    cases = [
        (lambda: codecs.decode(codec, extra, side), CodecMismatch, f"codes carry bits past the {used}"),
        (lambda: codecs.encode(codec, nan), InvalidInput, "NaN or Inf"),
        (lambda: codecs.decode(codec, codes, torch.full_like(side, 3e38)), CodecMismatch, "beyond float32 range"),
    ]
    wide = codecs.fit("transform", {"bits": 2.5}, torch.randn(100, 10, generator=g))  # 25 bits: 39 spare in the word
    wcodes, _ = codecs.encode(wide, torch.randn(12, 10, generator=g))
    wpad = wcodes.clone()
    wpad[9, 0] |= 1 << 40
    cases.append((lambda: codecs.decode(wide, wpad, None), CodecMismatch, "codes row 9: unused bits"))
    for fn, exc, msg in cases:
        for backend in ("torch", "numba"):
            with kernels.using(backend), pytest.raises(exc, match=msg):
                fn()


def test_fallback_when_numba_cannot_load(monkeypatch, caplog):
    """A machine where the compiled path cannot load uses the reference, with one log line."""
    import builtins

    real_import = builtins.__import__

    def no_numba(name, *a, **k):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("numba is not installed")
        return real_import(name, *a, **k)

    import sys

    monkeypatch.setattr(builtins, "__import__", no_numba)
    monkeypatch.setitem(kernels._state, "numba_ok", None)
    monkeypatch.delitem(sys.modules, "embquant.codecs.kernels.cpu", raising=False)
    monkeypatch.delitem(sys.modules, "embquant.codecs.kernels.cpu_ops", raising=False)
    monkeypatch.delattr(kernels, "cpu", raising=False)
    monkeypatch.delattr(kernels, "cpu_ops", raising=False)
    with caplog.at_level(logging.WARNING, logger="embquant.kernels"):
        with kernels.using("auto") as active:
            assert active == "torch"
            x = _rows(8, 16)
            codec = codecs.fit("lloyd", {"bits": 4}, x)
            codecs.decode(codec, *codecs.encode(codec, x))
    assert sum("compiled CPU kernels unavailable" in r.message for r in caplog.records) == 1
    with pytest.raises(RuntimeError, match="numba"):
        kernels.set_backend("numba")
    monkeypatch.undo()
    kernels._state["numba_ok"] = None
    kernels.set_backend("auto")
    assert kernels.active() == "numba"


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="auto"):
        kernels.set_backend("cuda-magic")
