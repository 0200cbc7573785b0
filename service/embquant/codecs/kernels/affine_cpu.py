"""Compiled CPU kernels of `affine` (numba): q = round(a*x + b) per block, in one pass per row.

`codecs.affine` is the reference: float64 block statistics (min, max, largest
magnitude), the step rounded up to float32 (or a power-of-two scale from frexp), the
zero point b = floor(-a * (x0 + x1) / 2), y = x * a + b, then round(y + 1) - 1 (halves
to even) or floor(y + u) with u from the counter-based row hash, clamped, shifted to
unsigned and packed. The kernel repeats those operations one row at a time in the same
order and precision (every operation is a single IEEE operation on float64 or a 32-bit
integer hash step, so the bits are the reference's), packing symbols straight into
words; decode checks the side values as the reference does, then (q - b) * step in
float64, clamped to float32's range. Rows are independent: a task of rows per thread.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .cpu import BAD_PADDING, NOT_FINITE, OK
from .rows_cpu import finite_row, flush, padding_ok, push

_opts = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)

TASK_ROWS = 256
_F32_MAX = float(np.finfo(np.float32).max)
_F32_TINY = float(np.finfo(np.float32).tiny)
_E_MIN, _E_MAX = -127, 126
_M32 = np.uint64(0xFFFFFFFF)


@njit(**_opts)
def _mix32(h):
    """MurmurHash3's finaliser (affine._mix32) on a value < 2**32, in uint64 with every
    product and sum taken mod 2**32 (numba widens integer arithmetic to 64 bits)."""
    h = h ^ (h >> 16)
    h = (h * np.uint64(0x85EBCA6B)) & _M32
    h = h ^ (h >> 13)
    h = (h * np.uint64(0xC2B2AE35)) & _M32
    return h ^ (h >> 16)


@njit(**_opts)
def _row_key(xbits_row, d, padded, seed):
    """affine.row_uniforms' key of one row: the hash of its float32 bits over the padded
    length (the last value repeated), salted per index, then mixed with the seed."""
    acc = np.uint64(0)
    for j in range(padded):
        b = np.uint64(xbits_row[min(j, d - 1)]) & _M32
        salt = _mix32((np.uint64(j) * np.uint64(0x9E3779B9)) & _M32)
        acc = (acc + _mix32(b ^ salt)) & _M32  # the int64 sum, mod 2**32
    row = _mix32(acc)
    return _mix32(row ^ _mix32(np.uint64(seed) & _M32))


@njit(**_opts)
def _uniform(key, j):
    h = _mix32((key + ((np.uint64(j + 1) * np.uint64(0x9E3779B9)) & _M32)) & _M32)
    h = _mix32(h ^ key)
    return np.float64(h >> 8) * (1.0 / (1 << 24))


@njit(parallel=True, **_opts)
def encode(x, xbits, g, bits, p2, symmetric, stochastic, seed, codes, side, status):
    """x (N, D) float32 (rotated already), xbits its int32 view; g: block size; codes
    (N, W) int64 and side (N, S * G) float32 written (steps or exponents, then the
    zero points unless symmetric); status NOT_FINITE for a row holding NaN or Inf."""
    n, d = x.shape
    ng = (d + g - 1) // g
    qmin = -(1 << (bits - 1))
    qmax = (1 << (bits - 1)) - 1
    steps = (1 << bits) - (2 if stochastic else 1)
    span_floor = 2.0 ** (bits - 23)
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        up = np.empty(1, np.float32)  # float32 bits, to step to the next float up
        upbits = up.view(np.int32)
        for i in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS)):
            ok = finite_row(x, i)
            status[i] = OK if ok else NOT_FINITE
            if not ok:
                continue
            key = _row_key(xbits[i], d, ng * g, seed) if stochastic else np.uint64(0)
            word, sh, w = np.int64(0), 0, 0  # the word being filled, its next bit, its index
            for gi in range(ng):
                lo = gi * g
                hi = min(d, lo + g)
                x0 = np.float64(x[i, lo])
                x1 = x0
                amax = abs(x0)
                for j in range(lo + 1, hi):
                    t = np.float64(x[i, j])
                    x0 = min(x0, t)
                    x1 = max(x1, t)
                    amax = max(amax, abs(t))
                if symmetric:
                    x1 = amax
                    x0 = -amax
                span = max(x1 - x0, amax * span_floor)
                live = span > 0
                if p2:
                    a_ideal = steps / span if live else 1.0
                    _m, k = math.frexp(a_ideal)
                    e = min(max(k - 1, _E_MIN), _E_MAX)
                    a = math.ldexp(1.0, e)
                    side[i, gi] = np.float32(e)
                else:
                    step64 = span / steps if live else 1.0
                    step = np.float32(step64)
                    if np.float64(step) < step64:  # nextafter(step, +inf): step is positive and finite
                        up[0] = step
                        upbits[0] += 1
                        step = up[0]
                    step = min(max(step, np.float32(_F32_TINY)), np.float32(_F32_MAX))
                    a = 1.0 / np.float64(step)
                    side[i, gi] = step
                b = 0.0 if symmetric else math.floor(-a * (x0 + x1) / 2)
                if not symmetric:
                    side[i, ng + gi] = np.float32(b)
                for j in range(lo, hi):
                    y = np.float64(x[i, j]) * a + b
                    if stochastic:
                        q = math.floor(y + _uniform(key, j))
                    else:
                        q = np.rint(y + 1) - 1
                    q = min(max(q, qmin), qmax)
                    word, sh, w = push(codes, i, word, sh, w, np.int64(q) - qmin, bits)
            flush(codes, i, word, sh, w)


@njit(parallel=True, **_opts)
def decode(codes, side, d, g, bits, p2, symmetric, out, status):
    """codes (N, W) int64, side (N, S * G) float32 (already checked: exponents integer and
    in range, steps positive, zero points integer); out (N, D) float32 and status
    (N,) uint8 (BAD_PADDING: a word's unused bits are set) written."""
    n = codes.shape[0]
    ng = (d + g - 1) // g
    mask = (np.int64(1) << bits) - 1
    qmin = -(1 << (bits - 1))
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        for i in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS)):
            status[i] = OK if padding_ok(codes, i, d, bits) else BAD_PADDING
            w = 0
            sh = 0
            for gi in range(ng):
                s = np.float64(side[i, gi])
                step = math.ldexp(1.0, -int(s)) if p2 else s
                b = 0.0 if symmetric else np.float64(side[i, ng + gi])
                for j in range(gi * g, min(d, gi * g + g)):
                    q = np.float64((codes[i, w] >> sh) & mask) + qmin
                    sh += bits
                    if sh + bits > 64:
                        w += 1
                        sh = 0
                    y = (q - b) * step
                    y = min(max(y, -_F32_MAX), _F32_MAX)
                    out[i, j] = np.float32(y)
