"""Compiled CPU kernels of `transform` (numba): project, count, pack in one pass per row block.

The reference (`codecs.transform`) encodes ``z = float32((x - mu) @ V)`` with a float64
matmul, counts each component's thresholds <= z, writes the count as b_i one-bit
symbols and, with ``gain``, adds the least-squares gain from `fixed_sum`s. Here a block
of rows is projected in float64 with the sum over the input dimension in ascending
order (a fixed order: a row's z never depends on the rest of the batch; 16 rows are
the 16 lanes of `cpu`'s vectors, four outputs at a time), then each
row is counted, packed and summed in place; nothing of size (N, D) is allocated
besides the outputs. Decode is the mirror image: symbols to levels (times the gain),
``float32(z_hat @ V^T + mu)`` in float64 with the same fixed order.

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

from .cpu import BAD_PADDING, EXTRA_BITS, LANES, NOT_FINITE, OK, dsplat, vfma, vload, vstore
from .rows_cpu import count_le, padding_ok

RB = LANES  # rows per block: the lanes of the projection's vectors
TASK_ROWS = 256  # rows per parallel task (scratch allocated once per task)

_opts = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)


@njit(**_opts)
def _project_T(aT, d, bt, outs, zT):
    """zT[j] = sum over k ascending of aT[k] * bt[j, k] for each j in outs: 16 rows at
    once (aT, zT: (D, 16) float64 blocks, flat), one fused multiply-add per term;
    four outputs at a time share each load of aT[k]."""
    m = outs.shape[0]
    q = 0
    while q + 4 <= m:
        j0 = outs[q]
        j1 = outs[q + 1]
        j2 = outs[q + 2]
        j3 = outs[q + 3]
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
        q += 4
    while q < m:
        j0 = outs[q]
        a0 = dsplat(0.0)
        b0 = bt[j0]
        for k in range(d):
            a0 = vfma(vload(aT, k), dsplat(b0[k]), a0)
        vstore(zT, j0, a0)
        q += 1


@njit(**_opts)
def _halving_sum(buf, w2):
    """`_scalar.fixed_sum` of buf[:w2] (w2 a power of two, zero-padded): halves added elementwise."""
    h = w2
    while h > 1:
        h >>= 1
        for i in range(h):
            buf[i] = buf[i] + buf[i + h]
    return buf[0]


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
    nw = codes.shape[1]
    w2 = 1
    while w2 < d:
        w2 <<= 1
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        xT = np.zeros(d * RB, np.float64)
        zT = np.zeros(d * RB, np.float64)
        den = np.zeros(w2, np.float64)
        num = np.zeros(w2, np.float64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), RB):
            nr = min(RB, n - i0)
            _load_centred(x, i0, nr, mean, xT, status)
            _project_T(xT, d, basis_t, outs, zT)
            for r in range(nr):
                i = i0 + r
                # the components' bits go in order, least significant first: append
                # them to one word and store it when full (the last one zero-padded)
                word = np.uint64(0)
                fill = 0
                w = 0
                for j in range(d):
                    z = np.float32(zT[j * RB + r])
                    b = alloc[j]
                    idx = 0
                    if b > 0:
                        idx = count_le(th, th_off[j], b, z)
                        word |= np.uint64(idx) << np.uint64(fill)
                        fill += b
                        if fill >= 64:
                            codes[i, w] = np.int64(word)
                            w += 1
                            fill -= 64
                            word = np.uint64(idx) >> np.uint64(b - fill) if fill > 0 else np.uint64(0)
                    if gain_on:
                        zh = np.float64(lv[lv_start[j] + idx])
                        den[j] = zh * zh
                        num[j] = np.float64(z) * zh
                while w < nw:
                    codes[i, w] = np.int64(word)
                    word = np.uint64(0)
                    w += 1
                if gain_on:
                    for j in range(d, w2):
                        den[j] = 0.0
                        num[j] = 0.0
                    sd = _halving_sum(den, w2)
                    sn = _halving_sum(num, w2)
                    g = sn / max(sd, 1e-300) if sd > 0 else 1.0
                    gain[i, 0] = np.float32(g)


@njit(parallel=True, **_opts)
def decode(codes, side, side_on, symbols, used, mean, basis, every, alloc, lv, lv_start, sym_start, out, status):
    """codes (N, W) int64 of `symbols` one-bit symbols, of which the first `used` carry
    the allocation; basis (D, D) float64 (row j: input dimension j); every: arange(D); side (N, 1)
    float32 (when side_on). out (N, D) float32 and status (N,) uint8 written."""
    n = codes.shape[0]
    d = out.shape[1]
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        zT = np.zeros(d * RB, np.float64)
        yT = np.zeros(d * RB, np.float64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), RB):
            nr = min(RB, n - i0)
            for r in range(nr):
                i = i0 + r
                # unused bits of the last word (check_codes' padding error comes first) ...
                st = OK if padding_ok(codes, i, symbols, 1) else BAD_PADDING
                # ... then bits of the layout past the allocation (transform.decode's error)
                if st == OK:
                    for p in range(used, symbols):
                        if (codes[i, p >> 6] >> np.int64(p & 63)) & 1:
                            st = EXTRA_BITS
                            break
                status[i] = st
                g = side[i, 0] if side_on else np.float32(1.0)
                for k in range(d):
                    b = alloc[k]
                    idx = 0
                    s = sym_start[k]
                    for t in range(b):
                        p = s + t
                        idx |= np.int64((codes[i, p >> 6] >> np.int64(p & 63)) & 1) << t
                    v = lv[lv_start[k] + idx]
                    if side_on:
                        v = np.float32(v * g)
                    zT[k * RB + r] = np.float64(v)
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
def project(x, mean, basis_t, outs, z, status):
    """`encode`'s projection alone (trellis=true codes its components elsewhere): z[:, j]
    = float32((x - mean) . basis_t[j]) for j in outs, the same fixed-order float64 sums;
    status: OK, or NOT_FINITE for a row holding NaN or Inf."""
    n, d = x.shape
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        xT = np.zeros(d * RB, np.float64)
        zT = np.zeros(d * RB, np.float64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), RB):
            nr = min(RB, n - i0)
            _load_centred(x, i0, nr, mean, xT, status)
            _project_T(xT, d, basis_t, outs, zT)
            for r in range(nr):
                for q in range(outs.shape[0]):
                    j = outs[q]
                    z[i0 + r, j] = np.float32(zT[j * RB + r])


@njit(parallel=True, **_opts)
def pack_alloc(idx, alloc, codes):
    """Each row's component indices idx (N, D) as alloc[j] one-bit symbols each, least
    significant first, components in order (`encode`'s packing)."""
    n, d = idx.shape
    nw = codes.shape[1]
    for i in prange(n):
        word = np.uint64(0)
        fill = 0
        w = 0
        for j in range(d):
            b = alloc[j]
            if b > 0:
                v = idx[i, j]
                word |= np.uint64(v) << np.uint64(fill)
                fill += b
                if fill >= 64:
                    codes[i, w] = np.int64(word)
                    w += 1
                    fill -= 64
                    word = np.uint64(v) >> np.uint64(b - fill) if fill > 0 else np.uint64(0)
        while w < nw:
            codes[i, w] = np.int64(word)
            word = np.uint64(0)
            w += 1
