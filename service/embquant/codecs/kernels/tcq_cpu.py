"""Compiled CPU kernels (numba) of `codecs.tcq`: the Viterbi encoder and the trellis
walk, one row per step of a parallel loop.

The same arithmetic as the torch reference (`tcq._viterbi_torch`, `tcq.walk`), so
the same symbols: a value's nearest level in each subset is the count of that
subset's float32 midpoints <= the value; a branch costs ``(float64(z) -
float64(level))**2``; a state's cost is the lower of its two incoming sums, the
predecessor ``t >> 1`` on ties; the path ends in the first state of least cost.

Up to 4 bits (at most 32 levels, 8 per subset) `viterbi16` runs 16 rows at once, one
row per lane of the `cpu` vectors (the block transposed, (D, 16)): each subset's
nearest level by a binary search over its midpoints (16-entry permutes), the costs
in float64 lanes, each state's choice a lane mask packed into one int32 per row and
coordinate, and the traceback 16 rows at once as well (per-lane shifts and permutes).
The same comparisons and sums, lane by lane, as `viterbi` (which serves 5 to 8 bits):
the same symbols.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .cpu import (
    TASK_ROWS, _finite_rows, _gain_T, _load_T, _pack_T, _pow2_at_least, _rms_T, _store_T, _transpose_rows,
    _unit_rows_T, _unpack_T, _unrotate_T, dsplat, isplat, vadd, vand, vdiv, vfext, vge, vgt, vload, vlookup,
    vmul, vor, vsel, vshl, vshr, vshrv, vstore, vsub,
)

_opts = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)

S = 8
S_STATES = S
# SUB[s][b] (tcq.SUB), flattened: SUB_F[2 s + b]
SUB_F = np.array([0, 2, 1, 3, 2, 0, 3, 1, 2, 0, 3, 1, 0, 2, 1, 3], np.int64)
SUB_F.setflags(write=False)
SUB16 = SUB_F.astype(np.int32)  # the same, as a 16-lane permute table (`_viterbi_T`'s traceback)
SUB16.setflags(write=False)


@njit(**_opts)
def _count(mids, i, per, v):
    """Midpoints of subset i that are <= v (a binary search; per - 1 sorted values)."""
    lo = 0
    hi = per - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if mids[i, mid] <= v:
            lo = mid + 1
        else:
            hi = mid
    return lo


ROWS = 64  # rows per parallel task (scratch allocated once per task)


@njit(**_opts)
def _pick(c0, c1):
    """(the lower cost, 1 if it is the second): the predecessor t >> 1 on ties."""
    b = c1 < c0
    return (c1 if b else c0), np.int64(b)  # a select, not a branch: the choice is data


@njit(**_opts)
def _row(z, r, levels, mids, per, m, idx, back, sym, chosen):
    d = z.shape[1]
    inf = np.inf
    k0 = 0.0
    k1 = inf
    k2 = inf
    k3 = inf
    k4 = inf
    k5 = inf
    k6 = inf
    k7 = inf
    for t in range(d):
        v = z[r, t]
        vd = np.float64(v)
        # q: the levels <= v (a branch-free binary search); subset i then has
        # a = (q + 3 - i) >> 2 of them, and its nearest level is the count of its
        # midpoints <= v (`tcq._viterbi_torch`'s bucketize): a - 1, or a where midpoint
        # a - 1 is <= v too (mids padded with +inf: never past the last level)
        q = 0
        for h in (256, 128, 64, 32, 16, 8, 4, 2, 1):
            if h < m:
                q += h if levels[q + h - 1] <= v else 0
        q += 1 if (q < m and levels[q] <= v) else 0
        a = (q + 3) >> 2
        k = max(a - 1, 0)
        k += np.int64(a > 0) & np.int64(mids[0, k] <= v)
        idx[t, 0] = k
        e0 = vd - np.float64(levels[4 * k])
        e0 = e0 * e0
        a = (q + 2) >> 2
        k = max(a - 1, 0)
        k += np.int64(a > 0) & np.int64(mids[1, k] <= v)
        idx[t, 1] = k
        e1 = vd - np.float64(levels[1 + 4 * k])
        e1 = e1 * e1
        a = (q + 1) >> 2
        k = max(a - 1, 0)
        k += np.int64(a > 0) & np.int64(mids[2, k] <= v)
        idx[t, 2] = k
        e2 = vd - np.float64(levels[2 + 4 * k])
        e2 = e2 * e2
        a = q >> 2
        k = max(a - 1, 0)
        k += np.int64(a > 0) & np.int64(mids[3, k] <= v)
        idx[t, 3] = k
        e3 = vd - np.float64(levels[3 + 4 * k])
        e3 = e3 * e3
        # into state ns = 2 a + b from a (first) and a + 4, branch b: SUB as in `tcq`
        n0, b0 = _pick(k0 + e0, k4 + e2)
        n1, b1 = _pick(k0 + e2, k4 + e0)
        n2, b2 = _pick(k1 + e1, k5 + e3)
        n3, b3 = _pick(k1 + e3, k5 + e1)
        n4, b4 = _pick(k2 + e2, k6 + e0)
        n5, b5 = _pick(k2 + e0, k6 + e2)
        n6, b6 = _pick(k3 + e3, k7 + e1)
        n7, b7 = _pick(k3 + e1, k7 + e3)
        back[t] = b0 | (b1 << 1) | (b2 << 2) | (b3 << 3) | (b4 << 4) | (b5 << 5) | (b6 << 6) | (b7 << 7)
        k0 = n0
        k1 = n1
        k2 = n2
        k3 = n3
        k4 = n4
        k5 = n5
        k6 = n6
        k7 = n7
    # the first state of least cost
    s = 0
    best = k0
    if k1 < best:
        s, best = 1, k1
    if k2 < best:
        s, best = 2, k2
    if k3 < best:
        s, best = 3, k3
    if k4 < best:
        s, best = 4, k4
    if k5 < best:
        s, best = 5, k5
    if k6 < best:
        s, best = 6, k6
    if k7 < best:
        s, best = 7, k7
    sub = SUB_F
    for t in range(d - 1, -1, -1):
        b = s & 1
        prev = (s >> 1) + 4 * ((np.int64(back[t]) >> s) & 1)
        i = sub[2 * prev + b]
        k = idx[t, i]
        sym[r, t] = (k << 1) | b
        chosen[r, t] = levels[i + 4 * k]
        s = prev


@njit(parallel=True, **_opts)
def viterbi(z, levels, mids, sym, chosen):
    """z (N, D) float32; levels (M,) float32 sorted, M = 4 per <= 512; mids (4, per)
    float32: each subset's midpoints, then +inf. Writes sym (N, D) int64 and chosen
    (N, D) float32 (the levels of the path)."""
    n, d = z.shape
    m = levels.shape[0]
    per = m // 4
    for task in prange((n + ROWS - 1) // ROWS):
        idx = np.empty((d, 4), np.int64)
        back = np.empty(d, np.int64)
        for r in range(task * ROWS, min(n, (task + 1) * ROWS)):
            _row(z, r, levels, mids, per, m, idx, back, sym, chosen)


@njit(**_opts)
def walk_row(sym, levels, out):
    """One row's levels along its symbols (any 1-D int arrays in, float out): state 0,
    then branch b = symbol & 1 picks the subset, symbol >> 1 the level in it."""
    sub = SUB_F
    s = 0
    for t in range(sym.shape[0]):
        x = np.int64(sym[t])
        b = x & 1
        out[t] = levels[sub[2 * s + b] + 4 * (x >> 1)]
        s = (2 * s) % S + b


@njit(parallel=True, **_opts)
def walk(sym, levels, out):
    """out (N, D) float32: the levels along each row's symbols (the decode)."""
    for r in prange(sym.shape[0]):
        walk_row(sym[r], levels, out[r])


@njit(parallel=True, **_opts)
def walk_index(sym, out):
    """out (N, D) int64: the level index along each row's symbols."""
    n, d = sym.shape
    sub = SUB_F
    for r in prange(n):
        s = 0
        for t in range(d):
            x = sym[r, t]
            b = x & 1
            out[r, t] = sub[2 * s + b] + 4 * (x >> 1)
            s = (2 * s) % S + b


@njit(**_opts)
def _best16(ca, cb, e0, e1):
    """A state's cost from predecessors a (cost ca, its branch error e0) and a + 4 (cb,
    e1): (the lower sum, the mask of lanes that took a + 4; ties keep a)."""
    c0 = vadd(ca, e0)
    c1 = vadd(cb, e1)
    m = vgt(c0, c1)
    return vsel(m, c1, c0), m


@njit(**_opts)
def _nearest(v, vd, mid, lev, per):
    """A subset's nearest level, lane by lane: its index k, the count of the subset's
    per - 1 sorted midpoints <= v (a binary search: log2(per) permutes of ``mid``,
    never past its last midpoint), and that level's squared error (float64)."""
    k = isplat(0)
    step = per >> 1
    while step > 0:
        k = vadd(k, vand(vge(v, vlookup(mid, vadd(k, isplat(step - 1)))), isplat(step)))
        step >>= 1
    e = vsub(vd, vfext(vlookup(lev, k)))
    return k, vmul(e, e)


@njit(**_opts)
def _first_least(best, s, c, state):
    """The running argmin over states: c replaces best only where strictly lower
    (the first state of equal costs stays)."""
    m = vgt(best, c)
    return vsel(m, c, best), vsel(m, isplat(state), s)


@njit(**_opts)
def _of_subset(i, a, b, c, d):
    """a, b, c or d lane by lane, as i is 0, 1, 2 or 3."""
    lo = vsel(vgt(i, isplat(0)), b, a)
    hi = vsel(vgt(i, isplat(2)), d, c)
    return vsel(vgt(i, isplat(1)), hi, lo)


@njit(**_opts)
def _viterbi_T(zt, d, nr, levels, mids, lvs, sub16, idx, back, S, C):
    """The Viterbi path of a transposed block zt (D, 16) float32 (nr rows; the other
    lanes are computed and ignored): S (int32) and C (float32), transposed like zt,
    get each coordinate's symbol and level. mids / lvs: the (4, 16) permute tables,
    flat; sub16: `SUB16`; idx, back: scratch. The traceback runs 16 rows at once too."""
    per = levels.shape[0] // 4
    k0 = dsplat(0.0)
    k1 = dsplat(np.inf)
    k2 = k1
    k3 = k1
    k4 = k1
    k5 = k1
    k6 = k1
    k7 = k1
    mid0 = vload(mids, 0)
    mid1 = vload(mids, 1)
    mid2 = vload(mids, 2)
    mid3 = vload(mids, 3)
    lev0 = vload(lvs, 0)
    lev1 = vload(lvs, 1)
    lev2 = vload(lvs, 2)
    lev3 = vload(lvs, 3)
    for t in range(d):
        v = vload(zt, t)
        vd = vfext(v)
        ka, e0 = _nearest(v, vd, mid0, lev0, per)
        kb, e1 = _nearest(v, vd, mid1, lev1, per)
        kc, e2 = _nearest(v, vd, mid2, lev2, per)
        kd, e3 = _nearest(v, vd, mid3, lev3, per)
        vstore(idx, t * 4, ka)
        vstore(idx, t * 4 + 1, kb)
        vstore(idx, t * 4 + 2, kc)
        vstore(idx, t * 4 + 3, kd)
        # into state 2 a + b from a and a + 4, branch b: tcq.SUB's subsets
        n0, m0 = _best16(k0, k4, e0, e2)
        n1, m1 = _best16(k0, k4, e2, e0)
        n2, m2 = _best16(k1, k5, e1, e3)
        n3, m3 = _best16(k1, k5, e3, e1)
        n4, m4 = _best16(k2, k6, e2, e0)
        n5, m5 = _best16(k2, k6, e0, e2)
        n6, m6 = _best16(k3, k7, e3, e1)
        n7, m7 = _best16(k3, k7, e1, e3)
        bits = vand(m0, isplat(1))
        bits = vor(bits, vand(m1, isplat(2)))
        bits = vor(bits, vand(m2, isplat(4)))
        bits = vor(bits, vand(m3, isplat(8)))
        bits = vor(bits, vand(m4, isplat(16)))
        bits = vor(bits, vand(m5, isplat(32)))
        bits = vor(bits, vand(m6, isplat(64)))
        bits = vor(bits, vand(m7, isplat(128)))
        vstore(back, t, bits)
        k0 = n0
        k1 = n1
        k2 = n2
        k3 = n3
        k4 = n4
        k5 = n5
        k6 = n6
        k7 = n7
    # the path ends in the first state of least cost
    s = isplat(0)
    best, s = _first_least(k0, s, k1, 1)
    best, s = _first_least(best, s, k2, 2)
    best, s = _first_least(best, s, k3, 3)
    best, s = _first_least(best, s, k4, 4)
    best, s = _first_least(best, s, k5, 5)
    best, s = _first_least(best, s, k6, 6)
    best, s = _first_least(best, s, k7, 7)
    one = isplat(1)
    subt = vload(sub16, 0)
    for t in range(d - 1, -1, -1):
        b = vand(s, one)
        prev = vadd(vshr(s, 1), vshl(vand(vshrv(vload(back, t), s), one), 2))
        i = vlookup(subt, vadd(vshl(prev, 1), b))
        k = _of_subset(i, vload(idx, t * 4), vload(idx, t * 4 + 1), vload(idx, t * 4 + 2), vload(idx, t * 4 + 3))
        vstore(S, t, vor(vshl(k, 1), b))
        vstore(C, t, _of_subset(i, vlookup(lev0, k), vlookup(lev1, k), vlookup(lev2, k), vlookup(lev3, k)))
        s = prev


@njit(parallel=True, **_opts)
def viterbi16(z, levels, mids16, lv16, sym, chosen):
    """`viterbi` for M = len(levels) <= 32: mids16 / lv16 (4, 16) float32, each subset's
    midpoints (then +inf) and levels (then its last), as permute tables."""
    n, d = z.shape
    mids = mids16.reshape(-1)
    lvs = lv16.reshape(-1)
    for task in prange((n + 15) // 16):
        i0 = task * 16
        nr = min(16, n - i0)
        zt = np.zeros(d * 16, np.float32)
        idx = np.empty(d * 4 * 16, np.int32)
        back = np.empty(d * 16, np.int32)
        S = np.empty(d * 16, np.int32)
        C = np.empty(d * 16, np.float32)
        _transpose_rows(z, i0, nr, zt, 16)
        _viterbi_T(zt, d, nr, levels, mids, lvs, SUB16, idx, back, S, C)
        for r in range(nr):
            for t in range(d):
                sym[i0 + r, t] = S[t * 16 + r]
                chosen[i0 + r, t] = C[t * 16 + r]


@njit(parallel=True, **_opts)
def encode(x, xbits, rotate, signs, perm, blocks, scales, levels, mids16, lv16, unit, unit_scale, unit_tol, bits,
           codes, gain, status, rb):
    """The fused encode (bits <= 4): rotate, normalise (lloyd's RMS, or the unit scale),
    the Viterbi path, lloyd's least-squares gain, pack; `cpu.lloyd_encode`'s steps
    around `_viterbi_T` in place of its threshold count."""
    n, d = x.shape
    w2 = _pow2_at_least(d)
    mids = mids16.reshape(-1)
    lvs = lv16.reshape(-1)
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(w2 * rb, np.float32)  # rows d.. stay +0.0: the padding of the sums
        Q = np.zeros(w2 * rb, np.float32)
        Z = np.zeros(d * rb, np.float32)
        S = np.zeros(d * rb, np.int32)
        C = np.zeros(d * rb, np.float32)
        W = np.zeros(codes.shape[1] * rb, np.int64)
        idx = np.empty(d * 4 * rb, np.int32)
        back = np.empty(d * rb, np.int32)
        buf64 = np.zeros(w2 * rb, np.float64)
        sq64 = np.zeros(d * rb, np.float64)
        nrm = np.ones(rb, np.float64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _finite_rows(xbits, i0, nr, status)
            _load_T(x, i0, nr, A, rotate, signs, perm, blocks, scales, B, rb)
            if unit:
                _unit_rows_T(A, d, i0, nr, status, unit_scale, unit_tol, sq64, buf64, nrm, Z, rb)
                _viterbi_T(Z, d, nr, levels, mids, lvs, SUB16, idx, back, S, C)
                _pack_T(S, d, i0, nr, bits, codes, W, rb)
                continue
            m, s = _rms_T(A, d, Q, B)
            for j in range(d):
                vstore(Z, j, vdiv(vload(A, j), s))
            _viterbi_T(Z, d, nr, levels, mids, lvs, SUB16, idx, back, S, C)
            # the terms of the least-squares gain <x/m, c> / <c, c> * m
            for j in range(d):
                c = vload(C, j)
                vstore(B, j, vmul(c, c))
                vstore(Q, j, vmul(vload(Q, j), c))
            _gain_T(B, Q, d, m, i0, nr, gain)
            _pack_T(S, d, i0, nr, bits, codes, W, rb)


@njit(parallel=True, **_opts)
def decode(codes, side, unit, unit_scale, rotate, signs, inv, blocks, scales, lv16, bits, out, status, rb):
    """The fused decode: unpack, walk the trellis (16 rows at once: lv16 (4, 16) float32,
    each subset's levels as a permute table), times the gain (or the unit scale), rotate
    back, store; `cpu.lloyd_decode`'s steps."""
    n = codes.shape[0]
    d = out.shape[1]
    lvs = lv16.reshape(-1)
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        O = np.zeros((rb, d), np.float32)
        S = np.zeros(d * rb, np.int32)
        W = np.zeros(codes.shape[1] * rb, np.int64)
        G = np.zeros(rb, np.float32)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _unpack_T(codes, i0, nr, bits, d, S, status, W, rb)
            for r in range(nr):
                G[r] = np.float32(unit_scale) if unit else side[i0 + r, 0]
            _walk_T(S, d, lvs, SUB16, vload(G, 0), A)
            R = A
            if rotate:
                R = _unrotate_T(A, B, signs, inv, blocks, scales, rb)
            _store_T(R, d, i0, nr, out, status, O, rb)


@njit(**_opts)
def _walk_step(x, s, subt, lev0, lev1, lev2, lev3):
    """One step of the trellis walk, 16 lanes at once: the levels of symbols x from
    states s (`walk_row`'s step lane by lane; subt: `SUB16` loaded, lev0..3: the subsets'
    level tables loaded, by the caller, once per walk), and the next states."""
    b = vand(x, isplat(1))
    i = vlookup(subt, vadd(vshl(s, 1), b))
    k = vshr(x, 1)
    lev = _of_subset(i, vlookup(lev0, k), vlookup(lev1, k), vlookup(lev2, k), vlookup(lev3, k))
    return lev, vadd(vand(vshl(s, 1), isplat(S_STATES - 1)), b)


@njit(**_opts)
def _walk_T(S, d, lvs, sub16, g, A):
    """A (D, 16) float32 gets the levels along the symbols S (D, 16) int32, 16 rows at
    once, times the lanes' gains g."""
    subt, lev0, lev1, lev2, lev3 = vload(sub16, 0), vload(lvs, 0), vload(lvs, 1), vload(lvs, 2), vload(lvs, 3)
    s = isplat(0)
    for t in range(d):
        lev, s = _walk_step(vload(S, t), s, subt, lev0, lev1, lev2, lev3)
        vstore(A, t, vmul(lev, g))
