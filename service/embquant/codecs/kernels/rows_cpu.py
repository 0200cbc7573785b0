"""Scalar helpers of the per-row kernels (`transform_cpu`)."""

from __future__ import annotations

from numba import njit

_opts = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)


@njit(**_opts)
def count_le(th, lo, b, z):
    """How many of the 2**b - 1 sorted thresholds th[lo:] are <= z (`searchsorted(right=True)`;
    b <= 8): a binary search, each step adding h where th[lo + a + h - 1] <= z. The steps
    are an unrolled tuple: numba compiled the same search written as a `while h > 0`
    loop about 6x slower (measured here on 100,000 x 384)."""
    a = 0
    top = 1 << (b - 1)
    for h in (128, 64, 32, 16, 8, 4, 2, 1):
        if h <= top:
            a += h if th[lo + a + h - 1] <= z else 0
    return a


@njit(**_opts)
def padding_ok(codes, i, d, bits):
    """Whether every word of row i (d symbols of `bits`) has its unused bits zero."""
    v = 64 // bits
    for w in range(codes.shape[1]):
        k = min(v, d - w * v) * bits
        if k < 64 and (codes[i, w] >> k) != 0:
            return False
    return True
