"""The numba backend's entry points: numpy in, numpy out, errors as the reference's.

`encode` / `decode` run a fused kernel for the schemes that have one (lloyd,
absmax, codebook, distributional, blockwise (the table kernels), int8 and binary in `cpu`; transform,
affine and tcq up to 4 bits in `transform_cpu`, `affine_cpu` and `tcq_cpu`) and
return None for the rest, which then take the reference path
(itself sped up by `pack`, `unpack` and the rotation kernels here).
"""

from __future__ import annotations

import math

import numpy as np

from ...errors import CodecMismatch
from .. import checks
from ..rotation import kernel_tables as rotation_tables
from .._scalar import midpoints
from ..lloyd import UNIT_TOLERANCE, gaussian_tables
from . import cpu
from .status import raise_encode_status

_NO_ROT = (
    np.ones((1, 1), np.float32),
    np.zeros((1, 1), np.int64),
    np.zeros((1, 1), np.int64),
    np.ones(1, np.int64),
    np.ones(1, np.float32),
)
for _a in _NO_ROT:  # read-only like `rotation_tables`: numba then compiles one kernel for both
    _a.setflags(write=False)


def _rot(params, dim: int):
    if getattr(params, "rotate", False):
        return True, rotation_tables(params.rotation_seed, dim)
    return False, _NO_ROT


# -- generic ----------------------------------------------------------------


def pack(sym: np.ndarray, bits: int) -> np.ndarray:
    n, length = sym.shape
    v = 64 // bits
    out = np.empty((n, -(-length // v)), np.int64)
    cpu.pack(np.ascontiguousarray(sym, dtype=np.int64), bits, out)
    return out


def unpack(words: np.ndarray, bits: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(symbols (N, length) int64, status per row: cpu.OK or cpu.BAD_PADDING)."""
    n = words.shape[0]
    sym = np.empty((n, length), np.int64)
    status = np.empty(n, np.uint8)
    cpu.unpack(np.ascontiguousarray(words, dtype=np.int64), bits, length, sym, status)
    return sym, status


def rotate(x: np.ndarray, seed: int, inverse: bool = False) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    signs, perm, inv, blocks, scales = rotation_tables(seed, x.shape[1])
    out = np.empty_like(x)
    if inverse:
        cpu.rotate_inverse(x, signs, inv, blocks, scales, out, cpu.RB)
    else:
        cpu.rotate_forward(x, signs, perm, blocks, scales, out, cpu.RB)
    return out


# -- fused schemes ------------------------------------------------------------


_NO_BUCKETS = (np.zeros(1, np.int32), np.zeros(1, np.int32), -1)


def bucket_index(th: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(bstart int32 (BUCKET_COUNT,), tkeys int32 (m + steps,), steps) for `cpu._bucket_count_T`:
    the sorted thresholds' order-preserving int32 keys (bits ^ ((bits >> 31) & 0x7fffffff),
    -0.0 taken as +0.0), and per bucket of 2**BUCKET_SHIFT keys the number of thresholds
    below it; steps is the most thresholds any bucket holds (the compares a count needs).
    With steps == 1, tkeys is instead each bucket's pair (its start, the key of the one
    threshold it may hold, int32 max if none), an int64 per bucket viewed as int32s."""
    th = np.ascontiguousarray(np.asarray(th, dtype=np.float32).reshape(-1) + np.float32(0.0))
    b = th.view(np.int32)
    keys = b ^ ((b >> 31) & np.int32(0x7FFFFFFF))
    if keys.size > np.iinfo(np.int16).max or (keys.size > 1 and not np.all(np.diff(keys.astype(np.int64)) >= 0)):
        return _NO_BUCKETS  # unsorted (a codec check refuses these first) or huge: bisection
    lo = (np.arange(cpu.BUCKET_COUNT, dtype=np.int64) - cpu.BUCKET_COUNT // 2) << cpu.BUCKET_SHIFT
    start = np.searchsorted(keys.astype(np.int64), lo, side="left")
    steps = int(np.max(np.diff(np.append(start, keys.size))))
    tkeys = np.concatenate([keys, np.full(steps, np.iinfo(np.int32).max, np.int32)]).astype(np.int32)
    if steps == 1:
        pairs = (start.astype(np.int64) & 0xFFFFFFFF) | (tkeys[start].astype(np.int64) << 32)
        tkeys = pairs.view(np.int32)
    return start.astype(np.int32), tkeys, steps


def _buckets_for(th2d: np.ndarray):
    """A bucket index for one long table (the kernels search per-dimension tables by bisection)."""
    if th2d.shape[0] == 1 and th2d.shape[1] > cpu.LINEAR_COUNT_MAX:
        return bucket_index(th2d[0])
    return _NO_BUCKETS


def _lloyd_tables(codec):

    def make():
        if codec.params.mode == "gaussian":
            th, lv, _ = gaussian_tables(codec.params.bits)
        else:
            th, lv = codec.state["thresholds"], codec.state["levels"]
        th = np.ascontiguousarray(np.atleast_2d(th), dtype=np.float32)
        return th, np.ascontiguousarray(np.atleast_2d(lv), dtype=np.float32), _buckets_for(th)

    return codec.derived(("numba", "lloyd-tables"), make)


def _lloyd_encode(codec, x):
    n, d = x.shape
    p = codec.params
    th, lv, (bstart, tkeys, bsteps) = _lloyd_tables(codec)
    rot, (signs, perm, _inv, blocks, scales) = _rot(p, d)
    lay = codec.layout
    codes = np.empty((n, lay.words), np.int64)
    unit = p.norm == "unit"
    gain = np.empty((n, 1 if not unit else 0), np.float32)
    gain_arg = gain if not unit else np.empty((1, 1), np.float32)
    status = np.empty(n, np.uint8)
    cpu.lloyd_encode(
        x, x.view(np.int32), rot, signs, perm, blocks, scales, th, lv, bstart, tkeys, bsteps, unit,
        np.float32(math.sqrt(d)), UNIT_TOLERANCE, p.bits, codes, gain_arg, status, cpu.RB,
    )
    raise_encode_status(codec, x, status)
    return codes, (None if unit else gain)


def _lloyd_decode(codec, codes, side):
    n, d, p = codes.shape[0], codec.dim, codec.params
    _th, lv, _buckets = _lloyd_tables(codec)
    rot, (signs, _perm, inv, blocks, scales) = _rot(p, d)
    out = np.empty((n, d), np.float32)
    status = np.empty(n, np.uint8)
    unit = p.norm == "unit"
    side_arg = side if not unit else np.empty((1, 1), np.float32)
    cpu.lloyd_decode(
        codes, side_arg, unit, np.float32(1.0 / math.sqrt(d)), rot, signs, inv, blocks, scales, lv, p.bits, out, status, cpu.RB
    )
    return out, status


def _absmax_encode(codec, x):
    n, d = x.shape
    p = codec.params
    rot, (signs, perm, _inv, blocks, scales) = _rot(p, d)
    codes = np.empty((n, codec.layout.words), np.int64)
    scale = np.empty((n, 1), np.float32)
    status = np.empty(n, np.uint8)
    cpu.absmax_encode(x, x.view(np.int32), rot, signs, perm, blocks, scales, (1 << (p.bits - 1)) - 1, p.bits, codes, scale, status, cpu.RB)
    raise_encode_status(codec, x, status)
    return codes, scale


def _absmax_decode(codec, codes, side):
    """absmax decodes as a table: level s - qmax (exact in float32) times the row's scale,
    which is `cpu.table_decode` with the levels -qmax .. qmax: its vector lookups and
    range checks, the same floats and statuses as the row kernel absmax had before
    (bench/codecs.py: docs/throughput.md)."""
    n, d, p = codes.shape[0], codec.dim, codec.params
    rot, (signs, _perm, inv, blocks, scales) = _rot(p, d)
    qmax = (1 << (p.bits - 1)) - 1
    lv = codec.derived(("numba", "absmax-levels"),
                       lambda: np.arange(-qmax, qmax + 1, dtype=np.float32).reshape(1, -1))
    out = np.empty((n, d), np.float32)
    status = np.empty(n, np.uint8)
    cpu.table_decode(codes, side, cpu.ROW_ABSMAX, np.float32(0.0), np.float32(1.0), d, lv.shape[1], rot, signs, inv,
                     blocks, scales, lv, p.bits, out, status, cpu.RB)
    return out, status


def _search_table(th: np.ndarray) -> np.ndarray:
    """Thresholds as the (1, m) table `cpu._count_le_T` takes."""
    return np.ascontiguousarray(np.asarray(th, dtype=np.float32).reshape(1, -1))


def _table_plan(codec):
    """(mode, loc, scale, block size, thresholds (1, m), levels (1, n), bucket index) of a
    codebook, distributional or blockwise codec (`cpu.table_encode`'s arguments)."""

    def make():
        p = codec.params
        if codec.scheme.name == "distributional":
            st = codec.state
            th = _search_table(st["thresholds"])
            return (cpu.AFFINE, np.float32(st["loc"][0]), np.float32(st["scale"][0]), codec.dim, th,
                    np.ascontiguousarray(st["levels"][None, :], dtype=np.float32), _buckets_for(th))
        if codec.scheme.name == "blockwise":  # an absmax per block of block_size dimensions
            from ..codebook import level_tensors

            lv, th = level_tensors(p, "cpu")
            th = _search_table(th.numpy())
            return (cpu.ROW_ABSMAX, np.float32(0.0), np.float32(1.0), p.block_size, th,
                    np.ascontiguousarray(lv.numpy().reshape(1, -1), dtype=np.float32), _buckets_for(th))
        # a writable copy: numba compiles a kernel once per argument type, and the
        # named tables are read-only arrays while user levels are not
        lv = np.array(p.level_values(), dtype=np.float32)
        if p.scale == "codec":
            mode, scale = cpu.FIXED, np.float32(codec.state["absmax"][0])
        else:
            mode, scale = cpu.ROW_ABSMAX, np.float32(1.0)
        th = _search_table(midpoints(lv))
        return mode, np.float32(0.0), scale, codec.dim, th, np.ascontiguousarray(lv[None, :]), _buckets_for(th)

    return codec.derived(("numba", "table-plan"), make)


def _table_encode(codec, x):
    n, d = x.shape
    mode, loc, scale, bs, th, _lv, (bstart, tkeys, bsteps) = _table_plan(codec)
    rot, (signs, perm, _inv, blocks, scales) = _rot(codec.params, d)
    codes = np.empty((n, codec.layout.words), np.int64)
    side = np.empty((n, codec.layout.side_values) if mode == cpu.ROW_ABSMAX else (1, 1), np.float32)
    status = np.empty(n, np.uint8)
    cpu.table_encode(x, x.view(np.int32), rot, signs, perm, blocks, scales, th, bstart, tkeys, bsteps, mode, loc, scale,
                     bs, codec.layout.bits, codes, side, status, cpu.RB)
    raise_encode_status(codec, x, status)
    return codes, (side if mode == cpu.ROW_ABSMAX else None)


def _table_decode(codec, codes, side):
    n, d = codes.shape[0], codec.dim
    mode, loc, scale, bs, _th, lv, _buckets = _table_plan(codec)
    rot, (signs, _perm, inv, blocks, scales) = _rot(codec.params, d)
    out = np.empty((n, d), np.float32)
    status = np.empty(n, np.uint8)
    side_arg = side if mode == cpu.ROW_ABSMAX else np.empty((1, 1), np.float32)
    cpu.table_decode(codes, side_arg, mode, loc, scale, bs, lv.shape[1], rot, signs, inv, blocks, scales, lv,
                     codec.layout.bits, out, status, cpu.RB)
    return out, status


def _int8_encode(codec, x):
    n, d = x.shape
    st = codec.state
    rot, (signs, perm, _inv, blocks, scales) = _rot(codec.params, d)
    codes = np.empty((n, codec.layout.words), np.int64)
    status = np.empty(n, np.uint8)
    cpu.int8_encode(x, x.view(np.int32), rot, signs, perm, blocks, scales, st["starts"], st["steps"], codes, status,
                    cpu.RB)
    raise_encode_status(codec, x, status)
    return codes, None


def _int8_decode(codec, codes, side):
    n, d, st = codes.shape[0], codec.dim, codec.state
    rot, (signs, _perm, inv, blocks, scales) = _rot(codec.params, d)
    out = np.empty((n, d), np.float32)
    status = np.empty(n, np.uint8)
    cpu.int8_decode(codes, rot, signs, inv, blocks, scales, st["starts"], st["steps"], st["maxes"], out, status, cpu.RB)
    return out, status


_BINARY_MODES = {"row": 0, "global": 1, "none": 2}


def _binary_encode(codec, x):
    n, d = x.shape
    rot, (signs, perm, _inv, blocks, scales) = _rot(codec.params, d)
    row = codec.params.scale == "row"
    codes = np.empty((n, codec.layout.words), np.int64)
    side = np.empty((n, 1) if row else (1, 1), np.float32)
    status = np.empty(n, np.uint8)
    cpu.binary_encode(x, x.view(np.int32), rot, signs, perm, blocks, scales, row, codes, side, status, cpu.RB)
    raise_encode_status(codec, x, status)
    return codes, (side if row else None)


def _binary_decode(codec, codes, side):
    n, d, p = codes.shape[0], codec.dim, codec.params
    rot, (signs, _perm, inv, blocks, scales) = _rot(p, d)
    mode = _BINARY_MODES[p.scale]
    gscale = np.float32(codec.state["scale"][0]) if mode == 1 else np.float32(1.0)
    out = np.empty((n, d), np.float32)
    status = np.empty(n, np.uint8)
    cpu.binary_decode(codes, side if mode == 0 else np.empty((1, 1), np.float32), mode, gscale, rot, signs, inv, blocks,
                      scales, out, status, cpu.RB)
    return out, status


def _transform_plan(codec):
    """Flat tables of a transform codec for `transform_cpu`: the thresholds are the
    reference's (`Transform._make_plan`: float64 midpoints of each component's levels,
    rounded to float32)."""

    def make():
        st = codec.state
        alloc = np.ascontiguousarray(st["alloc"], dtype=np.int64)
        sizes = np.left_shift(1, alloc)
        lv_start = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
        lv = np.ascontiguousarray(st["levels"], dtype=np.float32)
        th_off = np.concatenate(([0], np.cumsum(np.where(alloc > 0, sizes - 1, 0))[:-1])).astype(np.int64)
        th = np.zeros(max(1, int(np.sum(np.where(alloc > 0, sizes - 1, 0)))), np.float32)
        # (trellis=true keeps tcq's tables instead: `_transform_trellis_plan`)
        for j in np.flatnonzero(alloc) if not codec.params.trellis else ():
            seg = lv[lv_start[j] : lv_start[j] + sizes[j]].astype(np.float64)
            th[th_off[j] : th_off[j] + sizes[j] - 1] = ((seg[:-1] + seg[1:]) / 2).astype(np.float32)
        basis = np.ascontiguousarray(st["basis"], dtype=np.float64)
        return {
            "mean": np.ascontiguousarray(st["mean"], dtype=np.float64), "basis": basis,
            "basis_t": np.ascontiguousarray(basis.T), "alloc": alloc, "th": th, "th_off": th_off,
            "lv": lv, "lv_start": lv_start, "used": int(alloc.sum()),
            "coded": np.flatnonzero(alloc).astype(np.int64), "every": np.arange(alloc.size, dtype=np.int64),
        }

    return codec.derived(("numba", "transform-plan"), make)


def _transform_encode(codec, x):
    """One pass per row block: centre, project, then each component's threshold count
    (or, with trellis=true, each width's Viterbi path: `transform_cpu.trellis_encode`),
    packing and the optional gain."""
    from . import transform_cpu

    # (transform takes no `rotate`: its basis is its rotation)
    p = _transform_trellis_plan(codec) if codec.params.trellis else _transform_plan(codec)
    n = x.shape[0]
    gain_on = bool(codec.params.gain)
    codes = np.empty((n, codec.layout.words), np.int64)
    gain = np.empty((n, 1) if gain_on else (1, 1), np.float32)
    status = np.empty(n, np.uint8)
    outs = p["every"] if gain_on else p["coded"]  # z of a 0-bit component only counts in the gain
    if codec.params.trellis:
        transform_cpu.trellis_encode(x, p["mean"], p["basis_t"], outs, p["alloc"], p["gcomp"], p["gstart"], p["glv"],
                                     p["levels"], p["scale"], p["mids16"], p["lv16"], p["midsw"], gain_on, codes,
                                     gain, status)
    else:
        transform_cpu.encode(x, p["mean"], p["basis_t"], outs, p["alloc"], p["th"], p["th_off"], p["lv"],
                             p["lv_start"], gain_on, codes, gain, status)
    raise_encode_status(codec, x, status)
    return codes, (gain if gain_on else None)


def _transform_trellis_plan(codec):
    """`_transform_plan` plus the trellis groups of `transform_cpu.trellis_encode`: one per
    bit width used, in increasing width (the order of the codec's level tables)."""

    def make():
        p = dict(_transform_plan(codec))
        st = codec.state
        alloc = p["alloc"]
        lv_all = np.ascontiguousarray(st["levels"], dtype=np.float32)
        widths = sorted({int(v) for v in alloc if v > 0})
        comps = [np.flatnonzero(alloc == b).astype(np.int64) for b in widths]
        sizes = [2 << b for b in widths]
        g = max(1, len(widths))
        per_max = max([m // 4 for m in sizes] + [16])
        mids16 = np.full((g, 4, 16), np.inf, np.float32)
        lv16 = np.zeros((g, 4, 16), np.float32)
        midsw = np.full((g, 4, per_max), np.inf, np.float32)
        glv = np.zeros(len(widths) + 1, np.int64)
        for q, m in enumerate(sizes):
            glv[q + 1] = glv[q] + m
            lv = lv_all[glv[q]:glv[q + 1]]
            per = m // 4
            for i in range(4):
                sub = lv[i::4]
                midsw[q, i, : per - 1] = midpoints(sub)
                if m <= 32:
                    mids16[q, i, : per - 1] = midsw[q, i, : per - 1]
                    lv16[q, i] = sub[np.minimum(np.arange(16), per - 1)]
        p.update({
            "gcomp": np.concatenate(comps) if comps else np.zeros(0, np.int64),
            "gstart": np.concatenate(([0], np.cumsum([c.size for c in comps]))).astype(np.int64),
            "glv": glv, "levels": lv_all, "scale": np.ascontiguousarray(st["scale"], dtype=np.float32),
            "mids16": mids16, "lv16": lv16, "midsw": midsw,
        })
        return p

    return codec.derived(("numba", "transform-trellis"), make)


def _transform_decode(codec, codes, side):
    from . import transform_cpu

    p = _transform_trellis_plan(codec) if codec.params.trellis else _transform_plan(codec)
    n = codes.shape[0]
    out = np.empty((n, codec.dim), np.float32)
    status = np.empty(n, np.uint8)
    side_on = side is not None and codec.layout.side_values > 0
    side = side if side_on else np.empty((1, 1), np.float32)
    if codec.params.trellis:
        transform_cpu.trellis_decode(codes, side, side_on, codec.layout.symbols, p["used"], p["mean"], p["basis"],
                                     p["every"], p["alloc"], p["gcomp"], p["gstart"], p["glv"],
                                     p["levels"], p["scale"], p["lv16"], out, status)
    else:
        transform_cpu.decode(codes, side, side_on, codec.layout.symbols, p["used"], p["mean"], p["basis"],
                             p["every"], p["alloc"], p["lv"], p["lv_start"], out, status)
    return out, status


def _affine_encode(codec, x):
    from . import affine_cpu
    from ..affine import group_count

    p = codec.params
    n, d = x.shape
    g, ng = group_count(d, p.group_size)
    rot, (signs, perm, _inv, blocks, scales) = _rot(p, d)
    codes = np.empty((n, codec.layout.words), np.int64)
    side = np.empty((n, codec.layout.side_values), np.float32)
    status = np.empty(n, np.uint8)
    affine_cpu.encode(x, x.view(np.int32), rot, signs, perm, blocks, scales, g, p.bits, p.power_of_two, p.symmetric,
                      p.rounding == "stochastic", p.seed, codes, side, status, cpu.RB)
    raise_encode_status(codec, x, status)
    return codes, side


def _affine_decode(codec, codes, side):
    from . import affine_cpu
    from ..affine import _E_MAX, _E_MIN, group_count

    p, d = codec.params, codec.dim
    g, ng = group_count(d, p.group_size)
    # affine_dequantize's checks of the side values, in its order, with its messages
    scale = side[:, :ng].astype(np.float64)
    if p.power_of_two:
        if not np.all(scale == np.round(scale)) or np.any((scale < _E_MIN) | (scale > _E_MAX)):
            raise CodecMismatch(f"power-of-two side values must be integer exponents in [{_E_MIN}, {_E_MAX}]")
    elif np.any(scale <= 0):
        raise CodecMismatch("affine side values: every step (1/a) must be positive")
    if not p.symmetric:
        b = side[:, ng : 2 * ng].astype(np.float64)
        if not np.all(b == np.round(b)):
            raise CodecMismatch("affine side values: every zero point b must be an integer")
    n = codes.shape[0]
    out = np.empty((n, d), np.float32)
    status = np.empty(n, np.uint8)
    rot, (signs, _perm, inv, blocks, scales) = _rot(p, d)
    affine_cpu.decode(codes, side, g, p.bits, p.power_of_two, p.symmetric, rot, signs, inv, blocks, scales, out, status,
                      cpu.RB)
    return out, status


def _tcq_tables(codec):
    """(levels, mids16, lv16): the codec's levels and `tcq_cpu`'s permute tables."""
    def make():
        lv = np.ascontiguousarray(codec.state["levels"], dtype=np.float32)
        per = lv.size // 4
        mids16 = np.full((4, 16), np.inf, np.float32)
        for i in range(4):  # each subset's midpoints (tcq.midpoints)
            mids16[i, : per - 1] = midpoints(lv[i::4])
        lv16 = np.empty((4, 16), np.float32)
        for i in range(4):
            lv16[i] = lv[i::4][np.minimum(np.arange(16), per - 1)]
        return lv, mids16, lv16

    return codec.derived("tcq_cpu", make)


def _tcq_encode(codec, x):
    from . import tcq_cpu

    n, d = x.shape
    p = codec.params
    lv, mids16, lv16 = _tcq_tables(codec)
    rot, (signs, perm, _inv, blocks, scales) = _rot(p, d)
    codes = np.empty((n, codec.layout.words), np.int64)
    unit = p.norm == "unit"
    gain = np.empty((n, 1 if not unit else 0), np.float32)
    status = np.empty(n, np.uint8)
    tcq_cpu.encode(x, x.view(np.int32), rot, signs, perm, blocks, scales, lv, mids16, lv16, unit,
                   np.float32(math.sqrt(d)), UNIT_TOLERANCE, p.bits, codes,
                   gain if not unit else np.empty((1, 1), np.float32), status, cpu.RB)
    raise_encode_status(codec, x, status)
    return codes, (None if unit else gain)


def _tcq_decode(codec, codes, side):
    from . import tcq_cpu

    n, d, p = codes.shape[0], codec.dim, codec.params
    _lv, _m, lv16 = _tcq_tables(codec)
    rot, (signs, _perm, inv, blocks, scales) = _rot(p, d)
    out = np.empty((n, d), np.float32)
    status = np.empty(n, np.uint8)
    unit = p.norm == "unit"
    tcq_cpu.decode(codes, side if not unit else np.empty((1, 1), np.float32), unit, np.float32(1.0 / math.sqrt(d)),
                   rot, signs, inv, blocks, scales, lv16, p.bits, out, status, cpu.RB)
    return out, status


_FUSED = {
    "lloyd": (_lloyd_encode, _lloyd_decode),
    "absmax": (_absmax_encode, _absmax_decode),
    "codebook": (_table_encode, _table_decode),
    "distributional": (_table_encode, _table_decode),
    "int8": (_int8_encode, _int8_decode),
    "binary": (_binary_encode, _binary_decode),
    "transform": (_transform_encode, _transform_decode),
    "affine": (_affine_encode, _affine_decode),
    "blockwise": (_table_encode, _table_decode),
    "tcq": (_tcq_encode, _tcq_decode),
}


def has_fused(codec) -> bool:
    """Whether this codec's encode and decode have compiled kernels."""
    if codec.scheme.name == "tcq":  # 16 rows at a time up to 4 bits; wider: the reference (with tcq_cpu.viterbi)
        return codec.params.bits <= 4
    return codec.scheme.name in _FUSED


def encode(codec, x: np.ndarray):
    """(codes, side) from the fused kernel, or None when the scheme has none.
    x: float32 (N, D) C-contiguous, shape already checked; finiteness is checked here."""
    f = _FUSED.get(codec.scheme.name) if has_fused(codec) else None
    if f is None:
        return None
    return f[0](codec, x)


def decode(codec, codes: np.ndarray, side: np.ndarray | None):
    """(out float32 (N, D), status per row) from the fused kernel, or None."""
    f = _FUSED.get(codec.scheme.name) if has_fused(codec) else None
    if f is None:
        return None
    return f[1](codec, np.ascontiguousarray(codes, dtype=np.int64),
                None if side is None else np.ascontiguousarray(side, dtype=np.float32))


def raise_decode_status(codec, codes: np.ndarray, status: np.ndarray, row0: int = 0) -> None:
    """The reference's error for the first bad row (padding before symbols before range);
    ``row0``: the index of ``codes``' first row in the caller's array."""
    for code in (cpu.BAD_PADDING, cpu.BAD_SYMBOL, cpu.EXTRA_BITS, cpu.NOT_FINITE):
        rows = np.flatnonzero(status == code)
        if not rows.size:
            continue
        r = int(rows[0])
        if code == cpu.BAD_PADDING:
            raise checks.padding_error(row0 + r)
        if code == cpu.EXTRA_BITS:  # transform: bits past its allocation
            raise CodecMismatch(f"codes carry bits past the {_transform_plan(codec)['used']} this codec uses "
                                "(corrupted codes?)")
        if code == cpu.BAD_SYMBOL:
            lay = codec.layout
            sym, _ = unpack(codes[r : r + 1], lay.bits, lay.symbols)
            c = int(np.flatnonzero(sym[0] >= lay.levels)[0])
            raise checks.symbol_error(row0 + r, c, int(sym[0, c]), lay.levels)
        raise CodecMismatch(checks.RANGE_ERROR)
