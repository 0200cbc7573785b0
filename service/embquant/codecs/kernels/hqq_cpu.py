"""Compiled CPU kernels of `hqq` (numba): the encode (`hqq.hqq_quantize`, its optimiser
`hqq.optimize_groups` inside), 16 groups at a time, and the decode.

The reference runs every iteration on all groups of a batch as tensor operations
(about 25 passes over the whole batch per iteration, 20 iterations by default). Here a
block of 16 groups is held transposed, element j of the 16 groups in one 16-lane vector
(`cpu`'s layout, with groups for rows), and the block goes through all its iterations
while it is in cache; it leaves the loop as soon as none of its groups is still
improving (the reference's own exit, per block instead of per batch: a stopped group
keeps its parameters either way, so the results are the same).

Every lane repeats the reference's operations in its order and precision: float32
where it is float32 (a Python float it multiplies by rounded to float32 first), the
per-group sums in `_scalar.fixed_sum`'s pairwise order (`cpu._halve_sum_v`), and the
shrinkage threshold |r|**(p-1) / beta through `_scalar.pow_pos`'s float32 steps, one
IEEE operation each, so the scales and zeros are the reference's bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .._scalar import (
    POW_EXP_C, POW_FLT_MIN, POW_HALF, POW_INV_LN2, POW_LN2_HI, POW_LN2_LO, POW_LOG_C, POW_MANT, POW_SQRT_HALF,
)
from .cpu import (
    RB, _halve_sum_v, _pow2_at_least, dsplat, fsplat, isplat, vabs, vadd, vand, vany, vbits, vdiv, vfext, vfloor,
    vfrombits, vfround, vftoi, vgt, vitof, vload, vmul, vor, vrint, vsel, vshl, vsra, vstore, vsub,
)

_opts = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)

BLOCKS_PER_TASK = 8  # blocks of 16 groups per parallel task (scratch allocated once per task)


@njit(**_opts)
def _pow_v(a, e):
    """`_scalar.pow_pos` on 16 float32 lanes (a > 0), step for step."""
    sub = vgt(fsplat(POW_FLT_MIN), a)
    a = vsel(sub, vmul(a, fsplat(16777216.0)), a)
    b = vbits(a)
    k = vsub(vand(vsra(b, 23), isplat(0xFF)), vsel(sub, isplat(150), isplat(126)))
    m = vfrombits(vor(vand(b, isplat(POW_MANT)), isplat(POW_HALF)))
    small = vgt(fsplat(POW_SQRT_HALF), m)
    m = vsel(small, vadd(m, m), m)
    kf = vitof(vsel(small, vsub(k, isplat(1)), k))
    one = fsplat(1.0)
    f = vdiv(vsub(m, one), vadd(m, one))
    f2 = vmul(f, f)
    nl = len(POW_LOG_C)
    s = fsplat(POW_LOG_C[nl - 1])
    for i in range(nl - 2, -1, -1):
        s = vadd(vmul(s, f2), fsplat(POW_LOG_C[i]))
    ln = vadd(vmul(kf, fsplat(POW_LN2_HI)), vadd(vmul(kf, fsplat(POW_LN2_LO)), vmul(vadd(f, f), s)))
    y = vmul(ln, fsplat(e))
    n = vfloor(vadd(vmul(y, fsplat(POW_INV_LN2)), fsplat(0.5)))
    r = vsub(vsub(y, vmul(n, fsplat(POW_LN2_HI))), vmul(n, fsplat(POW_LN2_LO)))
    ne = len(POW_EXP_C)
    p = fsplat(POW_EXP_C[ne - 1])
    for i in range(ne - 2, -1, -1):
        p = vadd(vmul(p, r), fsplat(POW_EXP_C[i]))
    lo, hi = fsplat(-126.0), fsplat(127.0)
    ni = vftoi(vsel(vgt(lo, n), lo, vsel(vgt(n, hi), hi, n)))
    out = vmul(p, vfrombits(vshl(vadd(ni, isplat(127)), 23)))
    return vsel(vgt(n, hi), fsplat(np.inf), vsel(vgt(lo, n), fsplat(0.0), out))


@njit(**_opts)
def _clamp(x, top):
    """torch's clamp(x, 0, top): a NaN stays NaN."""
    zero = fsplat(0.0)
    x = vsel(vgt(zero, x), zero, x)
    return vsel(vgt(x, top), top, x)


@njit(**_opts)
def _sq_error(V, M, S, W, Q, g, s, z, top):
    """`hqq._Groups.sq_error`: the fixed-order sum of ((v - s (q - z))**2) * mask. Leaves
    v / s in W and the codes in Q: the next iteration's, where the lane goes on."""
    for j in range(g):
        vj = vload(V, j)
        w = vdiv(vj, s)
        q = _clamp(vrint(vadd(w, z)), top)
        d = vsub(vj, vmul(s, vsub(q, z)))
        vstore(W, j, w)
        vstore(Q, j, q)
        vstore(S, j, vmul(vmul(d, d), vload(M, j)))
    return _halve_sum_v(S, g)


@njit(**_opts)
def _shrink(r, p_lt_1, e, inv_beta):
    """`hqq.shrink_lp`: sign(r) * max(|r| - thresh, 0), thresh = |r|**(p-1) / beta (p < 1;
    +inf at r = 0), else 1 / beta."""
    ax = vabs(r)
    if p_lt_1:
        pos = vgt(ax, fsplat(0.0))
        th = vsel(pos, vmul(_pow_v(vsel(pos, ax, fsplat(1.0)), e), fsplat(inv_beta)), fsplat(np.inf))
    else:
        th = fsplat(inv_beta)
    zero = fsplat(0.0)
    val = vsub(ax, th)
    val = vsel(vgt(zero, val), zero, val)
    sgn = vsel(vgt(r, zero), fsplat(1.0), vsel(vgt(zero, r), fsplat(-1.0), zero))
    return vmul(sgn, val)


@njit(**_opts)
def _block(V, M, Q, T, S, W, g, top, p_lt_1, e, iterations, beta0, kappa, early_stop, tol32, scale):
    """The optimiser on one transposed block of 16 groups; returns (best s, best z)."""
    for j in range(g):
        vstore(S, j, vload(M, j))
    count = _halve_sum_v(S, g)
    s = fsplat(1.0)
    z = fsplat(0.0)
    best_s, best_z = s, z
    best_err = _sq_error(V, M, S, W, Q, g, s, z, top)
    active = isplat(-1)
    beta = beta0
    for _ in range(iterations):
        inv_beta = 1.0 / beta
        # W, Q: v / s and the codes round(v / s + z) clamped (`hqq._Groups.codes`), from the
        # last _sq_error, whose s and z are this iteration's in every lane still active
        # (a stopped lane's results are never kept)
        for j in range(g):
            w = vload(W, j)
            w_e = _shrink(vsub(w, vsub(vload(Q, j), z)), p_lt_1, e, inv_beta)
            vstore(T, j, vsub(w, w_e))  # t = w - w_e
        if scale:
            for j in range(g):
                vstore(S, j, vmul(vload(Q, j), vload(M, j)))
            qm = vdiv(_halve_sum_v(S, g), count)
            for j in range(g):
                vstore(S, j, vmul(vload(T, j), vload(M, j)))
            tm = vdiv(_halve_sum_v(S, g), count)
            for j in range(g):
                dq = vsub(vload(Q, j), qm)
                vstore(S, j, vmul(vmul(dq, vsub(vload(T, j), tm)), vload(M, j)))
            cov = vdiv(_halve_sum_v(S, g), count)
            for j in range(g):
                dq = vsub(vload(Q, j), qm)
                vstore(S, j, vmul(vmul(dq, dq), vload(M, j)))
            var = vdiv(_halve_sum_v(S, g), count)
            zero = fsplat(0.0)
            ok = vand(vgt(var, zero), vgt(cov, zero))
            one = fsplat(1.0)
            alpha = vsel(ok, vdiv(cov, vsel(ok, var, one)), one)
            s_new = vmul(s, alpha)
            z_new = vsub(qm, vdiv(tm, alpha))
        else:
            for j in range(g):
                vstore(S, j, vmul(vsub(vload(Q, j), vload(T, j)), vload(M, j)))  # q - (w - w_e)
            s_new = s
            z_new = vdiv(_halve_sum_v(S, g), count)
        beta = beta * kappa
        err = _sq_error(V, M, S, W, Q, g, s_new, z_new, top)
        better = vand(active, vgt(vmul(best_err, fsplat(tol32)), err))
        best_s = vsel(better, s_new, best_s)
        best_z = vsel(better, z_new, best_z)
        best_err = vsel(better, err, best_err)
        s = vsel(active, s_new, s)
        z = vsel(active, z_new, z)
        if early_stop:
            active = better
            if not vany(active):
                break
    return best_s, best_z


_F32_MAX = float(np.finfo(np.float32).max)


@njit(parallel=True, **_opts)
def encode(x, g, floor, top, p_lt_1, e, iterations, beta0, kappa, early_stop, tol32, scale, sym, side, s_out, z_out):
    """`hqq.hqq_quantize` with float32 side values, whole: rows x (N, D) float32 in
    groups of g (the last padded with the row's last value, masked out), 16 groups a
    block: the float64 min-max start, v = float32((w - lo) / step), the optimiser
    (`_block`), the codes round(v / s + z) clamped, and the side values step * s and
    z - lo / (step * s) clamped to float32's range. sym (N, D) int64, side (N, 2G);
    s_out, z_out (N * G,) float32: the optimiser's s and z of each group (`hqq.optimize_groups`)."""
    n, d = x.shape
    ng = (d + g - 1) // g
    n_groups = n * ng
    w = _pow2_at_least(g)
    blocks = (n_groups + RB - 1) // RB
    tasks = (blocks + BLOCKS_PER_TASK - 1) // BLOCKS_PER_TASK
    topv = fsplat(np.float32(top))
    for t in prange(tasks):
        X = np.zeros(g * RB, np.float32)
        V = np.zeros(g * RB, np.float32)
        M = np.zeros(g * RB, np.float32)
        Q = np.zeros(g * RB, np.float32)
        T = np.zeros(g * RB, np.float32)
        W = np.zeros(g * RB, np.float32)
        S = np.zeros(w * RB, np.float32)  # rows g..w stay +0.0 (`_halve_sum_v` never writes them)
        SIDE = np.zeros(2 * RB, np.float64)
        for b in range(t * BLOCKS_PER_TASK, min(blocks, (t + 1) * BLOCKS_PER_TASK)):
            r0 = b * RB
            nr = min(RB, n_groups - r0)
            for j in range(g):
                for r in range(RB):
                    if r < nr:
                        row = (r0 + r) // ng
                        col = ((r0 + r) % ng) * g + j
                        X[j * RB + r] = x[row, min(col, d - 1)]  # `hqq._grouped`'s padding
                        M[j * RB + r] = 1.0 if col < d else 0.0
                    else:  # a lane past the last group: zeros, which stop at once
                        X[j * RB + r] = 0.0
                        M[j * RB + r] = 1.0
            w0 = vfext(vload(X, 0))
            lo, hi, amax = w0, w0, vabs(w0)
            for j in range(1, g):
                wj = vfext(vload(X, j))
                lo = vsel(vgt(lo, wj), wj, lo)
                hi = vsel(vgt(wj, hi), wj, hi)
                aj = vabs(wj)
                amax = vsel(vgt(aj, amax), aj, amax)
            lo = vadd(lo, dsplat(0.0))  # -0.0 as +0.0, as the reference
            spread = vsub(hi, lo)
            least = vmul(amax, dsplat(floor))
            span = vsel(vgt(least, spread), least, spread)
            step = vsel(vgt(span, dsplat(0.0)), vdiv(span, dsplat(top)), dsplat(1.0))
            for j in range(g):
                vstore(V, j, vfround(vdiv(vsub(vfext(vload(X, j)), lo), step)))
            bs, bz = _block(V, M, Q, T, S, W, g, topv, p_lt_1, e, iterations, beta0, kappa, early_stop, tol32, scale)
            for j in range(g):
                vstore(Q, j, _clamp(vrint(vadd(vdiv(vload(V, j), bs), bz)), topv))
            sc = vmul(step, vfext(bs))
            zp = vsub(vfext(bz), vdiv(lo, sc))
            hi64, lo64 = dsplat(_F32_MAX), dsplat(-_F32_MAX)
            vstore(SIDE, 0, vsel(vgt(sc, hi64), hi64, vsel(vgt(lo64, sc), lo64, sc)))
            vstore(SIDE, 1, vsel(vgt(zp, hi64), hi64, vsel(vgt(lo64, zp), lo64, zp)))
            for r in range(nr):
                row = (r0 + r) // ng
                gi = (r0 + r) % ng
                for j in range(min(g, d - gi * g)):
                    sym[row, gi * g + j] = np.int64(Q[j * RB + r])
                side[row, gi] = np.float32(SIDE[r])
                side[row, ng + gi] = np.float32(SIDE[RB + r])
            vstore(T, 0, bs)
            vstore(W, 0, bz)
            for r in range(nr):
                s_out[r0 + r] = T[r]
                z_out[r0 + r] = W[r]


def quantize(x: np.ndarray, g: int, p, floor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(symbols int64 (N, D), side float32 (N, 2G), s, z float32 (N * G,)) of
    `hqq.hqq_quantize`'s float32 path for HqqParams ``p``, groups of ``g`` and the span
    ``floor``: the codes and side values, and the optimiser's s and z per group."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    ng = -(-d // g)
    sym = np.empty((n, d), np.int64)
    side = np.empty((n, 2 * ng), np.float32)
    s = np.empty(n * ng, np.float32)
    z = np.empty(n * ng, np.float32)
    encode(x, g, floor, float((1 << p.bits) - 1), p.p < 1, float(p.p - 1), int(p.iterations), float(p.beta),
           float(p.kappa), bool(p.early_stop), float(np.float32(1 - p.tolerance)), bool(p.optimize_scale), sym, side,
           s, z)
    return sym, side, s, z


@njit(parallel=True, **_opts)
def decode(sym, side, g, out):
    """`hqq.hqq_dequantize` with float32 side values: out[i, j] = float32 of
    scale * (q - zero) in float64 (scale, zero: the side values of j's group), clamped
    to float32's range. sym (N, >= D) int64 symbols, side (N, 2G) float32, out (N, D)."""
    n, d = out.shape
    ng = (d + g - 1) // g
    for i in prange(n):
        for gi in range(ng):
            sc = np.float64(side[i, gi])
            zp = np.float64(side[i, ng + gi])
            for j in range(gi * g, min(d, gi * g + g)):
                v = sc * (np.float64(sym[i, j]) - zp)
                if v > _F32_MAX:
                    v = _F32_MAX
                elif v < -_F32_MAX:
                    v = -_F32_MAX
                out[i, j] = np.float32(v)


def dequantize(sym: np.ndarray, side: np.ndarray, g: int, d: int) -> np.ndarray:
    """float32 (N, D) of `hqq.hqq_dequantize` with float32 side values and groups of ``g``."""
    out = np.empty((sym.shape[0], d), np.float32)
    decode(np.ascontiguousarray(sym, dtype=np.int64), np.ascontiguousarray(side, dtype=np.float32), g, out)
    return out
