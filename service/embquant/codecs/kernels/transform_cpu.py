"""Compiled CPU kernels of `transform` (numba): project, count, pack in one pass per row block.

The reference (`codecs.transform`) encodes ``z = float32((x - mu) @ V)`` with a float64
matmul, counts each component's thresholds <= z, writes the count as b_i one-bit
symbols and, with ``gain``, adds the least-squares gain from `fixed_sum`s. Here a block
of rows is projected in float64 with the sum over the input dimension in ascending
order (a fixed order: a row's z never depends on the rest of the batch; 16 rows are
the 16 lanes of `cpu`'s vectors, two or four outputs at a time), then the block's rows are
counted (a gather per search step), packed (every row's bit position is the same)
and summed (the gain's halving sums) 16 at a time; nothing of size (N, D) is
allocated besides the outputs. Decode is the mirror image: symbols to levels (times the gain),
``float32(z_hat @ V^T + mu)`` in float64 with the same fixed order.

With trellis=true (`trellis_encode`, `trellis_decode`) the count is replaced by each
bit width's Viterbi path over the block's projected components (`tcq_cpu`'s 16-lane
kernel up to 4 bits, its row kernel above), and the levels by the walk along it; the
projection, packing, gain and back-projection are the ones above.

Exactness: everything after the projection repeats the reference's operations in
its order and precision. The projection is float64 in both, in a different summation
order (the reference's is BLAS's, which itself changes with the batch shape), rounded
to float32: the two agree unless a float64 sum lands within about 1e-16 (relative) of
a float32 rounding boundary, and then differ by one float32 ulp of z (a code changes
only if a threshold also sits in that ulp). The tests compare codes, gains and decoded
vectors with the reference bit for bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .cpu import (
    BAD_PADDING, EXTRA_BITS, LANES, NOT_FINITE, OK, dsplat, has_avx512, fsplat, isplat, lsplat, vadd, vand, vfext, vfma, vfround, vgather,
    vge, vload, vmul, vnarrow, vor, vshl, vshr, vstore, vwiden,
)
from .rows_cpu import padding_ok
from .tcq_cpu import SUB16, SUB_F, _row, _viterbi_T, _walk_step

RB = LANES  # rows per block: the lanes of the projection's vectors
TASK_ROWS = 256  # rows per parallel task (scratch allocated once per task)

_opts = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)


@njit(**_opts)
def _project4(aT, d, bt, j0, j1, j2, j3, zT):
    """`_project_T`'s step for four outputs j0..j3 (its AVX-512 grouping; bench/kernel_variants.py
    times it on AVX2 too)."""
    a0 = dsplat(0.0)
    a1 = dsplat(0.0)
    a2 = dsplat(0.0)
    a3 = dsplat(0.0)
    b0 = bt[j0]
    b1 = bt[j1]
    b2 = bt[j2]
    b3 = bt[j3]
    for k in range(d):
        v = vload(aT, k)
        a0 = vfma(v, dsplat(b0[k]), a0)
        a1 = vfma(v, dsplat(b1[k]), a1)
        a2 = vfma(v, dsplat(b2[k]), a2)
        a3 = vfma(v, dsplat(b3[k]), a3)
    vstore(zT, j0, a0)
    vstore(zT, j1, a1)
    vstore(zT, j2, a2)
    vstore(zT, j3, a3)


@njit(**_opts)
def _project_T(aT, d, bt, outs, zT):
    """zT[j] = sum over k ascending of aT[k] * bt[j, k] for each j in outs: 16 rows at
    once (aT, zT: (D, 16) float64 blocks, flat), one fused multiply-add per term;
    several outputs at a time share each load of aT[k]: four with AVX-512 (8 of its 32
    registers accumulate), two with AVX2, whose 16 registers four outputs' 16
    accumulators would fill (spilled every step, it ran at half the speed). Every
    output's sum is the same whichever way they are grouped."""
    m = outs.shape[0]
    q = 0
    if has_avx512():
        while q + 4 <= m:
            _project4(aT, d, bt, outs[q], outs[q + 1], outs[q + 2], outs[q + 3], zT)
            q += 4
    while q + 2 <= m:
        j0 = outs[q]
        j1 = outs[q + 1]
        a0 = dsplat(0.0)
        a1 = dsplat(0.0)
        b0 = bt[j0]
        b1 = bt[j1]
        for k in range(d):
            v = vload(aT, k)
            a0 = vfma(v, dsplat(b0[k]), a0)
            a1 = vfma(v, dsplat(b1[k]), a1)
        vstore(zT, j0, a0)
        vstore(zT, j1, a1)
        q += 2
    while q < m:
        j0 = outs[q]
        a0 = dsplat(0.0)
        b0 = bt[j0]
        for k in range(d):
            a0 = vfma(vload(aT, k), dsplat(b0[k]), a0)
        vstore(zT, j0, a0)
        q += 1


@njit(**_opts)
def _gain_T(DEN, NUM, w2, i0, nr, gain):
    """gain[i0 + r] = the least-squares gain sum(num) / sum(den) of each of a block's 16
    rows (1 where nothing was quantized): DEN and NUM (w2, 16) float64, rows d.. zero,
    each summed by `_scalar.fixed_sum`'s order (the halves added elementwise), lane by
    lane. DEN and NUM are summed in place."""
    h = w2
    while h > 1:
        h >>= 1
        for k in range(h):
            vstore(DEN, k, vadd(vload(DEN, k), vload(DEN, k + h)))
            vstore(NUM, k, vadd(vload(NUM, k), vload(NUM, k + h)))
    for r in range(nr):
        sd = DEN[r]
        sn = NUM[r]
        gain[i0 + r, 0] = np.float32(sn / max(sd, 1e-300) if sd > 0 else 1.0)


@njit(**_opts)
def _pack_T(I, alloc, codes, i0, nr, W):
    """Each row's component indices I (D, 16) int64 as alloc[j] one-bit symbols each,
    least significant first, components in order, into codes[i0 + r] (the last word
    zero-padded): 16 rows at once, every row's bit position the same. W: scratch of
    codes.shape[1] rows of 16 int64 lanes."""
    nw = codes.shape[1]
    word = lsplat(0)
    fill = 0
    w = 0
    for j in range(alloc.shape[0]):
        b = alloc[j]
        if b > 0:
            v = vload(I, j)
            word = vor(word, vshl(v, fill))
            fill += b
            if fill >= 64:
                vstore(W, w, word)
                w += 1
                fill -= 64
                word = vshr(v, b - fill) if fill > 0 else lsplat(0)
    while w < nw:
        vstore(W, w, word)
        word = lsplat(0)
        w += 1
    for r in range(nr):
        for k in range(nw):
            codes[i0 + r, k] = W[k * RB + r]


@njit(**_opts)
def _load_centred(x, i0, nr, mean, xT, status):
    """xT (D, 16) float64 <- rows i0.. of x minus the mean, transposed; status: OK, or
    NOT_FINITE for a row holding NaN or Inf."""
    d = x.shape[1]
    for r in range(nr):
        ok = True
        for k in range(d):
            v = x[i0 + r, k]
            if not np.isfinite(v):
                ok = False
            xT[k * RB + r] = np.float64(v) - mean[k]
        status[i0 + r] = OK if ok else NOT_FINITE


@njit(parallel=True, **_opts)
def encode(x, mean, basis_t, outs, alloc, th, th_off, lv, lv_start, gain_on, codes, gain, status):
    """x (N, D) float32; mean (D,) float64; basis_t (D, D) float64 (row j: component j);
    outs: the components whose z is needed (with bits, or all of them with the gain);
    alloc (D,) bits per component; th / th_off: each component's thresholds, flat;
    lv / lv_start: its levels, flat (a row's code: each component's bits in order).
    codes (N, W) int64, gain (N, 1) float32 (when gain_on), status (N,) uint8: written."""
    n, d = x.shape
    w2 = 1
    while w2 < d:
        w2 <<= 1
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        xT = np.zeros(d * RB, np.float64)
        zT = np.zeros(d * RB, np.float64)
        I = np.zeros(d * RB, np.int64)
        W = np.zeros(codes.shape[1] * RB, np.int64)
        DEN = np.zeros(w2 * RB, np.float64)  # rows d.. stay zero: the sums' padding
        NUM = np.zeros(w2 * RB, np.float64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), RB):
            nr = min(RB, n - i0)
            _load_centred(x, i0, nr, mean, xT, status)
            _project_T(xT, d, basis_t, outs, zT)
            for j in range(d):
                z = vfround(vload(zT, j))
                b = alloc[j]
                idx = _count_v(z, th, th_off[j], b) if b > 0 else isplat(0)
                vstore(I, j, vwiden(idx))
                if gain_on:
                    zh = vfext(vgather(lv, vadd(idx, isplat(lv_start[j]))))
                    vstore(DEN, j, vmul(zh, zh))
                    vstore(NUM, j, vmul(vfext(z), zh))
            _pack_T(I, alloc, codes, i0, nr, W)
            if gain_on:
                _gain_T(DEN, NUM, w2, i0, nr, gain)


@njit(**_opts)
def _count_v(z, th, lo, b):
    """Per lane, how many of the 2**b - 1 sorted thresholds th[lo:] are <= z
    (`searchsorted(right=True)`, b <= 8): a binary search, each step adding h where
    th[lo + a + h - 1] <= z (a gather per step)."""
    a = isplat(0)
    h = 1 << (b - 1)
    while h >= 1:
        a = vadd(a, vand(vge(z, vgather(th, vadd(a, isplat(lo + h - 1)))), isplat(h)))
        h >>= 1
    return a


@njit(**_opts)
def _row_status(codes, i, symbols, used):
    """Unused bits of the last word (check_codes' padding error comes first), then bits
    of the layout past the allocation (transform.decode's error)."""
    if not padding_ok(codes, i, symbols, 1):
        return BAD_PADDING
    for p in range(used, symbols):
        if (codes[i, p >> 6] >> np.int64(p & 63)) & 1:
            return EXTRA_BITS
    return OK


@njit(**_opts)
def _unpack_T(codes, i0, nr, alloc, W, I):
    """I (D, 16) int32 <- each component's index from its alloc[j] one-bit symbols, least
    significant first, components in order (`_pack_T`'s inverse), 16 rows at once; lanes
    past nr read zero words. W: scratch of codes.shape[1] rows of 16 int64 lanes."""
    nw = codes.shape[1]
    for k in range(nw):
        for r in range(RB):
            W[k * RB + r] = codes[i0 + r, k] if r < nr else 0
    word = vload(W, 0)
    w = 0
    fill = 0
    for j in range(alloc.shape[0]):
        b = alloc[j]
        if b == 0:
            vstore(I, j, isplat(0))
            continue
        if fill + b <= 64:
            v = vand(vshr(word, fill), lsplat((1 << b) - 1))
            fill += b
        else:  # the low 64 - fill bits here, the rest from the next word
            low = 64 - fill
            v = vshr(word, fill)
            w += 1
            word = vload(W, w)
            v = vor(v, vshl(vand(word, lsplat((1 << (b - low)) - 1)), low))
            fill = b - low
        if fill == 64 and w + 1 < nw:
            w += 1
            word = vload(W, w)
            fill = 0
        vstore(I, j, vnarrow(v))


@njit(**_opts)
def _back_project(zT, d, basis, every, yT, mean, i0, nr, out, status):
    """out[i0:i0 + nr] = float32(z_hat @ V^T + mu) for a block zT (D, 16) float64, in the
    fixed order; a row with a non-finite value gets NOT_FINITE (unless already bad)."""
    _project_T(zT, d, basis, every, yT)
    for r in range(nr):
        i = i0 + r
        fin = True
        for j in range(d):
            y = np.float32(yT[j * RB + r] + mean[j])
            out[i, j] = y
            if not np.isfinite(y):
                fin = False
        if not fin and status[i] == OK:
            status[i] = NOT_FINITE


@njit(parallel=True, **_opts)
def decode(codes, side, side_on, symbols, used, mean, basis, every, alloc, lv, lv_start, out, status):
    """codes (N, W) int64 of `symbols` one-bit symbols, of which the first `used` carry
    the allocation; basis (D, D) float64 (row j: input dimension j); every: arange(D); side (N, 1)
    float32 (when side_on). out (N, D) float32 and status (N,) uint8 written."""
    n = codes.shape[0]
    d = out.shape[1]
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        zT = np.zeros(d * RB, np.float64)
        yT = np.zeros(d * RB, np.float64)
        I = np.zeros(d * RB, np.int32)
        W = np.zeros(codes.shape[1] * RB, np.int64)
        G = np.ones(RB, np.float32)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), RB):
            nr = min(RB, n - i0)
            for r in range(nr):
                status[i0 + r] = _row_status(codes, i0 + r, symbols, used)
                if side_on:
                    G[r] = side[i0 + r, 0]
            _unpack_T(codes, i0, nr, alloc, W, I)
            g = vload(G, 0)
            for k in range(d):
                v = vgather(lv, vadd(vload(I, k), isplat(lv_start[k])))
                if side_on:
                    v = vmul(v, g)
                vstore(zT, k, vfext(v))
            _back_project(zT, d, basis, every, yT, mean, i0, nr, out, status)


# -- trellis=true: the components of each bit width coded together by tcq's trellis ---------------
#
# Tables (`cpu_ops._transform_trellis_plan`), one group per bit width used, in increasing
# width (the order of the codec's level tables): gcomp[gstart[g]:gstart[g + 1]] are the
# group's components in order; levels[glv[g]:glv[g + 1]] its 2 ** (b + 1) unit levels;
# up to 32 levels, mids16[g] / lv16[g] are `tcq_cpu.viterbi16`'s (4, 16) permute tables,
# wider, midsw[g, :, :per] the midpoints `tcq_cpu.viterbi` searches.


@njit(**_opts)
def _trellis_block(zT, nr, gcomp, gstart, glv, levels, scale, mids16, lv16, midsw, I, Zh, U, S, C, idx, back):
    """The Viterbi path of each group over a projected block zT (D, 16) float64: I (D, 16)
    int64 gets each component's symbol, Zh (D, 16) float32 its level times its scale
    (the reference's ``chosen * sc``); components of no group keep what I and Zh hold."""
    for g in range(gstart.shape[0] - 1):
        c0 = gstart[g]
        nl = gstart[g + 1] - c0
        lv = levels[glv[g]:glv[g + 1]]
        m = lv.shape[0]
        if m <= 32:  # 16 rows at once, as tcq_cpu.viterbi16
            for t in range(nl):
                j = gcomp[c0 + t]
                s = scale[j]
                for r in range(RB):
                    U[t * RB + r] = np.float32(np.float32(zT[j * RB + r]) / s)
            _viterbi_T(U, nl, nr, lv, mids16[g].reshape(-1), lv16[g].reshape(-1), SUB16, idx, back, S, C)
            for t in range(nl):
                j = gcomp[c0 + t]
                s = scale[j]
                for r in range(nr):
                    I[j * RB + r] = S[t * RB + r]
                    Zh[j * RB + r] = np.float32(C[t * RB + r] * s)
        else:  # row by row, as tcq_cpu.viterbi
            per = m // 4
            u = np.empty((RB, nl), np.float32)
            sym = np.empty((RB, nl), np.int64)
            chosen = np.empty((RB, nl), np.float32)
            wi = np.empty((nl, 4), np.int64)
            wb = np.empty(nl, np.int64)
            for r in range(nr):
                for t in range(nl):
                    j = gcomp[c0 + t]
                    u[r, t] = np.float32(np.float32(zT[j * RB + r]) / scale[j])
                _row(u, r, lv, midsw[g], per, m, wi, wb, sym, chosen)
                for t in range(nl):
                    j = gcomp[c0 + t]
                    I[j * RB + r] = sym[r, t]
                    Zh[j * RB + r] = np.float32(chosen[r, t] * scale[j])


@njit(parallel=True, **_opts)
def trellis_encode(x, mean, basis_t, outs, alloc, gcomp, gstart, glv, levels, scale, mids16, lv16, midsw, gain_on,
                   codes, gain, status):
    """`Transform.encode` with trellis=true in one pass per 16-row block: centre and
    project (`encode`'s fixed-order float64 sums), each width's Viterbi path
    (`_trellis_block`), pack each component's symbol as alloc[j] one-bit symbols in
    order, and with ``gain_on`` the least-squares gain from the halving sums of
    z * zh and zh * zh over all D components (zh = 0 where alloc is 0). outs: the
    components whose z is needed (all of them with the gain). Nothing of size (N, D)."""
    n, d = x.shape
    w2 = 1
    while w2 < d:
        w2 <<= 1
    lmax = 1
    for g in range(gstart.shape[0] - 1):
        lmax = max(lmax, gstart[g + 1] - gstart[g])
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        xT = np.zeros(d * RB, np.float64)
        zT = np.zeros(d * RB, np.float64)
        I = np.zeros(d * RB, np.int64)  # 0-bit components: symbol 0 and zh 0, never written
        Zh = np.zeros(d * RB, np.float32)
        U = np.zeros(lmax * RB, np.float32)
        S = np.zeros(lmax * RB, np.int32)
        C = np.zeros(lmax * RB, np.float32)
        idx = np.empty(lmax * 4 * RB, np.int32)
        back = np.empty(lmax * RB, np.int32)
        W = np.zeros(codes.shape[1] * RB, np.int64)
        DEN = np.zeros(w2 * RB, np.float64)  # rows d.. stay zero: the sums' padding
        NUM = np.zeros(w2 * RB, np.float64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), RB):
            nr = min(RB, n - i0)
            _load_centred(x, i0, nr, mean, xT, status)
            _project_T(xT, d, basis_t, outs, zT)
            _trellis_block(zT, nr, gcomp, gstart, glv, levels, scale, mids16, lv16, midsw, I, Zh, U, S, C, idx,
                           back)
            _pack_T(I, alloc, codes, i0, nr, W)
            if gain_on:
                for j in range(d):
                    zh = vfext(vload(Zh, j))
                    vstore(DEN, j, vmul(zh, zh))
                    vstore(NUM, j, vmul(vfext(vfround(vload(zT, j))), zh))
                _gain_T(DEN, NUM, w2, i0, nr, gain)


@njit(parallel=True, **_opts)
def trellis_decode(codes, side, side_on, symbols, used, mean, basis, every, alloc, gcomp, gstart, glv,
                   levels, scale, lv16, out, status):
    """`Transform.decode` with trellis=true: each row's component symbols unpacked, each
    width's trellis walked in component order (`tcq_cpu.walk_row`'s steps; 16 rows at
    once up to 32 levels, lv16 (groups, 4, 16) the subsets' levels) times the
    component's scale (times the gain, with ``side_on``), then `decode`'s fixed-order
    float64 back-projection. Statuses as `decode`."""
    n = codes.shape[0]
    d = out.shape[1]
    sub = SUB_F
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        zT = np.zeros(d * RB, np.float64)
        yT = np.zeros(d * RB, np.float64)
        I = np.zeros(d * RB, np.int32)
        W = np.zeros(codes.shape[1] * RB, np.int64)
        G = np.ones(RB, np.float32)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), RB):
            nr = min(RB, n - i0)
            for r in range(nr):
                status[i0 + r] = _row_status(codes, i0 + r, symbols, used)
                if side_on:
                    G[r] = side[i0 + r, 0]
            _unpack_T(codes, i0, nr, alloc, W, I)
            # components of no group (0 bits): 0, times the gain with side_on
            zero = vfext(vmul(fsplat(0.0), vload(G, 0))) if side_on else dsplat(0.0)
            for k in range(d):
                vstore(zT, k, zero)
            g16 = vload(G, 0)
            for q in range(gstart.shape[0] - 1):
                lv = levels[glv[q]:glv[q + 1]]
                if lv.shape[0] <= 32:  # 16 rows at once: `tcq_cpu._walk_T`'s steps, with each component's scale
                    _walk_group_T(I, zT, gcomp, gstart[q], gstart[q + 1], lv16[q].reshape(-1), scale, side_on, g16)
                    continue
                for r in range(nr):
                    g = G[r]
                    s = 0
                    for c in range(gstart[q], gstart[q + 1]):
                        j = gcomp[c]
                        sy = np.int64(I[j * RB + r])
                        b = sy & 1
                        v = np.float32(lv[sub[2 * s + b] + 4 * (sy >> 1)] * scale[j])
                        if side_on:
                            v = np.float32(v * g)
                        zT[j * RB + r] = np.float64(v)
                        s = (2 * s) % 8 + b
            _back_project(zT, d, basis, every, yT, mean, i0, nr, out, status)


@njit(**_opts)
def _walk_group_T(I, zT, gcomp, c0, c1, lvs, scale, side_on, g):
    """zT[j] for the components gcomp[c0:c1] of one group, in order, 16 rows at once: the
    level along the trellis (subset permutes, as `tcq_cpu._walk_T`), times the
    component's scale, times the lanes' gains g with ``side_on`` (float32 products)."""
    subt, lev0, lev1, lev2, lev3 = vload(SUB16, 0), vload(lvs, 0), vload(lvs, 1), vload(lvs, 2), vload(lvs, 3)
    s = isplat(0)
    for c in range(c0, c1):
        j = gcomp[c]
        lev, s = _walk_step(vload(I, j), s, subt, lev0, lev1, lev2, lev3)
        v = vmul(lev, fsplat(scale[j]))
        if side_on:
            v = vmul(v, g)
        vstore(zT, j, vfext(v))
