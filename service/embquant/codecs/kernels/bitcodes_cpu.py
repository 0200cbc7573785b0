"""Compiled CPU kernel of `bitcodes`' encoder (numba): `bitcodes.encode_bits`, 16 rows
at a time.

The reference sweeps the bits block by block over the whole batch: the block's
correlations (D tensor operations), then a Python loop over the block's bits, each
step a few tensor operations on a column. Here a block of 16 rows is held transposed (the
residual as (D, 16) float64, `cpu`'s layout) and goes through all its sweeps at once;
it leaves when a sweep changed none of its rows (the reference stops when a sweep
changed no row of the batch: a row whose sweep changed nothing is at a fixed point,
so the bits are the same).

Every step repeats the reference's float64 operations in its order, each lane its
row's: the start at 1/2 less half the codebook's column sums and the blocks' Gram
matrices (given, from the reference's own `bitcodes._plan`), the correlations
``err @ C_blk^T`` as `bitcodes._dots` sums them (over D in ascending order, a multiply
then an add per step, no fused multiply-add), a bit's value ``corr + cur * g_tt``
against ``0.5 * g_tt``, the correlations' update ``corr - d * g_t``, and the residual's
``err - delta @ C_blk`` as `bitcodes._combine` sums it (over the block's bits in
ascending order; the terms of bits that moved in no lane are left out: a sum that
starts at +0.0 is the same with or without added zeros). So the bits are the
reference's, bit for bit, in any batch.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .cpu import RB, dsplat, has_avx512, vadd, vany, vgt, vload, vmul, vne, vsel, vstore, vsub

_opts = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)

TASK_ROWS = 256  # rows per parallel task (scratch allocated once per task)


@njit(**_opts)
def _correlations4(E, CB, k0, t, d, CORR):
    """`_correlations`' step for outputs t..t + 3 (its AVX-512 grouping;
    bench/kernel_variants.py times it on AVX2 too)."""
    a0 = dsplat(0.0)
    a1 = dsplat(0.0)
    a2 = dsplat(0.0)
    a3 = dsplat(0.0)
    for j in range(d):
        e = vload(E, j)
        a0 = vadd(a0, vmul(e, dsplat(CB[k0 + t, j])))
        a1 = vadd(a1, vmul(e, dsplat(CB[k0 + t + 1, j])))
        a2 = vadd(a2, vmul(e, dsplat(CB[k0 + t + 2, j])))
        a3 = vadd(a3, vmul(e, dsplat(CB[k0 + t + 3, j])))
    vstore(CORR, t, a0)
    vstore(CORR, t + 1, a1)
    vstore(CORR, t + 2, a2)
    vstore(CORR, t + 3, a3)


@njit(**_opts)
def _correlations(E, CB, k0, m, d, CORR):
    """CORR[t] = sum over j ascending of E[j] * CB[k0 + t, j] (`bitcodes._dots`), four
    outputs at a time with AVX-512, two with AVX2 (four outputs' float64 accumulators
    would fill its 16 registers: `transform_cpu._project_T`)."""
    t = 0
    if has_avx512():
        while t + 4 <= m:
            _correlations4(E, CB, k0, t, d, CORR)
            t += 4
    while t + 2 <= m:
        a0 = dsplat(0.0)
        a1 = dsplat(0.0)
        for j in range(d):
            e = vload(E, j)
            a0 = vadd(a0, vmul(e, dsplat(CB[k0 + t, j])))
            a1 = vadd(a1, vmul(e, dsplat(CB[k0 + t + 1, j])))
        vstore(CORR, t, a0)
        vstore(CORR, t + 1, a1)
        t += 2
    while t < m:
        a0 = dsplat(0.0)
        for j in range(d):
            a0 = vadd(a0, vmul(vload(E, j), dsplat(CB[k0 + t, j])))
        vstore(CORR, t, a0)
        t += 1


@njit(**_opts)
def _update_residual(E, CB, k0, d, DELTA, moved, nmoved):
    """E[j] = E[j] - sum over t ascending of DELTA[t] * CB[k0 + t, j] (`bitcodes._combine`),
    the terms of the nmoved bits in moved[:nmoved] (every other DELTA[t] is 0 in all lanes,
    and its terms would add zeros). Several outputs at a time, each DELTA[t] loaded once
    for them: four with AVX-512, two with AVX2 (as `_correlations`)."""
    j = 0
    if has_avx512():
        while j + 4 <= d:
            a0 = dsplat(0.0)
            a1 = dsplat(0.0)
            a2 = dsplat(0.0)
            a3 = dsplat(0.0)
            for i in range(nmoved):
                t = moved[i]
                dt = vload(DELTA, t)
                a0 = vadd(a0, vmul(dt, dsplat(CB[k0 + t, j])))
                a1 = vadd(a1, vmul(dt, dsplat(CB[k0 + t, j + 1])))
                a2 = vadd(a2, vmul(dt, dsplat(CB[k0 + t, j + 2])))
                a3 = vadd(a3, vmul(dt, dsplat(CB[k0 + t, j + 3])))
            vstore(E, j, vsub(vload(E, j), a0))
            vstore(E, j + 1, vsub(vload(E, j + 1), a1))
            vstore(E, j + 2, vsub(vload(E, j + 2), a2))
            vstore(E, j + 3, vsub(vload(E, j + 3), a3))
            j += 4
    while j + 2 <= d:
        a0 = dsplat(0.0)
        a1 = dsplat(0.0)
        for i in range(nmoved):
            t = moved[i]
            dt = vload(DELTA, t)
            a0 = vadd(a0, vmul(dt, dsplat(CB[k0 + t, j])))
            a1 = vadd(a1, vmul(dt, dsplat(CB[k0 + t, j + 1])))
        vstore(E, j, vsub(vload(E, j), a0))
        vstore(E, j + 1, vsub(vload(E, j + 1), a1))
        j += 2
    while j < d:
        acc = dsplat(0.0)
        for i in range(nmoved):
            t = moved[i]
            acc = vadd(acc, vmul(vload(DELTA, t), dsplat(CB[k0 + t, j])))
        vstore(E, j, vsub(vload(E, j), acc))
        j += 1


@njit(parallel=True, **_opts)
def encode(r, half, CB, starts, grams, sweeps, out):
    """out (N, K) float64 0/1 <- `bitcodes.encode_bits` of the residuals r (N, D) float64.
    CB (K, D): the codebook's rows in the reference's bit order (coarse to fine);
    half (D,): 0.5 * the codebook's column sums; block b is rows starts[b]..starts[b+1]
    of CB, grams[b, :m, :m] its Gram matrix. out's columns are in CB's order."""
    n, d = r.shape
    k = CB.shape[0]
    nblocks = starts.shape[0] - 1
    mmax = grams.shape[1]
    tasks = (n + TASK_ROWS - 1) // TASK_ROWS
    for task in prange(tasks):
        E = np.empty(d * RB, np.float64)
        BITS = np.empty(k * RB, np.float64)
        CORR = np.empty(mmax * RB, np.float64)
        DELTA = np.empty(mmax * RB, np.float64)
        moved = np.empty(mmax, np.int64)
        lo_task = task * TASK_ROWS
        hi_task = min(n, lo_task + TASK_ROWS)
        for i0 in range(lo_task, hi_task, RB):
            nr = min(RB, hi_task - i0)
            for j in range(d):
                for q in range(RB):
                    # a lane past the last row repeats it (its results are not kept)
                    E[j * RB + q] = r[i0 + min(q, nr - 1), j] - half[j]
            for i in range(k * RB):
                BITS[i] = 0.5
            zero = dsplat(0.0)
            one = dsplat(1.0)
            for _ in range(max(1, sweeps)):
                changed = False
                for b in range(nblocks):
                    k0 = starts[b]
                    m = starts[b + 1] - k0
                    _correlations(E, CB, k0, m, d, CORR)
                    nmoved = 0
                    for t in range(m):
                        gtt = grams[b, t, t]
                        cur = vload(BITS, k0 + t)
                        val = vadd(vload(CORR, t), vmul(cur, dsplat(gtt)))
                        new = vsel(vgt(val, dsplat(0.5 * gtt)), one, zero)
                        dv = vsub(new, cur)
                        vstore(DELTA, t, zero)
                        if vany(vne(dv, zero)):
                            for u in range(m):
                                vstore(CORR, u, vsub(vload(CORR, u), vmul(dv, dsplat(grams[b, t, u]))))
                            vstore(DELTA, t, dv)
                            vstore(BITS, k0 + t, new)
                            moved[nmoved] = t
                            nmoved += 1
                    if nmoved:
                        changed = True
                        _update_residual(E, CB, k0, d, DELTA, moved, nmoved)
                if not changed:
                    break
            for q in range(nr):
                for i in range(k):
                    out[i0 + q, i] = BITS[i * RB + q]


@njit(parallel=True, **_opts)
def decode(sym, C, offset, out):
    """out (N, D) float32 <- `bitcodes.Bitcodes.decode`: float32 of (the sum over k
    ascending of bit_k * C[k], in float64) + offset, for bits sym (N, K) in {0, 1}. A
    zero bit's term is left out: the sum starts at +0.0 and adding a zero leaves it."""
    n, d = out.shape
    k = C.shape[0]
    for i in prange(n):
        acc = np.zeros(d, np.float64)
        on = np.empty(k, np.int64)
        m = 0
        for t in range(k):
            if sym[i, t] != 0:
                on[m] = t
                m += 1
        q = 0
        while q + 4 <= m:  # four rows of C per pass over acc, each element's adds in the same order
            c0 = C[on[q]]
            c1 = C[on[q + 1]]
            c2 = C[on[q + 2]]
            c3 = C[on[q + 3]]
            for j in range(d):
                acc[j] = (((acc[j] + c0[j]) + c1[j]) + c2[j]) + c3[j]
            q += 4
        while q < m:
            c0 = C[on[q]]
            for j in range(d):
                acc[j] = acc[j] + c0[j]
            q += 1
        for j in range(d):
            out[i, j] = np.float32(acc[j] + offset[j])
