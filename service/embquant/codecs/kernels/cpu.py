"""Compiled CPU kernels (numba): one fused pass per block of rows, on all cores.

Every kernel repeats the reference's arithmetic operation for operation, in the
same order and the same precision, so its results are bit-identical to the torch
code in the scheme modules (the tests compare them for every scheme, bit width and
dimension):

- float32 throughout where the reference is float32; a scalar constant the
  reference multiplies by (a Python float) is rounded to float32 first, as torch does;
- sums are `_scalar.fixed_sum`'s pairwise order: the row padded with +0.0 to a
  power of two, then halves added elementwise;
- the Hadamard butterflies are `rotation._fwht`'s, stage by stage;
- symbols are counts of thresholds <= z (`torch.bucketize(right=True)`): a
  branch-free count over a short sorted table, a binary search over a long one.

Layout: a block of RB rows is held transposed, (D, RB), so every step of a row's
computation (a butterfly, a permutation, a per-row sum) runs on RB rows at once
in contiguous SIMD lanes. Rows are independent, so blocks are the unit of
parallel work and each task owns its scratch: nothing of size (N, D) is allocated
besides the outputs. No fastmath: it would let LLVM reorder sums and contract
multiply-adds, which changes bits.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

RB = 16  # rows per block, the SIMD lanes of every step (passed to the kernels at run time:
#          a compile-time 16 makes LLVM unroll the lane loops and then fail to vectorise them)
TASK_ROWS = 512  # rows per parallel task (scratch allocated once per task)
LINEAR_COUNT_MAX = 31  # up to this many thresholds, count by comparing with all

# -- status codes a kernel reports per row (the caller turns them into errors) --
OK = 0
BAD_PADDING = 1  # unused bits of a word are not zero
BAD_SYMBOL = 2  # a symbol at or above the codec's level count
NOT_FINITE = 3  # the input row, or the decoded row, is not finite
NOT_UNIT = 4  # norm='unit' and the row's norm is off by more than the tolerance

_opts = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)
_inl = dict(_opts, inline="always")


# ---------------------------------------------------------------------------
# building blocks on a transposed block: a flat float array of D rows of rb lanes,
# row j at [j*rb, (j+1)*rb). Inner loops run over slices with a run-time length
# (numba then needs no negative-index wraparound, and LLVM vectorises them with
# run-time alias checks); lanes past the live rows hold stale finite values and
# are never stored.


@njit(**_inl)
def _pow2_at_least(n):
    w = 1
    while w < n:
        w *= 2
    return w


@njit(**_inl)
def _halve_sum_T(buf, d, rb, out):
    """out[r] = `_scalar.fixed_sum` of lane r of buf's first d rows, in place: rows
    d..pow2(d) of buf must hold +0.0 (the halving never writes them, so they stay so)."""
    w = _pow2_at_least(d)
    while w > 1:
        h = w // 2
        lo = buf[: h * rb]
        hi = buf[h * rb : w * rb]
        for k in range(h * rb):
            lo[k] = lo[k] + hi[k]
        w = h
    for r in range(rb):
        out[r] = buf[r]


@njit(**_inl)
def _fixed_sum_T(vals, d, buf, rb, out):
    """`_halve_sum_T` of a copy of vals' first d rows in buf (pow2(d) rows, zero-padded here)."""
    w = _pow2_at_least(d)
    src = vals[: d * rb]
    dst = buf[: d * rb]
    for k in range(d * rb):
        dst[k] = src[k]
    pad = buf[d * rb : w * rb]
    for k in range(pad.shape[0]):
        pad[k] = 0.0
    _halve_sum_T(buf, d, rb, out)


@njit(**_inl)
def _fwht_T(A, B, lo, b, scale, rb):
    """`rotation._fwht` of rows lo..lo+b of A in place (b a power of two); B: scratch."""
    if b == 1:
        return
    blk = A[lo * rb : (lo + b) * rb]
    for k in range(b * rb):
        blk[k] = blk[k] * scale
    in_b = False  # where this stage's input lies: A[lo:lo+b] or B[:b]
    h = 1
    while h < b:
        n = h * rb
        for g in range(0, b, 2 * h):
            if in_b:
                u = B[g * rb : g * rb + n]
                v = B[(g + h) * rb : (g + h) * rb + n]
                p = A[(lo + g) * rb : (lo + g) * rb + n]
                q = A[(lo + g + h) * rb : (lo + g + h) * rb + n]
            else:
                u = A[(lo + g) * rb : (lo + g) * rb + n]
                v = A[(lo + g + h) * rb : (lo + g + h) * rb + n]
                p = B[g * rb : g * rb + n]
                q = B[(g + h) * rb : (g + h) * rb + n]
            for t in range(n):
                a = u[t]
                c = v[t]
                p[t] = a + c
                q[t] = a - c
        in_b = not in_b
        h *= 2
    if in_b:
        src = B[: b * rb]
        for k in range(b * rb):
            blk[k] = src[k]


@njit(**_inl)
def _hadamard_T(A, B, blocks, scales, rb):
    lo = 0
    for i in range(blocks.shape[0]):
        _fwht_T(A, B, lo, blocks[i], scales[i], rb)
        lo += blocks[i]


@njit(**_inl)
def _load_T(x, i0, nr, A, rotate, signs, perm, blocks, scales, B, rb):
    """A <- rows i0..i0+nr of x, transposed, rotated (rotation.forward) when asked."""
    d = x.shape[1]
    if not rotate:
        for r in range(nr):
            row = x[i0 + r]
            for j in range(d):
                A[j * rb + r] = row[j]
        return
    for rnd in range(signs.shape[0]):
        if rnd == 0:
            for j in range(d):
                p = perm[0, j]
                s = signs[0, p]
                for r in range(nr):
                    A[j * rb + r] = x[i0 + r, p] * s
        else:
            for j in range(d):
                p = perm[rnd, j]
                s = signs[rnd, p]
                src = B[p * rb : (p + 1) * rb]
                dst = A[j * rb : (j + 1) * rb]
                for r in range(rb):
                    dst[r] = src[r] * s
        _hadamard_T(A, B, blocks, scales, rb)
        if rnd + 1 < signs.shape[0]:
            src = A[: d * rb]
            dst = B[: d * rb]
            for k in range(d * rb):
                dst[k] = src[k]


@njit(**_inl)
def _unrotate_T(A, B, signs, inv, blocks, scales, rb):
    """A <- R^T A (rotation.inverse)."""
    d = A.shape[0] // rb
    for rnd in range(signs.shape[0] - 1, -1, -1):
        _hadamard_T(A, B, blocks, scales, rb)
        for j in range(d):
            q = inv[rnd, j]
            s = signs[rnd, j]
            src = A[q * rb : (q + 1) * rb]
            dst = B[j * rb : (j + 1) * rb]
            for r in range(rb):
                dst[r] = src[r] * s
        src = B[: d * rb]
        dst = A[: d * rb]
        for k in range(d * rb):
            dst[k] = src[k]


@njit(**_inl)
def _finite_rows(xbits, i0, nr, status):
    """NaN/Inf check on the float32 bit patterns (an integer OR, which vectorises)."""
    for r in range(nr):
        row = xbits[i0 + r]
        bad = np.int32(0)
        for j in range(row.shape[0]):
            bad |= np.int32((row[j] & 0x7F800000) == 0x7F800000)
        status[i0 + r] = NOT_FINITE if bad else OK


@njit(**_inl)
def _absmax_T(A, d, rb, out):
    for r in range(rb):
        out[r] = 0.0
    for j in range(d):
        a = A[j * rb : (j + 1) * rb]
        for r in range(rb):
            v = abs(a[r])
            if v > out[r]:
                out[r] = v


@njit(**_inl)
def _count_le_T(Z, d, th, S, rb):
    """S[j, r] = number of th[t(j)] entries <= Z[j, r]; th: (T, 2**k - 1) sorted, T = 1 or D."""
    m = th.shape[1]
    per_dim = th.shape[0] > 1
    if m <= LINEAR_COUNT_MAX:
        for j in range(d):
            t = j if per_dim else 0
            z = Z[j * rb : (j + 1) * rb]
            s = S[j * rb : (j + 1) * rb]
            for r in range(rb):
                s[r] = 0
            for k in range(m):
                tk = th[t, k]
                for r in range(rb):
                    s[r] += z[r] >= tk
        return
    n = m + 1
    for j in range(d):
        t = j if per_dim else 0
        for r in range(rb):
            z = Z[j * rb + r]
            c = 0
            step = n // 2
            while step >= 1:
                if z >= th[t, c + step - 1]:
                    c += step
                step //= 2
            S[j * rb + r] = c


@njit(**_inl)
def _pack_T(S, d, i0, nr, bits, codes, rb):
    v = 64 // bits
    for r in range(nr):
        out = codes[i0 + r]
        for wi in range(out.shape[0]):
            acc = np.int64(0)
            base = wi * v
            for k in range(min(v, d - base)):
                acc |= np.int64(S[(base + k) * rb + r]) << (k * bits)
            out[wi] = acc


@njit(**_inl)
def _unpack_T(codes, i0, nr, bits, d, S, status, rb):
    """S lanes <- symbols of rows i0.. ; status BAD_PADDING where an unused bit is set."""
    v = 64 // bits
    mask = (np.int64(1) << bits) - 1
    for r in range(nr):
        row = codes[i0 + r]
        st = OK
        for wi in range(row.shape[0]):
            word = row[wi]
            base = wi * v
            top = min(v, d - base)
            for k in range(top):
                S[(base + k) * rb + r] = (word >> (k * bits)) & mask
            used = top * bits
            if used < 64 and (word >> used) != 0:
                st = BAD_PADDING
        status[i0 + r] = st


@njit(**_inl)
def _unpack_row(words, bits, d, sym):
    """sym[:d] <- the symbols of one row's words; BAD_PADDING if an unused bit is set."""
    v = 64 // bits
    mask = (np.int64(1) << bits) - 1
    st = OK
    for wi in range(words.shape[0]):
        word = words[wi]
        base = wi * v
        top = min(v, d - base)
        for k in range(top):
            sym[base + k] = (word >> (k * bits)) & mask
        used = top * bits
        if used < 64 and (word >> used) != 0:
            st = BAD_PADDING
    return st


@njit(**_inl)
def _finite_status(row, st):
    """st, or NOT_FINITE when st is OK and the decoded row holds NaN/Inf."""
    if st != OK:
        return st
    bad = np.int32(0)
    bits = row.view(np.int32)
    for j in range(bits.shape[0]):
        bad |= np.int32((bits[j] & 0x7F800000) == 0x7F800000)
    return NOT_FINITE if bad else OK


@njit(**_inl)
def _store_T(A, d, i0, nr, out, status, rb):
    """out rows <- A's live lanes; a row with a non-finite value gets NOT_FINITE."""
    for r in range(nr):
        row = out[i0 + r]
        ok = True
        for j in range(d):
            v = A[j * rb + r]
            row[j] = v
            if not np.isfinite(v):
                ok = False
        if not ok and status[i0 + r] == OK:
            status[i0 + r] = NOT_FINITE


# ---------------------------------------------------------------------------
# generic pieces: packing and the rotation alone (used by every scheme)


@njit(parallel=True, **_opts)
def pack(sym, bits, out):
    n, length = sym.shape
    v = 64 // bits
    for i in prange(n):
        row = sym[i]
        o = out[i]
        for wi in range(o.shape[0]):
            acc = np.int64(0)
            base = wi * v
            for k in range(min(v, length - base)):
                acc |= row[base + k] << (k * bits)
            o[wi] = acc


@njit(parallel=True, **_opts)
def unpack(words, bits, length, sym, status):
    for i in prange(words.shape[0]):
        status[i] = _unpack_row(words[i], bits, length, sym[i])


@njit(parallel=True, **_opts)
def rotate_forward(x, signs, perm, blocks, scales, out, rb):
    n, d = x.shape
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _load_T(x, i0, nr, A, True, signs, perm, blocks, scales, B, rb)
            for r in range(nr):
                row = out[i0 + r]
                for j in range(d):
                    row[j] = A[j * rb + r]


@njit(parallel=True, **_opts)
def rotate_inverse(y, signs, inv, blocks, scales, out, rb):
    n, d = y.shape
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            for r in range(nr):
                row = y[i0 + r]
                for j in range(d):
                    A[j * rb + r] = row[j]
            _unrotate_T(A, B, signs, inv, blocks, scales, rb)
            for r in range(nr):
                row = out[i0 + r]
                for j in range(d):
                    row[j] = A[j * rb + r]


# ---------------------------------------------------------------------------
# lloyd: rotate, normalise, bucketize, gain, pack (and back)


@njit(parallel=True, **_opts)
def lloyd_encode(x, xbits, rotate, signs, perm, blocks, scales, th, lv, unit, unit_scale, unit_tol, bits, codes, gain, status, rb):
    """th, lv: (T, n-1), (T, n) with T = 1 (one table) or D (one per dimension)."""
    n, d = x.shape
    per_dim = lv.shape[0] > 1
    w2 = _pow2_at_least(d)
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(w2 * rb, np.float32)  # rows d.. stay +0.0: the padding of the sums
        Q = np.zeros(w2 * rb, np.float32)
        S = np.zeros(d * rb, np.int32)
        buf64 = np.zeros(w2 * rb, np.float64)
        sq64 = np.zeros(d * rb, np.float64)
        m = np.ones(rb, np.float32)
        s = np.ones(rb, np.float32)
        den = np.ones(rb, np.float32)
        num = np.ones(rb, np.float32)
        nrm = np.ones(rb, np.float64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _finite_rows(xbits, i0, nr, status)
            _load_T(x, i0, nr, A, rotate, signs, perm, blocks, scales, B, rb)
            if unit:
                # lloyd._check_unit: the float64 norm in the fixed pairwise order
                for k in range(d * rb):
                    v = np.float64(A[k])
                    sq64[k] = v * v
                _fixed_sum_T(sq64, d, buf64, rb, nrm)
                for r in range(nr):
                    if status[i0 + r] == OK and abs(np.sqrt(nrm[r]) - 1.0) > unit_tol:
                        status[i0 + r] = NOT_UNIT
                for k in range(d * rb):
                    B[k] = A[k] * unit_scale
                _count_le_T(B, d, th, S, rb)
                _pack_T(S, d, i0, nr, bits, codes, rb)
                continue
            # RMS of the row, scaled by its largest magnitude (lloyd._rms)
            _absmax_T(A, d, rb, m)
            for r in range(rb):
                if not m[r] > 0:
                    m[r] = 1.0
            for j in range(d):
                a = A[j * rb : (j + 1) * rb]
                q = Q[j * rb : (j + 1) * rb]
                b = B[j * rb : (j + 1) * rb]
                for r in range(rb):
                    v = a[r] / m[r]
                    q[r] = v
                    b[r] = v * v
            _halve_sum_T(B, d, rb, s)
            for r in range(rb):
                s[r] = np.sqrt(s[r] / np.float32(d)) * m[r]
                if not s[r] > 0:
                    s[r] = 1.0
            for j in range(d):
                a = A[j * rb : (j + 1) * rb]
                b = B[j * rb : (j + 1) * rb]
                for r in range(rb):
                    b[r] = a[r] / s[r]
            _count_le_T(B, d, th, S, rb)
            # least-squares gain of the chosen levels: <x/m, c> / <c, c> * m
            for j in range(d):
                t = j if per_dim else 0
                b = B[j * rb : (j + 1) * rb]
                q = Q[j * rb : (j + 1) * rb]
                sj = S[j * rb : (j + 1) * rb]
                for r in range(rb):
                    c = lv[t, sj[r]]
                    b[r] = c * c
                    q[r] = q[r] * c
            _halve_sum_T(B, d, rb, den)
            _halve_sum_T(Q, d, rb, num)
            for r in range(nr):
                if den[r] > 0:
                    gain[i0 + r, 0] = (num[r] / den[r]) * m[r]
                else:
                    gain[i0 + r, 0] = np.float32(0.0) * m[r]
            _pack_T(S, d, i0, nr, bits, codes, rb)


@njit(parallel=True, **_opts)
def lloyd_decode(codes, side, unit, unit_scale, rotate, signs, inv, blocks, scales, lv, bits, out, status, rb):
    n = codes.shape[0]
    d = out.shape[1]
    per_dim = lv.shape[0] > 1
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        S = np.zeros(d * rb, np.int64)
        g = np.zeros(rb, np.float32)
        sym = np.zeros(d, np.int64)
        if not rotate:  # row by row: no transposition needed
            for i in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS)):
                st = _unpack_row(codes[i], bits, d, sym)
                gi = unit_scale if unit else side[i, 0]
                row = out[i]
                for j in range(d):
                    row[j] = lv[j if per_dim else 0, sym[j]] * gi
                status[i] = _finite_status(row, st)
            continue
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _unpack_T(codes, i0, nr, bits, d, S, status, rb)
            for r in range(nr):
                g[r] = unit_scale if unit else side[i0 + r, 0]
            for j in range(d):
                t = j if per_dim else 0
                a = A[j * rb : (j + 1) * rb]
                sj = S[j * rb : (j + 1) * rb]
                for r in range(rb):
                    a[r] = lv[t, sj[r]] * g[r]
            if rotate:
                _unrotate_T(A, B, signs, inv, blocks, scales, rb)
            _store_T(A, d, i0, nr, out, status, rb)


# ---------------------------------------------------------------------------
# absmax: rotate, one scale per row, round half to even, pack (and back)


@njit(parallel=True, **_opts)
def absmax_encode(x, xbits, rotate, signs, perm, blocks, scales, qmax, bits, codes, scale_out, status, rb):
    n, d = x.shape
    fq = np.float32(qmax)
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        S = np.zeros(d * rb, np.int32)
        m = np.ones(rb, np.float32)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _finite_rows(xbits, i0, nr, status)
            _load_T(x, i0, nr, A, rotate, signs, perm, blocks, scales, B, rb)
            _absmax_T(A, d, rb, m)
            for r in range(rb):
                sc = m[r] / fq
                if r < nr:
                    scale_out[i0 + r, 0] = sc
                m[r] = sc if sc > 0 else np.float32(1.0)
            for j in range(d):
                a = A[j * rb : (j + 1) * rb]
                sj = S[j * rb : (j + 1) * rb]
                for r in range(rb):
                    q = np.rint(a[r] / m[r])
                    q = min(max(q, -fq), fq)
                    sj[r] = np.int32(q) + qmax
            _pack_T(S, d, i0, nr, bits, codes, rb)


@njit(parallel=True, **_opts)
def absmax_decode(codes, side, qmax, rotate, signs, inv, blocks, scales, bits, out, status, rb):
    n = codes.shape[0]
    d = out.shape[1]
    levels = 2 * qmax + 1
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        S = np.zeros(d * rb, np.int64)
        g = np.zeros(rb, np.float32)
        sym = np.zeros(d, np.int64)
        if not rotate:  # row by row: no transposition needed
            for i in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS)):
                st = _unpack_row(codes[i], bits, d, sym)
                gi = side[i, 0]
                row = out[i]
                over = np.int64(0)
                for j in range(d):
                    over |= np.int64(sym[j] >= levels)
                    row[j] = np.float32(sym[j] - qmax) * gi
                if over and st == OK:
                    st = BAD_SYMBOL
                status[i] = _finite_status(row, st)
            continue
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _unpack_T(codes, i0, nr, bits, d, S, status, rb)
            for r in range(nr):
                g[r] = side[i0 + r, 0]
                if status[i0 + r] == OK:
                    for j in range(d):
                        if S[j * rb + r] >= levels:
                            status[i0 + r] = BAD_SYMBOL
            for j in range(d):
                a = A[j * rb : (j + 1) * rb]
                sj = S[j * rb : (j + 1) * rb]
                for r in range(rb):
                    a[r] = np.float32(sj[r] - qmax) * g[r]
            if rotate:
                _unrotate_T(A, B, signs, inv, blocks, scales, rb)
            _store_T(A, d, i0, nr, out, status, rb)


# ---------------------------------------------------------------------------
# table schemes (codebook, distributional): normalise, count thresholds, pack (and back)
#   mode ROW_ABSMAX: z = x / absmax(row) (0 -> 1), side = absmax   (codebook scale=row)
#   mode FIXED:      z = x / scale                                   (codebook scale=codec)
#   mode AFFINE:     z = (x - loc) / scale; decode level * scale + loc (distributional)

ROW_ABSMAX = 0
FIXED = 1
AFFINE = 2


@njit(parallel=True, **_opts)
def table_encode(x, xbits, rotate, signs, perm, blocks, scales, th, mode, loc, gscale, bits, codes, side, status, rb):
    n, d = x.shape
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        S = np.zeros(d * rb, np.int32)
        m = np.ones(rb, np.float32)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _finite_rows(xbits, i0, nr, status)
            _load_T(x, i0, nr, A, rotate, signs, perm, blocks, scales, B, rb)
            if mode == ROW_ABSMAX:
                _absmax_T(A, d, rb, m)
                for r in range(rb):
                    if r < nr:
                        side[i0 + r, 0] = m[r]
                    if not m[r] > 0:
                        m[r] = 1.0
                for j in range(d):
                    a = A[j * rb : (j + 1) * rb]
                    b = B[j * rb : (j + 1) * rb]
                    for r in range(rb):
                        b[r] = a[r] / m[r]
            elif mode == FIXED:
                for k in range(d * rb):
                    B[k] = A[k] / gscale
            else:
                for k in range(d * rb):
                    B[k] = (A[k] - loc) / gscale
            _count_le_T(B, d, th, S, rb)
            _pack_T(S, d, i0, nr, bits, codes, rb)


@njit(**_inl)
def _table_value(lv, s, g, mode, loc):
    v = lv[0, s] * g
    if mode == AFFINE:
        v = v + loc
    return v


@njit(parallel=True, **_opts)
def table_decode(codes, side, mode, loc, gscale, nlev, rotate, signs, inv, blocks, scales, lv, bits, out, status, rb):
    n = codes.shape[0]
    d = out.shape[1]
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        S = np.zeros(d * rb, np.int64)
        g = np.zeros(rb, np.float32)
        sym = np.zeros(d, np.int64)
        if not rotate:  # row by row: no transposition needed
            for i in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS)):
                st = _unpack_row(codes[i], bits, d, sym)
                gi = side[i, 0] if mode == ROW_ABSMAX else gscale
                row = out[i]
                over = np.int64(0)
                for j in range(d):
                    s = sym[j]
                    over |= np.int64(s >= nlev)
                    row[j] = _table_value(lv, min(s, nlev - 1), gi, mode, loc)
                if over and st == OK:
                    st = BAD_SYMBOL
                status[i] = _finite_status(row, st)
            continue
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _unpack_T(codes, i0, nr, bits, d, S, status, rb)
            for r in range(nr):
                g[r] = side[i0 + r, 0] if mode == ROW_ABSMAX else gscale
                if status[i0 + r] == OK:
                    for j in range(d):
                        if S[j * rb + r] >= nlev:
                            status[i0 + r] = BAD_SYMBOL
            for j in range(d):
                a = A[j * rb : (j + 1) * rb]
                sj = S[j * rb : (j + 1) * rb]
                for r in range(rb):
                    a[r] = _table_value(lv, min(sj[r], nlev - 1), g[r], mode, loc)
            if rotate:
                _unrotate_T(A, B, signs, inv, blocks, scales, rb)
            _store_T(A, d, i0, nr, out, status, rb)


# ---------------------------------------------------------------------------
# int8 (per-dimension ranges) and binary (sign bits): the providers' formats


@njit(parallel=True, **_opts)
def int8_encode(x, xbits, rotate, signs, perm, blocks, scales, starts, steps, codes, status, rb):
    n, d = x.shape
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        S = np.zeros(d * rb, np.int32)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _finite_rows(xbits, i0, nr, status)
            _load_T(x, i0, nr, A, rotate, signs, perm, blocks, scales, B, rb)
            for j in range(d):
                a = A[j * rb : (j + 1) * rb]
                sj = S[j * rb : (j + 1) * rb]
                st = starts[j]
                sp = steps[j]
                for r in range(rb):
                    q = np.floor((a[r] - st) / sp)
                    q = min(max(q, np.float32(0.0)), np.float32(255.0))
                    sj[r] = np.int32(q)
            _pack_T(S, d, i0, nr, 8, codes, rb)


@njit(parallel=True, **_opts)
def int8_decode(codes, rotate, signs, inv, blocks, scales, starts, steps, maxes, out, status, rb):
    n = codes.shape[0]
    d = out.shape[1]
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        S = np.zeros(d * rb, np.int64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _unpack_T(codes, i0, nr, 8, d, S, status, rb)
            for j in range(d):
                a = A[j * rb : (j + 1) * rb]
                sj = S[j * rb : (j + 1) * rb]
                st = starts[j]
                sp = steps[j]
                mx = maxes[j]
                flat = mx == st
                for r in range(rb):
                    mid = st + (np.float32(sj[r]) + np.float32(0.5)) * sp
                    a[r] = st if flat else min(mid, mx)
            if rotate:
                _unrotate_T(A, B, signs, inv, blocks, scales, rb)
            _store_T(A, d, i0, nr, out, status, rb)


@njit(parallel=True, **_opts)
def binary_encode(x, xbits, rotate, signs, perm, blocks, scales, row_scale, codes, side, status, rb):
    n, d = x.shape
    w2 = _pow2_at_least(d)
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        S = np.zeros(d * rb, np.int32)
        abs64 = np.zeros(d * rb, np.float64)
        buf64 = np.zeros(w2 * rb, np.float64)
        tot = np.zeros(rb, np.float64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _finite_rows(xbits, i0, nr, status)
            _load_T(x, i0, nr, A, rotate, signs, perm, blocks, scales, B, rb)
            for k in range(d * rb):
                S[k] = A[k] > 0
            if row_scale:
                # binary._mean_abs: float64 |x| summed in the fixed pairwise order
                for k in range(d * rb):
                    abs64[k] = abs(np.float64(A[k]))
                _fixed_sum_T(abs64, d, buf64, rb, tot)
                for r in range(nr):
                    side[i0 + r, 0] = np.float32(tot[r] / np.float64(d))
            _pack_T(S, d, i0, nr, 1, codes, rb)


@njit(parallel=True, **_opts)
def binary_decode(codes, side, mode, gscale, rotate, signs, inv, blocks, scales, out, status, rb):
    """mode 0: +-side of the row; 1: +-gscale; 2: +-1."""
    n = codes.shape[0]
    d = out.shape[1]
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        S = np.zeros(d * rb, np.int64)
        g = np.ones(rb, np.float32)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _unpack_T(codes, i0, nr, 1, d, S, status, rb)
            for r in range(nr):
                g[r] = side[i0 + r, 0] if mode == 0 else gscale
            for j in range(d):
                a = A[j * rb : (j + 1) * rb]
                sj = S[j * rb : (j + 1) * rb]
                for r in range(rb):
                    pm = np.float32(sj[r]) * np.float32(2.0) - np.float32(1.0)
                    a[r] = pm if mode == 2 else pm * g[r]
            if rotate:
                _unrotate_T(A, B, signs, inv, blocks, scales, rb)
            _store_T(A, d, i0, nr, out, status, rb)
