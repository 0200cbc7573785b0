"""Compiled CPU kernels of `blockwise` (numba): per-block absmax over a level table, one pass per row.

`codecs.blockwise` is the reference: each block of `block_size` dimensions is divided
by its largest magnitude (1 for an all-zero block), each value's symbol is the count
of thresholds <= it (`torch.bucketize(right=True)`), and the absmax is the block's side
value; decode is level times absmax. Every step is one float32 operation as in the
reference (a max, a division, ordered compares, a multiply), so the bits are the
reference's. The count is a binary search (`rows_cpu.count_le`) over the thresholds
padded with +inf to 2**k - 1 entries: z = x / absmax has |z| <= 1 and is finite (NaN and Inf rows
are refused first), so the padding is never counted.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .cpu import BAD_PADDING, BAD_SYMBOL, NOT_FINITE, OK
from .rows_cpu import count_le, finite_row, flush, padding_ok, push

_opts = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)

TASK_ROWS = 256


@njit(parallel=True, **_opts)
def encode(x, bs, th, steps, bits, codes, side, status):
    """x (N, D) float32; bs: block size; th: sorted float32 thresholds padded with +inf
    to 2**steps - 1 entries; codes (N, W) int64, side (N, G) float32, status (N,) written."""
    n, d = x.shape
    ng = (d + bs - 1) // bs
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        for i in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS)):
            ok = finite_row(x, i)
            status[i] = OK if ok else NOT_FINITE
            if not ok:
                continue
            word, sh, w = np.int64(0), 0, 0  # the word being filled, its next bit, its index
            for gi in range(ng):
                lo = gi * bs
                hi = min(d, lo + bs)
                m = np.float32(0.0)
                for j in range(lo, hi):
                    m = max(m, abs(x[i, j]))
                side[i, gi] = m
                safe = m if m > 0 else np.float32(1.0)
                for j in range(lo, hi):
                    z = x[i, j] / safe
                    word, sh, w = push(codes, i, word, sh, w, count_le(th, 0, steps, z), bits)
            flush(codes, i, word, sh, w)


@njit(parallel=True, **_opts)
def decode(codes, side, d, bs, lv, bits, out, status):
    """codes (N, W) int64, side (N, G) float32; lv: the levels; out (N, D) float32 and
    status (N,) written (BAD_PADDING before BAD_SYMBOL before NOT_FINITE per row)."""
    n = codes.shape[0]
    mask = (np.int64(1) << bits) - 1
    nl = lv.shape[0]
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        for i in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS)):
            st = OK if padding_ok(codes, i, d, bits) else BAD_PADDING
            fin = True
            w = 0
            sh = 0
            gi = 0
            left = bs  # values left in block gi
            for j in range(d):
                s = (codes[i, w] >> sh) & mask
                sh += bits
                if sh + bits > 64:
                    w += 1
                    sh = 0
                if s >= nl:
                    if st == OK:
                        st = BAD_SYMBOL
                    s = 0
                y = lv[s] * side[i, gi]
                left -= 1
                if left == 0:
                    gi += 1
                    left = bs
                out[i, j] = y
                if not np.isfinite(y):
                    fin = False
            if st == OK and not fin:
                st = NOT_FINITE
            status[i] = st
