"""Compiled CPU kernels of `affine` (numba): q = round(a*x + b) per block.

`codecs.affine` is the reference: float64 block statistics (min, max, largest
magnitude), the step rounded up to float32 (or a power-of-two scale from frexp), the
zero point b = floor(-a * (x0 + x1) / 2), y = x * a + b, then round(y + 1) - 1 (halves
to even) or floor(y + u) with u from the counter-based row hash, clamped, shifted to
unsigned and packed. The encode runs 16 rows at a time in `cpu`'s transposed layout
(the rotation fused as there): every lane repeats those operations for its row in the
same order and precision, each a single IEEE float64 operation, an exponent read from
the float64's bits (frexp of a positive normal number), or a 32-bit hash step in int32
lanes (products wrap mod 2**32 as the reference's), so the codes and side values are
the reference's bit for bit. Decode (the side values checked first, as the reference
does, by `cpu_ops`) runs the same way: (q - b) * step in float64 lanes, clamped to
float32's range, then the fused inverse rotation.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .cpu import (
    TASK_ROWS, _finite_rows, _load_T, _pack_T, _store_T, _unpack_T, _unrotate_T, dsplat, fsplat, isplat, lsplat,
    vabs, vadd, vand, vbits, vbits64, vdiv, vdtoi, vfext, vfloor, vfrombits, vfrombits64, vfround, vget, vgt,
    vitod, vitof, vload, vmul, vnarrow, vrint, vsel, vshl, vshr, vstore, vsub, vwiden, vxor,
)

_opts = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)

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
def _mix32_v(h):
    """`_mix32` on 16 lanes of uint32 held in int32 (products wrap mod 2**32, shifts are
    logical)."""
    h = vxor(h, vshr(h, 16))
    h = vmul(h, isplat(0x85EBCA6B))
    h = vxor(h, vshr(h, 13))
    h = vmul(h, isplat(0xC2B2AE35))
    return vxor(h, vshr(h, 16))


@njit(**_opts)
def _row_keys_T(A, d, padded, seed):
    """`affine.row_uniforms`' key of each of the 16 rows of a transposed block A (D, 16)
    float32: the hash of its float32 bits over the padded length (the last value
    repeated), salted per index, then mixed with the seed."""
    acc = isplat(0)
    for j in range(padded):
        salt = _mix32((np.uint64(j) * np.uint64(0x9E3779B9)) & _M32)
        acc = vadd(acc, _mix32_v(vxor(vbits(vload(A, min(j, d - 1))), isplat(salt))))
    return _mix32_v(vxor(_mix32_v(acc), isplat(_mix32(np.uint64(seed) & _M32))))


@njit(**_opts)
def _uniform_v(key, j):
    """`affine.row_uniforms`' uniform of index j for 16 rows' keys (float64 lanes in [0, 1))."""
    h = _mix32_v(vadd(key, isplat((np.uint64(j + 1) * np.uint64(0x9E3779B9)) & _M32)))
    h = _mix32_v(vxor(h, key))
    return vmul(vitod(vshr(h, 8)), dsplat(1.0 / (1 << 24)))


@njit(parallel=True, **_opts)
def encode(x, xbits, rotate, signs, perm, blocks, scales, g, bits, p2, symmetric, stochastic, seed, codes, side,
           status, rb):
    """x (N, D) float32, xbits its int32 view (the rotation, when asked, is fused: the
    `cpu` tables); g: block size; codes (N, W) int64 and side (N, S * G) float32 written
    (steps or exponents, then the zero points unless symmetric); status NOT_FINITE for
    a row holding NaN or Inf. 16 rows at a time, transposed (`cpu`'s layout): each lane
    repeats the reference's float64 operations for its row, in its order."""
    n, d = x.shape
    ng = (d + g - 1) // g
    qmin = -(1 << (bits - 1))
    qmax = (1 << (bits - 1)) - 1
    steps = (1 << bits) - (2 if stochastic else 1)
    span_floor = 2.0 ** (bits - 23)
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        S = np.zeros(d * rb, np.int32)
        W = np.zeros(codes.shape[1] * rb, np.int64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _finite_rows(xbits, i0, nr, status)
            _load_T(x, i0, nr, A, rotate, signs, perm, blocks, scales, B, rb)
            key = _row_keys_T(A, d, ng * g, seed) if stochastic else isplat(0)
            for gi in range(ng):
                lo = gi * g
                hi = min(d, lo + g)
                x0 = vfext(vload(A, lo))
                x1 = x0
                amax = vabs(x0)
                for j in range(lo + 1, hi):
                    v = vfext(vload(A, j))
                    x0 = vsel(vgt(x0, v), v, x0)  # min(x0, v)
                    x1 = vsel(vgt(v, x1), v, x1)  # max(x1, v)
                    av = vabs(v)
                    amax = vsel(vgt(av, amax), av, amax)
                if symmetric:
                    x1 = amax
                    x0 = vmul(amax, dsplat(-1.0))  # -amax (-0.0 for 0, as the reference)
                span = vsub(x1, x0)
                fl = vmul(amax, dsplat(span_floor))
                span = vsel(vgt(fl, span), fl, span)
                live = vgt(span, dsplat(0.0))
                if p2:
                    # frexp's exponent of a positive normal float64 (a_ideal always is one)
                    a_ideal = vsel(live, vdiv(dsplat(steps), span), dsplat(1.0))
                    e = vsub(vnarrow(vand(vshr(vbits64(a_ideal), 52), lsplat(0x7FF))), isplat(1023))
                    e = vsel(vgt(isplat(_E_MIN), e), isplat(_E_MIN), e)
                    e = vsel(vgt(e, isplat(_E_MAX)), isplat(_E_MAX), e)
                    a = vfrombits64(vshl(vwiden(vadd(e, isplat(1023))), 52))  # ldexp(1.0, e)
                    sv = vitof(e)
                else:
                    step64 = vsel(live, vdiv(span, dsplat(steps)), dsplat(1.0))
                    step = vfround(step64)
                    step = vsel(vgt(step64, vfext(step)), vfrombits(vadd(vbits(step), isplat(1))), step)
                    step = vsel(vgt(fsplat(_F32_TINY), step), fsplat(_F32_TINY), step)
                    step = vsel(vgt(step, fsplat(_F32_MAX)), fsplat(_F32_MAX), step)
                    a = vdiv(dsplat(1.0), vfext(step))
                    sv = step
                for r in range(nr):
                    side[i0 + r, gi] = vget(sv, r)
                if symmetric:
                    b = dsplat(0.0)
                else:
                    # floor(-a * (x0 + x1) / 2), an integer (-0.0 for a zero block, as the reference)
                    b = vfloor(vdiv(vmul(vmul(a, dsplat(-1.0)), vadd(x0, x1)), dsplat(2.0)))
                    bs = vfround(b)
                    for r in range(nr):
                        side[i0 + r, ng + gi] = vget(bs, r)
                for j in range(lo, hi):
                    y = vadd(vmul(vfext(vload(A, j)), a), b)
                    if stochastic:
                        q = vfloor(vadd(y, _uniform_v(key, j)))
                    else:
                        q = vsub(vrint(vadd(y, dsplat(1.0))), dsplat(1.0))
                    q = vsel(vgt(dsplat(qmin), q), dsplat(qmin), q)
                    q = vsel(vgt(q, dsplat(qmax)), dsplat(qmax), q)
                    vstore(S, j, vsub(vdtoi(q), isplat(qmin)))
            _pack_T(S, d, i0, nr, bits, codes, W, rb)


@njit(parallel=True, **_opts)
def decode(codes, side, g, bits, p2, symmetric, rotate, signs, inv, blocks, scales, out, status, rb):
    """codes (N, W) int64, side (N, S * G) float32 (already checked: exponents integer and
    in range, steps positive, zero points integer); out (N, D) float32 and status
    (N,) uint8 (BAD_PADDING: a word's unused bits are set) written. 16 rows at a time:
    (q - b) * step in float64, clamped to float32's range, then the inverse rotation."""
    n = codes.shape[0]
    d = out.shape[1]
    ng = (d + g - 1) // g
    qmin = -(1 << (bits - 1))
    for task in prange((n + TASK_ROWS - 1) // TASK_ROWS):
        A = np.zeros(d * rb, np.float32)
        B = np.zeros(d * rb, np.float32)
        O = np.zeros((rb, d), np.float32)
        S = np.zeros(d * rb, np.int32)
        W = np.zeros(codes.shape[1] * rb, np.int64)
        ST = np.ones(rb, np.float64)
        BZ = np.zeros(rb, np.float64)
        for i0 in range(task * TASK_ROWS, min(n, (task + 1) * TASK_ROWS), rb):
            nr = min(rb, n - i0)
            _unpack_T(codes, i0, nr, bits, d, S, status, W, rb)
            for gi in range(ng):
                for r in range(nr):
                    s = np.float64(side[i0 + r, gi])
                    ST[r] = math.ldexp(1.0, -int(s)) if p2 else s
                    BZ[r] = 0.0 if symmetric else np.float64(side[i0 + r, ng + gi])
                step = vload(ST, 0)
                b = vload(BZ, 0)
                for j in range(gi * g, min(d, gi * g + g)):
                    y = vmul(vsub(vadd(vitod(vload(S, j)), dsplat(qmin)), b), step)
                    y = vsel(vgt(dsplat(-_F32_MAX), y), dsplat(-_F32_MAX), y)
                    y = vsel(vgt(y, dsplat(_F32_MAX)), dsplat(_F32_MAX), y)
                    vstore(A, j, vfround(y))
            R = A
            if rotate:
                R = _unrotate_T(A, B, signs, inv, blocks, scales, rb)
            _store_T(R, d, i0, nr, out, status, O, rb)
