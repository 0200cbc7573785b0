"""Compiled CPU kernels (numba) of asymmetric scoring: float queries against packed
codes, never decoded to vectors (`codecs.score`). Two kernels, the same scores up to
float32 rounding: `scan_dense` (many queries: blocks of rows decoded to their levels,
multiplied with the queries; see its docstring) and the lookup tables below (few
queries), which `codecs.score.dense_scan` chooses between.

A row's packed symbols are read in *keys*: key g of a row is the ``spg`` symbols
``[g * spg, (g + 1) * spg)`` taken together (``spg * bits`` bits, at most 8: a whole
byte of the word for 1, 2, 4 and 8 bits, one symbol for the widths that do not
divide 64). A query's table ``lut[g, key]`` holds the sum over those symbols of
``q'_d * level(d, symbol_d)``, so the sum over a row's keys is ``q' . levels(row)``:
``D * bits / 8`` lookups per (query, row) instead of D multiply-adds on a decoded row.

Layout: each parallel task takes ``task_rows`` consecutive rows, extracts their keys
once into a transposed (keys, rows) byte buffer, then for each query sums table
entries over a block of rows at a time (one independent sum per row, so the adds can
run in parallel lanes; each sum adds its keys in the same order whatever the task,
so a row's score does not depend on where it sits). Top k per query and task is kept
in a sorted buffer, ties to the lower index; the caller merges the tasks' buffers.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .cpu import (
    _unpack_T, dsplat, has_avx512, popcount64, fsplat, isplat, vadd, vany, vdiv, vfext, vfma, vfround, vgather, vgt, vload, vlookup, vmul, vsel,
    vstore, vsub,
)
from .status import BAD_PADDING, BAD_SYMBOL, OK  # noqa: F401
from .tcq_cpu import SUB16, SUB_F, _walk_T, walk_row

_opts = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)

BLOCK = 256  # rows summed side by side for one query


@njit(parallel=True, **_opts)
def check(words, bits, dim, levels, status):
    """Per row: BAD_PADDING where an unused bit is set, BAD_SYMBOL where a symbol is
    >= levels (levels < 2**bits only), else OK. Padding is checked first, as the
    reference does."""
    n, nw = words.shape
    v = 64 // bits
    mask = (np.uint64(1) << np.uint64(bits)) - np.uint64(1)
    full = levels >= (1 << bits)
    for i in prange(n):
        st = OK
        for w in range(nw):
            used = min(v, dim - w * v) * bits
            if used < 64:
                if (np.uint64(words[i, w]) >> np.uint64(used)) != np.uint64(0):
                    st = BAD_PADDING
                    break
        if st == OK and not full:
            for w in range(nw):
                x = np.uint64(words[i, w])
                cnt = min(v, dim - w * v)
                for j in range(cnt):
                    s = (x >> np.uint64(j * bits)) & mask
                    if s >= np.uint64(levels):
                        st = BAD_SYMBOL
                        break
                if st != OK:
                    break
        status[i] = st


@njit(**_opts)
def _keys(words, r0, nr, bits, dim, spg, keys):
    """keys[g, r] = key g of row r0 + r, for r < nr."""
    v = 64 // bits
    nk = keys.shape[0]
    for g in range(nk):
        s0 = g * spg
        w = s0 // v
        shift = np.uint64((s0 % v) * bits)
        nb = min(spg, dim - s0) * bits
        kmask = (np.uint64(1) << np.uint64(nb)) - np.uint64(1)
        for r in range(nr):
            keys[g, r] = np.uint8((np.uint64(words[r0 + r, w]) >> shift) & kmask)


@njit(parallel=True, **_opts)
def row_sums(words, bits, dim, spg, lut, out):
    """out[i] = sum over row i's keys of lut[g, key] (float64): one table for all rows
    (squared levels: a row's ||levels||^2)."""
    n = words.shape[0]
    nk = lut.shape[0]
    ntask = (n + BLOCK - 1) // BLOCK
    for t in prange(ntask):
        r0 = t * BLOCK
        nr = min(BLOCK, n - r0)
        keys = np.empty((nk, BLOCK), np.uint8)
        _keys(words, r0, nr, bits, dim, spg, keys)
        acc = np.zeros(BLOCK, np.float64)
        for g in range(nk):
            tab = lut[g]
            kg = keys[g]
            for r in range(nr):
                acc[r] += tab[kg[r]]
        for r in range(nr):
            out[r0 + r] = acc[r]


@njit(**_opts)
def _finish(sacc, g, n2, qsq, metric):
    """The float32 score of one (query, row) from the table sum, the row's gain and
    ||levels||^2 (metric 0 dot, 1 cosine with a unit query, 2 squared l2)."""
    d = g * sacc
    if metric == 0:
        return np.float32(d)
    ysq = g * g * n2
    if metric == 1:
        return np.float32(d / max(np.sqrt(ysq), 1e-30))
    return np.float32(max(qsq - 2.0 * d + ysq, 0.0))


@njit(**_opts)
def _finish16(acc, g, ysq, den, qsq, metric):
    """`_finish` for 16 rows at once (acc float32 lanes; g, ysq = g * g * n2 and den =
    max(sqrt(ysq), 1e-30) float64 lanes): the same operations, so the same float32 scores."""
    d = vmul(g, vfext(acc))
    if metric == 0:
        return vfround(d)
    if metric == 1:
        return vfround(vdiv(d, den))
    x = vadd(vsub(dsplat(qsq), vmul(dsplat(2.0), d)), ysq)
    return vfround(vsel(vgt(dsplat(0.0), x), dsplat(0.0), x))


@njit(parallel=True, **_opts)
def scan(words, bits, dim, spg, lut, gain, n2, qsq, metric, largest, task_rows, k, top_s, top_i, full):
    """Score every query against every row.

    lut (Q, keys, K) float32; gain, n2 (N,) float64; qsq (Q,) float64.
    With k > 0: top_s / top_i (tasks, Q, k) get each task's best k per query, best
    first (ties: lower index), padded with -inf / +inf and index -1. With k == 0:
    full (Q, N) float32 gets every score."""
    n = words.shape[0]
    nq, nk, _ = lut.shape
    ntask = (n + task_rows - 1) // task_rows
    for t in prange(ntask):
        t0 = t * task_rows
        tn = min(task_rows, n - t0)
        keys = np.empty((nk, task_rows), np.uint8)
        _keys(words, t0, tn, bits, dim, spg, keys)
        acc = np.empty(BLOCK, np.float32)
        for q in range(nq):
            cnt = 0
            qq = qsq[q]
            for b0 in range(0, tn, BLOCK):
                bn = min(BLOCK, tn - b0)
                for r in range(bn):
                    acc[r] = 0.0
                for g in range(nk):
                    tab = lut[q, g]
                    kg = keys[g, b0:b0 + bn]
                    for r in range(bn):
                        acc[r] += tab[kg[r]]
                for r in range(bn):
                    i = t0 + b0 + r
                    s = _finish(np.float64(acc[r]), gain[i], n2[i], qq, metric)
                    if k == 0:
                        full[q, i] = s
                        continue
                    cnt = _push(top_s, top_i, t, q, cnt, k, s, i, largest)
            _pad(top_s, top_i, t, q, cnt, k, largest)


@njit(**_opts)
def _push(top_s, top_i, t, q, cnt, k, s, i, largest):
    """Insert (s, i) into task t's sorted buffer for query q holding cnt entries;
    returns the new count. Rows come in index order, so an equal score never
    displaces an earlier row."""
    if cnt == k:
        w = top_s[t, q, k - 1]
        if largest:
            if not s > w:
                return cnt
        elif not s < w:
            return cnt
        j = k - 1
    else:
        j = cnt
        cnt += 1
    while j > 0:
        p = top_s[t, q, j - 1]
        better = s > p if largest else s < p
        if not better:
            break
        top_s[t, q, j] = p
        top_i[t, q, j] = top_i[t, q, j - 1]
        j -= 1
    top_s[t, q, j] = s
    top_i[t, q, j] = i
    return cnt


@njit(**_opts)
def _pad(top_s, top_i, t, q, cnt, k, largest):
    """Fill the unused tail of a top-k buffer: -inf / +inf scores, index -1."""
    pad = -np.inf if largest else np.inf
    for j in range(cnt, k):
        top_s[t, q, j] = pad
        top_i[t, q, j] = -1


@njit(parallel=True, **_opts)
def scan_words(words, lut, gain, n2, qsq, metric, largest, task_rows, k, top_s, top_i, full):
    """`scan` for 1, 2, 4 and 8 bits, where a key is a whole byte of a word: each row
    is read in place, word by word, a byte per lookup (lut (Q, 8 * words, 256), zero
    past the last symbol), two queries per pass over the task's rows (a byte is
    extracted once for both), each into four partial sums (bytes 0-3 and 4-7 of each
    word alternate) added in a fixed order: a row's score does not depend on its place
    nor on the other query of its pair."""
    n, nw = words.shape
    nq = lut.shape[0]
    ntask = (n + task_rows - 1) // task_rows
    m8 = np.uint64(255)
    for t in prange(ntask):
        t0 = t * task_rows
        tn = min(task_rows, n - t0)
        for qa in range(0, nq, 2):
            qb = min(qa + 1, nq - 1)
            two = qb != qa
            ca = 0
            cb = 0
            ta = lut[qa]
            tb = lut[qb]
            for i in range(t0, t0 + tn):
                a0 = np.float32(0.0)
                a1 = np.float32(0.0)
                a2 = np.float32(0.0)
                a3 = np.float32(0.0)
                b0 = np.float32(0.0)
                b1 = np.float32(0.0)
                b2 = np.float32(0.0)
                b3 = np.float32(0.0)
                for w in range(nw):
                    x = np.uint64(words[i, w])
                    g = w * 8
                    k0 = x & m8
                    k1 = (x >> np.uint64(8)) & m8
                    k2 = (x >> np.uint64(16)) & m8
                    k3 = (x >> np.uint64(24)) & m8
                    a0 += ta[g, k0]
                    b0 += tb[g, k0]
                    a1 += ta[g + 1, k1]
                    b1 += tb[g + 1, k1]
                    a2 += ta[g + 2, k2]
                    b2 += tb[g + 2, k2]
                    a3 += ta[g + 3, k3]
                    b3 += tb[g + 3, k3]
                    k0 = (x >> np.uint64(32)) & m8
                    k1 = (x >> np.uint64(40)) & m8
                    k2 = (x >> np.uint64(48)) & m8
                    k3 = x >> np.uint64(56)
                    a0 += ta[g + 4, k0]
                    b0 += tb[g + 4, k0]
                    a1 += ta[g + 5, k1]
                    b1 += tb[g + 5, k1]
                    a2 += ta[g + 6, k2]
                    b2 += tb[g + 6, k2]
                    a3 += ta[g + 7, k3]
                    b3 += tb[g + 7, k3]
                sa = _finish(np.float64((a0 + a1) + (a2 + a3)), gain[i], n2[i], qsq[qa], metric)
                if k == 0:
                    full[qa, i] = sa
                else:
                    ca = _push(top_s, top_i, t, qa, ca, k, sa, i, largest)
                if two:
                    sb = _finish(np.float64((b0 + b1) + (b2 + b3)), gain[i], n2[i], qsq[qb], metric)
                    if k == 0:
                        full[qb, i] = sb
                    else:
                        cb = _push(top_s, top_i, t, qb, cb, k, sb, i, largest)
            _pad(top_s, top_i, t, qa, ca, k, largest)
            if two:
                _pad(top_s, top_i, t, qb, cb, k, largest)


SUB_ROWS = 32  # rows decoded at a time by `scan_dense` (their levels stay in L2: 128 x D x 4 bytes)
QG = 8  # queries per pass over a decoded block


_TCQ_SUB = SUB_F  # tcq's trellis: the subset of branch b out of state s at 2 s + b


@njit(**_opts)
def _walk_levels(words, i0, nr, bits, dim, alphabet, lvs16, Y, S, W, junk):
    """`_decode_levels` for tcq's codes: each row's trellis walked along its symbols
    (`tcq.walk`); alphabet: the codec's 2**(bits+1) levels; lvs16: up to 4 bits, each
    subset's levels as a 16-entry table (flat, 64: `tcq_cpu._walk_T` walks 16 rows at
    once), else empty (row by row)."""
    nb = (nr + 15) // 16
    nw = words.shape[1]
    sym = np.empty(dim, np.int32)
    lev = np.empty(dim, np.float32)
    for b in range(nb):
        rn = min(16, nr - b * 16)
        if rn < 16:
            for wi in range(nw):
                for r in range(rn, 16):
                    W[wi * 16 + r] = 0
        _unpack_T(words, i0 + b * 16, rn, bits, dim, S, junk, W, 16)
        row = b * dim
        if lvs16.shape[0] == 64:
            _walk_T(S, dim, lvs16, SUB16, fsplat(1.0), Y[row * 16:])
            continue
        for r in range(16):
            for d in range(dim):
                sym[d] = S[d * 16 + r]
            walk_row(sym, alphabet, lev)
            for d in range(dim):
                Y[(row + d) * 16 + r] = lev[d]


@njit(parallel=True, **_opts)
def trellis_row_sums(words, bits, dim, alphabet):
    """Each row's ||levels||^2 (float64, in coordinate order) for tcq's codes."""
    n = words.shape[0]
    out = np.empty(n, np.float64)
    v = 64 // bits
    mask = (np.int64(1) << bits) - 1
    sub = _TCQ_SUB
    for i in prange(n):
        s = 0
        acc = 0.0
        for d in range(dim):
            x = (words[i, d // v] >> np.int64((d % v) * bits)) & mask
            bb = x & 1
            c = np.float64(alphabet[sub[2 * s + bb] + 4 * (x >> 1)])
            acc += c * c
            s = (2 * s) % 8 + bb
        out[i] = acc
    return out


@njit(**_opts)
def _decode_levels(words, i0, nr, bits, dim, lv, Y, S, W, junk):
    """Y: blocks of 16 rows transposed, Y[(b * dim + d) * 16 + r] = lv[d, symbol d of row
    i0 + 16 b + r] (float32). lv: (D, 16) levels when 2**bits <= 16 (one permute per 16
    symbols), else (D, 2**bits) (gathered); every symbol is in range (`check` ran).
    S (int32) and W (int64): `cpu._unpack_T`'s scratch; junk: its status (unused)."""
    nb = (nr + 15) // 16
    nw = words.shape[1]
    small = lv.shape[1] == 16
    flat = lv.reshape(-1)
    for b in range(nb):
        rn = min(16, nr - b * 16)
        if rn < 16:  # lanes past the last row: symbol 0
            for wi in range(nw):
                for r in range(rn, 16):
                    W[wi * 16 + r] = 0
        _unpack_T(words, i0 + b * 16, rn, bits, dim, S, junk, W, 16)
        row = b * dim
        for d in range(dim):
            idx = vload(S, d)
            if small:
                vstore(Y, row + d, vlookup(vload(flat, d), idx))
            else:
                vstore(Y, row + d, vgather(flat, vadd(idx, isplat(d * lv.shape[1]))))


@njit(**_opts)
def _take_block(lanes, off, b, sn, r0, qa, nq, qsq, cnt, worst, G, YS, DN, gain, n2, metric, largest, k, full,
                top_s, top_i, t):
    """`scan_dense`'s scores of block ``b`` (16 rows from row r0 + 16 b) against queries
    qa .. qa + QG - 1: raw sums in ``lanes`` vectors off .. off + QG - 1, finished and kept
    (k > 0: pushed into each query's top k; k == 0: written to ``full``)."""
    rn = min(16, sn - b * 16)
    i0 = r0 + b * 16
    for j in range(min(QG, nq - qa)):
        q = qa + j
        qq = qsq[q]
        base = (off + j) * 16
        c = cnt[q]
        wq = worst[q]
        if k > 0 and c == k:
            # the block's 16 scores at once, as `_finish` computes them: no lane better
            # than the k-th kept, nothing to push
            sv = _finish16(vload(lanes, off + j), vload(G, b), vload(YS, b), vload(DN, b), qq, metric)
            if not vany(vgt(sv, fsplat(wq)) if largest else vgt(fsplat(wq), sv)):
                continue
        for r in range(rn):
            i = i0 + r
            sc = _finish(np.float64(lanes[base + r]), gain[i], n2[i], qq, metric)
            if k == 0:
                full[q, i] = sc
            elif c < k or (sc > wq if largest else sc < wq):
                c = _push(top_s, top_i, t, q, c, k, sc, i, largest)
                if c == k:
                    wq = top_s[t, q, k - 1]
        cnt[q] = c
        worst[q] = wq


@njit(parallel=True, **_opts)
def scan_dense(words, bits, dim, lv, gain, n2, qf, qsq, metric, largest, task_rows, k, top_s, top_i, full, junk,
               trellis):
    """`scan` by multiply-adds on decoded levels instead of table lookups: each task
    decodes SUB_ROWS rows at a time to their levels (not rotated, not scaled: lv (D, 2**bits)
    float32), and every query's dot product with each row is a float32 fused
    multiply-add over d = 0, 1, ..., D - 1 in that order, 16 rows in the lanes of a
    vector, two such blocks and QG queries at a time (each query's value broadcast once
    for both blocks; qf (Q, D) float32, the rotated queries).
    A row's score depends on its own codes and the query alone, never on its place."""
    n = words.shape[0]
    nq = qf.shape[0]
    ntask = (n + task_rows - 1) // task_rows
    for t in prange(ntask):
        t0 = t * task_rows
        tn = min(task_rows, n - t0)
        Y = np.empty(((SUB_ROWS + 15) // 16) * dim * 16, np.float32)
        S = np.empty(dim * 16, np.int32)
        W = np.empty(words.shape[1] * 16, np.int64)
        lanes = np.empty(2 * QG * 16, np.float32)
        # per row of the sub-block: gain, ||y||^2 and cosine's denominator (`_finish`'s)
        G = np.zeros(((SUB_ROWS + 15) // 16) * 16, np.float64)
        YS = np.zeros(G.shape[0], np.float64)
        DN = np.ones(G.shape[0], np.float64)
        cnt = np.zeros(nq, np.int64)
        worst = np.zeros(nq, np.float32)  # the k-th best so far, once k are kept
        lvs16 = np.empty(64 if trellis and lv.shape[1] <= 32 else 0, np.float32)
        if lvs16.shape[0] == 64:  # subset i's level k: alphabet[i + 4 k] (the last past the end)
            per = lv.shape[1] // 4
            for i in range(4):
                for kk in range(16):
                    lvs16[i * 16 + kk] = lv[0, i + 4 * min(kk, per - 1)]
        for s0 in range(0, tn, SUB_ROWS):
            sn = min(SUB_ROWS, tn - s0)
            if trellis:  # lv: (1, 2**(bits+1)), tcq's alphabet
                _walk_levels(words, t0 + s0, sn, bits, dim, lv[0], lvs16, Y, S, W, junk)
            else:
                _decode_levels(words, t0 + s0, sn, bits, dim, lv, Y, S, W, junk)
            nb = (sn + 15) // 16
            for r in range(sn):
                i = t0 + s0 + r
                g = gain[i]
                ysq = g * g * n2[i]
                G[r] = g
                YS[r] = ysq
                DN[r] = max(np.sqrt(ysq), 1e-30)
            for r in range(sn, nb * 16):  # lanes past the last row (never pushed)
                G[r] = 0.0
                YS[r] = 0.0
                DN[r] = 1.0
            for qa in range(0, nq, QG):
                f0 = qf[qa]
                f1 = qf[min(qa + 1, nq - 1)]
                f2 = qf[min(qa + 2, nq - 1)]
                f3 = qf[min(qa + 3, nq - 1)]
                f4 = qf[min(qa + 4, nq - 1)]
                f5 = qf[min(qa + 5, nq - 1)]
                f6 = qf[min(qa + 6, nq - 1)]
                f7 = qf[min(qa + 7, nq - 1)]
                b = 0
                while b < nb:  # two blocks of 16 rows, QG independent sums each: 2 x QG
                    two = b + 1 < nb  # accumulators share each query's broadcast value
                    if has_avx512():  # 16 accumulators: 16 of its 32 registers
                        # a lone last block: its sums twice, kept once
                        _dot16(Y, b * dim, (b + 1) * dim if two else b * dim, dim, f0, f1, f2, f3, f4, f5, f6, f7,
                               lanes)
                    else:  # AVX2: 16 accumulators would be 32 of its 16 registers; four at a time
                        _dot4(Y, b * dim, dim, f0, f1, f2, f3, lanes, 0)
                        _dot4(Y, b * dim, dim, f4, f5, f6, f7, lanes, 4)
                        if two:
                            _dot4(Y, (b + 1) * dim, dim, f0, f1, f2, f3, lanes, QG)
                            _dot4(Y, (b + 1) * dim, dim, f4, f5, f6, f7, lanes, QG + 4)
                    _take_block(lanes, 0, b, sn, t0 + s0, qa, nq, qsq, cnt, worst, G, YS, DN, gain, n2, metric,
                                largest, k, full, top_s, top_i, t)
                    if two:
                        _take_block(lanes, QG, b + 1, sn, t0 + s0, qa, nq, qsq, cnt, worst, G, YS, DN, gain, n2,
                                    metric, largest, k, full, top_s, top_i, t)
                    b += 2
        if k > 0:
            for q in range(nq):
                _pad(top_s, top_i, t, q, cnt[q], k, largest)


@njit(**_opts)
def _dot16(Y, row, row2, dim, f0, f1, f2, f3, f4, f5, f6, f7, lanes):
    """lanes[0 .. 7] <- the 16 rows of Y from ``row``, lanes[8 .. 15] <- those from ``row2``,
    dotted with queries f0..f7: 16 accumulators (`scan_dense`'s AVX-512 grouping, 16 of its
    32 registers), a fused multiply-add per dimension in ascending order, each query's
    value broadcast once for both blocks (the same sums as `_dot4`)."""
    a0 = fsplat(0.0)
    a1 = fsplat(0.0)
    a2 = fsplat(0.0)
    a3 = fsplat(0.0)
    a4 = fsplat(0.0)
    a5 = fsplat(0.0)
    a6 = fsplat(0.0)
    a7 = fsplat(0.0)
    c0 = fsplat(0.0)
    c1 = fsplat(0.0)
    c2 = fsplat(0.0)
    c3 = fsplat(0.0)
    c4 = fsplat(0.0)
    c5 = fsplat(0.0)
    c6 = fsplat(0.0)
    c7 = fsplat(0.0)
    for d in range(dim):
        y = vload(Y, row + d)
        z = vload(Y, row2 + d)
        e = fsplat(f0[d])
        a0 = vfma(y, e, a0)
        c0 = vfma(z, e, c0)
        e = fsplat(f1[d])
        a1 = vfma(y, e, a1)
        c1 = vfma(z, e, c1)
        e = fsplat(f2[d])
        a2 = vfma(y, e, a2)
        c2 = vfma(z, e, c2)
        e = fsplat(f3[d])
        a3 = vfma(y, e, a3)
        c3 = vfma(z, e, c3)
        e = fsplat(f4[d])
        a4 = vfma(y, e, a4)
        c4 = vfma(z, e, c4)
        e = fsplat(f5[d])
        a5 = vfma(y, e, a5)
        c5 = vfma(z, e, c5)
        e = fsplat(f6[d])
        a6 = vfma(y, e, a6)
        c6 = vfma(z, e, c6)
        e = fsplat(f7[d])
        a7 = vfma(y, e, a7)
        c7 = vfma(z, e, c7)
    vstore(lanes, 0, a0)
    vstore(lanes, 1, a1)
    vstore(lanes, 2, a2)
    vstore(lanes, 3, a3)
    vstore(lanes, 4, a4)
    vstore(lanes, 5, a5)
    vstore(lanes, 6, a6)
    vstore(lanes, 7, a7)
    vstore(lanes, 8, c0)
    vstore(lanes, 9, c1)
    vstore(lanes, 10, c2)
    vstore(lanes, 11, c3)
    vstore(lanes, 12, c4)
    vstore(lanes, 13, c5)
    vstore(lanes, 14, c6)
    vstore(lanes, 15, c7)


@njit(**_opts)
def _dot4(Y, row, dim, f0, f1, f2, f3, lanes, at):
    """lanes[at .. at + 3] <- the 16 rows of Y from ``row`` dotted with queries f0..f3: per
    query one accumulator, a fused multiply-add per dimension in ascending order (the
    same sums as the eight-query loop of `dense_scan` with AVX-512)."""
    a0 = fsplat(0.0)
    a1 = fsplat(0.0)
    a2 = fsplat(0.0)
    a3 = fsplat(0.0)
    for d in range(dim):
        y = vload(Y, row + d)
        a0 = vfma(y, fsplat(f0[d]), a0)
        a1 = vfma(y, fsplat(f1[d]), a1)
        a2 = vfma(y, fsplat(f2[d]), a2)
        a3 = vfma(y, fsplat(f3[d]), a3)
    vstore(lanes, at, a0)
    vstore(lanes, at + 1, a1)
    vstore(lanes, at + 2, a2)
    vstore(lanes, at + 3, a3)


@njit(parallel=True, **_opts)
def hamming_scan(words, qwords, task_rows, k, top_s, top_i):
    """The first pass of a Hamming search: for each query (qwords (Q, W) int64, its codes
    packed as the rows' are) the k rows of ``words`` (N, W) with the fewest differing
    bits, popcount(q XOR row) summed over the words, per task of ``task_rows`` rows:
    top_s (ntask, Q, k) float32 holds minus the distance (best first, ties in index
    order), top_i (ntask, Q, k) the rows, padded with -inf / -1 past a task's rows.

    Four queries share each row's loads. A distance is an integer from 0 to 64 W, so
    each query's best k of a task come by counting, not by insertion: a histogram of
    the task's distances, its running sum (the first place of each distance in the
    order by distance, then index), and one pass in index order that writes each row
    whose place is under k. The time does not grow with k."""
    n, nw = words.shape
    nq = qwords.shape[0]
    ntask = (n + task_rows - 1) // task_rows
    nd = 64 * nw + 1
    for t in prange(ntask):
        t0 = t * task_rows
        tn = min(task_rows, n - t0)
        dist = np.empty((4, tn), np.int32)
        place = np.empty(nd, np.int64)
        keep = min(k, tn)
        for qa in range(0, nq, 4):
            q0, q1, q2, q3 = qa, min(qa + 1, nq - 1), min(qa + 2, nq - 1), min(qa + 3, nq - 1)
            for r in range(tn):
                i = t0 + r
                d0 = d1 = d2 = d3 = 0
                for w in range(nw):
                    x = words[i, w]
                    d0 += popcount64(qwords[q0, w] ^ x)
                    d1 += popcount64(qwords[q1, w] ^ x)
                    d2 += popcount64(qwords[q2, w] ^ x)
                    d3 += popcount64(qwords[q3, w] ^ x)
                dist[0, r] = d0
                dist[1, r] = d1
                dist[2, r] = d2
                dist[3, r] = d3
            for j in range(min(4, nq - qa)):
                q = qa + j
                place[:] = 0
                for r in range(tn):
                    place[dist[j, r]] += 1
                at = 0
                for d in range(nd):  # counts -> the first place of each distance
                    c = place[d]
                    place[d] = at
                    at += c
                for r in range(tn):
                    d = dist[j, r]
                    at = place[d]
                    if at < keep:
                        top_s[t, q, at] = np.float32(-d)
                        top_i[t, q, at] = t0 + r
                    place[d] = at + 1
                _pad(top_s, top_i, t, q, keep, k, True)
