"""Top-k asymmetric scoring of 1-, 2- and 4-bit codes by 4-bit table lookups on byte
lanes, with the answer of the multiply-add kernel (`score_cpu.scan_dense`), bit for bit.

`scan_dense` spends D float32 multiply-adds on every (query, row) pair. Here a first
pass bounds each pair's score from integers instead, and only the rows whose bound
can reach a query's top k are scored the exact way:

- **Tables.** A row's packed symbols are read a nibble at a time (4 symbols of 1 bit,
  2 of 2, 1 of 4). For each nibble position p a query has a 16-entry table
  ``T_p[key] = sum over the nibble's symbols of q_d * level(d, symbol)`` (float64 of
  the float32 query and levels `scan_dense` multiplies), stored as bytes:
  ``T_p[key] = m_p + delta * U_p[key] + e_p[key]``, U in [0, 255], one ``delta`` per
  query. ``sum_p T_p`` is the row's exact dot product ``t``, so
  ``t = C + delta * A + err`` with ``C = sum_p m_p``, ``A = sum_p U_p[key_p]`` (an
  integer) and ``|err| <= E = sum_p max_key |e_p[key]|``.
- **First pass.** Codes are transposed to 32 rows per vector, a byte position at a
  time; one ``vpshufb`` looks up 32 rows' low nibbles, one their high nibbles, and the
  bytes add up in 16-bit lanes (flushed to 32-bit every 128 bytes), two queries per
  load: A for 32 rows in about 15 vector instructions per byte position, where
  `scan_dense` spends 256 multiply-adds on 8 dimensions of 32 rows.
- **The bound.** `scan_dense`'s float32 chain of D fused multiply-adds is within
  ``gamma_D * sum_d |q_d * level_d|`` of t (``gamma_D = D u / (1 - D u)``, u = 2**-24),
  so its sum f lies in ``[C + delta * A - h, C + delta * A + h]`` with
  ``h = E + gamma_D * M`` plus a margin for float64 rounding
  (``M = sum_d |q_d| * max |level_d|``). A score is `score_cpu._finish` of f: monotone in
  f (each float operation is), so the finish at the two ends bounds it.
- **Pruning.** Per query and task, a heap keeps the k largest lower bounds seen; a
  row whose upper bound is below the k-th of them has k rows certainly better and is
  dropped. The tasks also share their k-th lower bounds per query (`_tau`), so later
  tasks start from a tight threshold. A float32 vector test (an upper bound for 16
  rows, with a relative margin of 1e-5 of every term, far above float32's rounding of
  the test) lets almost every row go without a scalar step. The rows that may still be in the top k are then scored exactly as
  `scan_dense` scores them (their levels decoded, one float32 fused multiply-add per
  dimension in ascending order, `_finish`) and pushed in index order into the same
  top-k buffer, ties to the lower index: the same k rows and the same scores.

Larger ``delta`` (wider query tables) only makes the bounds looser, never wrong: how
many rows are scored again is in ``rescored`` (bench/score.py reports it).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .bytevec import bload, bshuf, bstore_low, has_pshufb, nib_hi, nib_lo, w_even, w_odd, wadd, wwiden, wzero
from .cpu import fsplat, isplat, vadd, vany, vfma, vge, vget, vitof, vload, vmul, vor, vshr, vstore
from .score_cpu import _decode_levels, _finish, _pad, _push

_opts = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)

SUB_ROWS = 1024  # rows transposed at a time (their bytes stay in L1/L2 while every query scans them)
FLUSH = 128  # byte positions summed in 16-bit lanes before widening: 2 * 128 * 255 < 2**16
REL = 1e-5  # the vector test's relative margin (it sums in float32: rounding ~1e-7 of the terms)
REL_END = 1e-9  # the ends' margin for the rounding of C + delta * A and of the tables
KAPPA = REL_END + REL * (1.0 + REL_END)
U32 = 2.0 ** -24  # float32's unit roundoff


@njit(**_opts)
def _down32(x):
    """The largest float32 <= x (-inf stays -inf)."""
    y = np.float32(x)
    if np.float64(y) > x:
        y = np.nextafter(y, np.float32(-np.inf))
    return y


@njit(parallel=True, **_opts)
def tables(qf, lv, bits, dim, luts, cc, delta, hw):
    """Each query's byte tables and bounds (module docstring): luts[q] per byte position j
    the low nibble's 16 entries twice, then the high nibble's twice; cc = C, delta, hw = h
    (E, plus gamma_D M and 1e-9 M for float64's rounding of the tables). qf (Q, D) float32,
    lv (D, 16) float32 levels (symbols past 2**bits unused)."""
    nq = qf.shape[0]
    nbytes = luts.shape[1] // 64
    nnib = 2 * nbytes
    spn = 4 // bits
    mask = (1 << bits) - 1
    nlev = 1 << bits
    gamma = dim * U32 / (1.0 - dim * U32)
    for q in prange(nq):
        T = np.zeros((nnib, 16), np.float64)
        for p in range(nnib):
            for key in range(16):
                acc = 0.0
                for j in range(spn):
                    d = p * spn + j
                    if d < dim:  # float32 x float32: exact in float64
                        acc += np.float64(qf[q, d]) * np.float64(lv[d, (key >> (j * bits)) & mask])
                T[p, key] = acc
        lo = np.empty(nnib, np.float64)
        span = 0.0
        for p in range(nnib):
            a = T[p, 0]
            b = T[p, 0]
            for key in range(1, 16):
                a = min(a, T[p, key])
                b = max(b, T[p, key])
            lo[p] = a
            span = max(span, b - a)
        dq = span / 255.0
        if not dq > 0.0:  # every table flat: any step
            dq = 1.0
        err = 0.0
        c = 0.0
        for p in range(nnib):
            e = 0.0
            base = (p // 2) * 64 + (p % 2) * 32
            for key in range(16):
                u = min(max(np.rint((T[p, key] - lo[p]) / dq), 0.0), 255.0)
                e = max(e, abs(T[p, key] - lo[p] - u * dq))
                luts[q, base + key] = np.uint8(u)
                luts[q, base + 16 + key] = np.uint8(u)
            err += e
            c += lo[p]
        mag = 0.0
        for d in range(dim):
            m = 0.0
            for s in range(nlev):
                m = max(m, abs(np.float64(lv[d, s])))
            mag += abs(np.float64(qf[q, d])) * m
        cc[q] = c
        delta[q] = dq
        hw[q] = err + (gamma + 1e-9) * mag + 1e-300


@njit(**_opts)
def _transpose(words, r0, nr, nbytes, TB, W):
    """TB[(b * nbytes + j) * 32 + r] = byte j of row r0 + 32 b + r (zero past nr): 16 rows
    at a time, each word of theirs in the 16 int64 lanes of a vector (W: scratch of
    words.shape[1] x 16 int64), each of its 8 bytes stored as 16 bytes at once."""
    nw = words.shape[1]
    nblk = (nr + 31) // 32
    for b in range(nblk):
        for half in range(2):
            h0 = b * 32 + half * 16
            for r in range(16):
                rr = h0 + r
                if rr < nr:
                    row = words[r0 + rr]
                    for w in range(nw):
                        W[w * 16 + r] = row[w]
                else:
                    for w in range(nw):
                        W[w * 16 + r] = 0
            base = b * nbytes * 32 + half * 16
            for w in range(nw):
                x = vload(W, w)
                for e in range(8):
                    j = w * 8 + e
                    if j < nbytes:
                        bstore_low(TB, base + j * 32, vshr(x, 8 * e))


@njit(**_opts)
def _heap_push(h, hc, k, val):
    """A min-heap of the k largest values seen (h[0] the smallest of them); returns the count."""
    if hc < k:
        j = hc
        h[j] = val
        while j > 0:
            p = (j - 1) // 2
            if h[p] <= h[j]:
                break
            h[p], h[j] = h[j], h[p]
            j = p
        return hc + 1
    if not val > h[0]:
        return hc
    h[0] = val
    j = 0
    while True:
        a = 2 * j + 1
        if a >= k:
            break
        b = a + 1
        c = b if b < k and h[b] < h[a] else a
        if h[j] <= h[c]:
            break
        h[j], h[c] = h[c], h[j]
        j = c
    return hc


@njit(**_opts)
def _rescore(words, bits, dim, lv, gain, n2, qv, qq, metric, largest, rows, nc, k, top_s, top_i, t, q, cnt,
             Y, S, W, tmpw, junk, lanes):
    """Score rows[:nc] (ascending) exactly as `scan_dense` does and push them into task
    t's top k for query q; returns the new count."""
    nw = words.shape[1]
    for c0 in range(0, nc, 16):
        rn = min(16, nc - c0)
        for r in range(rn):
            src = words[rows[c0 + r]]
            for w in range(nw):
                tmpw[r, w] = src[w]
        _decode_levels(tmpw, 0, rn, bits, dim, lv, Y, S, W, junk)
        a = fsplat(0.0)
        for d in range(dim):
            a = vfma(vload(Y, d), fsplat(qv[d]), a)
        vstore(lanes, 0, a)
        for r in range(rn):
            i = rows[c0 + r]
            sc = _finish(np.float64(lanes[r]), gain[i], n2[i], qq, metric)
            cnt = _push(top_s, top_i, t, q, cnt, k, sc, i, largest)
    return cnt


@njit(**_opts)
def _compact(rows, his, nc, tau):
    """Keep the candidates whose upper bound reaches tau (in order); returns their count."""
    m = 0
    for c in range(nc):
        if his[c] >= tau:
            rows[m] = rows[c]
            his[m] = his[c]
            m += 1
    return m


@njit(**_opts)
def _tau(heap, hc, k, q, shared):
    """Query q's threshold: the larger of its task's k-th lower bound (once k rows are
    in the heap) and the largest any task has published; publishes its own if larger.
    Either has k rows certainly at least as good behind it, whichever task they are
    in, so either may prune any row. Tasks on other threads read and write ``shared``
    without locks: a stale or overwritten value is still some task's bound, so it only
    prunes less; the answer never depends on it."""
    own = heap[q, 0] if hc[q] == k else -np.inf
    s = shared[q]
    if own > s:
        shared[q] = own
        return own
    return s


@njit(**_opts)
def _maybe(A, dq, U, AL, AA, BE, row, k1, k2, k4, k3, tau):
    """Mask of the 16 lanes (float32 lanes ``row`` of the per-row arrays) whose score may
    reach tau: ``dq U A + AL k1 + AA k2 + BE k4 + k3 >= tau``, an upper bound of
    sgn * score whose margins (REL of every term's size) exceed float32's rounding of it
    (`scan_fast` derives it)."""
    up = vfma(vmul(fsplat(dq), vload(U, row)), vitof(A), vfma(vload(AL, row), fsplat(k1), fsplat(k3)))
    up = vfma(vload(AA, row), fsplat(k2), up)
    up = vfma(vload(BE, row), fsplat(k4), up)
    return vge(up, fsplat(tau))


@njit(**_opts)
def _sums2(TB, base, nbytes, la, lb):
    """The integer sums A of 32 transposed rows (block at TB[base:]) for two queries'
    tables la, lb: (even rows a, odd rows a, even rows b, odd rows b), int32 lanes.
    Each byte is loaded and split into nibbles once for both queries."""
    ea = isplat(0)
    oa = isplat(0)
    eb = isplat(0)
    ob = isplat(0)
    j = 0
    while j < nbytes:
        je = min(nbytes, j + FLUSH)
        wea = wzero()
        woa = wzero()
        web = wzero()
        wob = wzero()
        for jj in range(j, je):
            x = bload(TB, base + jj * 32)
            lo = nib_lo(x)
            hi = nib_hi(x)
            r1 = bshuf(bload(la, jj * 64), lo)
            r2 = bshuf(bload(la, jj * 64 + 32), hi)
            wea = wadd(wea, wadd(w_even(r1), w_even(r2)))
            woa = wadd(woa, wadd(w_odd(r1), w_odd(r2)))
            r1 = bshuf(bload(lb, jj * 64), lo)
            r2 = bshuf(bload(lb, jj * 64 + 32), hi)
            web = wadd(web, wadd(w_even(r1), w_even(r2)))
            wob = wadd(wob, wadd(w_odd(r1), w_odd(r2)))
        ea = vadd(ea, wwiden(wea))
        oa = vadd(oa, wwiden(woa))
        eb = vadd(eb, wwiden(web))
        ob = vadd(ob, wwiden(wob))
        j = je
    return ea, oa, eb, ob


@njit(**_opts)
def _sums1(TB, base, nbytes, la):
    """`_sums2` for one query: (even rows, odd rows)."""
    ea = isplat(0)
    oa = isplat(0)
    j = 0
    while j < nbytes:
        je = min(nbytes, j + FLUSH)
        wea = wzero()
        woa = wzero()
        for jj in range(j, je):
            x = bload(TB, base + jj * 32)
            r1 = bshuf(bload(la, jj * 64), nib_lo(x))
            r2 = bshuf(bload(la, jj * 64 + 32), nib_hi(x))
            wea = wadd(wea, wadd(w_even(r1), w_even(r2)))
            woa = wadd(woa, wadd(w_odd(r1), w_odd(r2)))
        ea = vadd(ea, wwiden(wea))
        oa = vadd(oa, wwiden(woa))
        j = je
    return ea, oa


@njit(**_opts)
def _take(q, ie, io, me, mo, b, r0, sn, shared, cc, delta, hw, words, bits, dim, lv, gain, n2, qf, qsq, metric,
          largest, k, cap, heap, hc, rows, his, nc, cnt, top_s, top_i, t, Y, S, W, tmpw, junk, lanes):
    """Query q's rows of block b (32 rows from r0 + 32 b; sn rows in the sub-block) that
    passed the vector test (masks me, mo of the even and odd rows): those whose exact
    bounds may reach its top k become candidates (their lower bounds enter the heap);
    returns the rows scored exactly meanwhile (when the candidates fill up)."""
    tau = _tau(heap, hc, k, q, shared)
    nres = 0
    cq, dq, hq, qq = cc[q], delta[q], hw[q], qsq[q]
    for rb in range(min(32, sn - b * 32)):  # in row order: ties keep the lower index
        lane = rb // 2
        if rb % 2 == 0:
            if vget(me, lane) == 0:
                continue
            av = np.float64(vget(ie, lane))
        else:
            if vget(mo, lane) == 0:
                continue
            av = np.float64(vget(io, lane))
        i = r0 + b * 32 + rb
        fc = cq + dq * av
        h = hq + REL_END * (abs(cq) + hq + dq * av)
        s1 = np.float64(_finish(fc - h, gain[i], n2[i], qq, metric))
        s2 = np.float64(_finish(fc + h, gain[i], n2[i], qq, metric))
        if largest:
            lo, up = min(s1, s2), max(s1, s2)
        else:
            lo, up = -max(s1, s2), -min(s1, s2)
        if not up >= tau:
            continue
        m = nc[q]
        if m == cap:
            m = _compact(rows[q], his[q], m, tau)
            if 2 * m >= cap:  # most may still count: score them now
                cnt[q] = _rescore(words, bits, dim, lv, gain, n2, qf[q], qq, metric, largest, rows[q], m, k, top_s,
                                  top_i, t, q, cnt[q], Y, S, W, tmpw, junk, lanes)
                nres += m
                m = 0
        rows[q, m] = i
        his[q, m] = up
        nc[q] = m + 1
        hc[q] = _heap_push(heap[q], hc[q], k, lo)
        if hc[q] == k:
            tau = _tau(heap, hc, k, q, shared)
    return nres


@njit(parallel=True, **_opts)
def scan_fast(words, bits, dim, nbytes, lv, gain, n2, qf, qsq, luts, cc, delta, hw, metric, largest, task_rows, k,
              cap, top_s, top_i, rescored):
    """Each task's best k rows per query, as `score_cpu.scan_dense` finds them (k > 0).

    luts (Q, nbytes * 64) uint8: per byte position j, the low nibble's 16 entries twice
    then the high nibble's twice; cc, delta, hw (Q,) float64: C, delta and h of the
    module docstring. lv (D, 16) float32 levels and qf (Q, D) float32 queries as
    `scan_dense` takes them. cap: candidates held per query before they are pruned
    (or, if most still may count, scored). rescored (tasks,) int64: rows scored exactly.

    The vector test, per row with factors al, be (the score is ``al * f + be``, f the
    row's sum of products, ``be = ||y||^2`` for l2) and sgn = +1 (largest first) or -1:
    ``sgn * score <= dq U A + al k1 + |al| k2 + be k4 + k3`` with
    ``U = sgn al + KAPPA |al|``, ``k1 = sgn C``, ``k2 = h' (1 + REL) + REL |C|``,
    ``k4 = sgn + REL``, ``k3 = ||q||^2 (sgn + REL) + 1e-30`` (l2; else 1e-30) and
    ``h' = h + REL_END (|C| + h)``: the bound ``sgn (al f + be) + |al| h`` at the largest
    f, plus REL of every term's size."""
    n, nw = words.shape
    nq = qf.shape[0]
    ntask = (n + task_rows - 1) // task_rows
    sgn = 1.0 if largest else -1.0
    shared = np.full(nq, -np.inf)  # per query, the best k-th lower bound any task has had
    kc = np.empty((nq, 5), np.float32)  # k1, k2, k4, k3, delta
    for q in range(nq):
        hp = hw[q] + REL_END * (abs(cc[q]) + hw[q])
        kc[q, 0] = sgn * cc[q]
        kc[q, 1] = hp * (1.0 + REL) + REL * abs(cc[q])
        kc[q, 2] = sgn + REL
        kc[q, 3] = (qsq[q] * (sgn + REL) if metric == 2 else 0.0) + 1e-30
        kc[q, 4] = delta[q]
    for t in prange(ntask):
        t0 = t * task_rows
        tn = min(task_rows, n - t0)
        TB = np.empty((SUB_ROWS // 32) * nbytes * 32, np.uint8)
        # per row, in lane order (float32): al, |al|, be and U (the docstring's)
        AL = np.zeros(SUB_ROWS, np.float32)
        AA = np.zeros(SUB_ROWS, np.float32)
        BE = np.zeros(SUB_ROWS, np.float32)
        U = np.zeros(SUB_ROWS, np.float32)
        heap = np.empty((nq, max(k, 1)), np.float64)
        hc = np.zeros(nq, np.int64)
        rows = np.empty((nq, cap), np.int64)
        his = np.empty((nq, cap), np.float64)
        nc = np.zeros(nq, np.int64)
        cnt = np.zeros(nq, np.int64)
        Y = np.empty(dim * 16, np.float32)
        S = np.empty(dim * 16, np.int32)
        W = np.empty(nw * 16, np.int64)
        tmpw = np.empty((16, nw), np.int64)
        junk = np.empty(16, np.uint8)
        lanes = np.empty(16, np.float32)
        nres = 0
        for s0 in range(0, tn, SUB_ROWS):
            sn = min(SUB_ROWS, tn - s0)
            r0 = t0 + s0
            nblk = (sn + 31) // 32
            _transpose(words, r0, sn, nbytes, TB, W)
            for p in range(nblk * 32):  # lane p of block b: row 2p' (p' = p mod 32 < 16) or 2(p' - 16) + 1
                b, pp = p // 32, p % 32
                rr = b * 32 + (2 * pp if pp < 16 else 2 * (pp - 16) + 1)
                a = 0.0
                c = 0.0
                if rr < sn:
                    i = r0 + rr
                    g = gain[i]
                    ysq = g * g * n2[i]
                    if metric == 0:
                        a = g
                    elif metric == 1:
                        a = g / max(np.sqrt(ysq), 1e-30)
                    else:
                        a = -2.0 * g
                        c = ysq
                AL[p] = a
                AA[p] = abs(a)
                BE[p] = c
                U[p] = sgn * a + KAPPA * abs(a)
            for qa in range(0, nq, 2):  # two queries per pass over the sub-block
                qb = min(qa + 1, nq - 1)
                k1a, k2a, k4a, k3a, dqa = kc[qa, 0], kc[qa, 1], kc[qa, 2], kc[qa, 3], kc[qa, 4]
                k1b, k2b, k4b, k3b, dqb = kc[qb, 0], kc[qb, 1], kc[qb, 2], kc[qb, 3], kc[qb, 4]
                ta = _down32(_tau(heap, hc, k, qa, shared))
                tb = _down32(_tau(heap, hc, k, qb, shared))
                for b in range(nblk):
                    if qb != qa:
                        ea, oa, eb, ob = _sums2(TB, b * nbytes * 32, nbytes, luts[qa], luts[qb])
                    else:  # the last of an odd count
                        ea, oa = _sums1(TB, b * nbytes * 32, nbytes, luts[qa])
                        eb, ob = ea, oa
                    me = _maybe(ea, dqa, U, AL, AA, BE, 2 * b, k1a, k2a, k4a, k3a, ta)
                    mo = _maybe(oa, dqa, U, AL, AA, BE, 2 * b + 1, k1a, k2a, k4a, k3a, ta)
                    if vany(vor(me, mo)):
                        nres += _take(qa, ea, oa, me, mo, b, r0, sn, shared, cc, delta, hw, words, bits, dim, lv, gain, n2, qf,
                                      qsq, metric, largest, k, cap, heap, hc, rows, his, nc, cnt, top_s, top_i, t, Y,
                                      S, W, tmpw, junk, lanes)
                        ta = _down32(_tau(heap, hc, k, qa, shared))
                    if qb == qa:
                        continue
                    me = _maybe(eb, dqb, U, AL, AA, BE, 2 * b, k1b, k2b, k4b, k3b, tb)
                    mo = _maybe(ob, dqb, U, AL, AA, BE, 2 * b + 1, k1b, k2b, k4b, k3b, tb)
                    if vany(vor(me, mo)):
                        nres += _take(qb, eb, ob, me, mo, b, r0, sn, shared, cc, delta, hw, words, bits, dim, lv, gain, n2, qf,
                                      qsq, metric, largest, k, cap, heap, hc, rows, his, nc, cnt, top_s, top_i, t, Y,
                                      S, W, tmpw, junk, lanes)
                        tb = _down32(_tau(heap, hc, k, qb, shared))
        for q in range(nq):
            tau = _tau(heap, hc, k, q, shared)
            m = _compact(rows[q], his[q], nc[q], tau)
            cnt[q] = _rescore(words, bits, dim, lv, gain, n2, qf[q], qsq[q], metric, largest, rows[q], m, k,
                              top_s, top_i, t, q, cnt[q], Y, S, W, tmpw, junk, lanes)
            nres += m
            _pad(top_s, top_i, t, q, cnt[q], k, largest)
        rescored[t] = nres


@njit(**_opts)
def pshufb_available():
    """Whether these kernels were compiled with a one-instruction byte shuffle (AVX2)."""
    return has_pshufb()
