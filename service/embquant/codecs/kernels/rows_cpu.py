"""Scalar helpers of the per-row kernels (`transform_cpu`)."""

from __future__ import annotations

from numba import njit

_opts = dict(cache=True, nogil=True, error_model="numpy", boundscheck=False)


@njit(**_opts)
def padding_ok(codes, i, d, bits):
    """Whether every word of row i (d symbols of `bits`) has its unused bits zero."""
    v = 64 // bits
    for w in range(codes.shape[1]):
        k = min(v, d - w * v) * bits
        if k < 64 and (codes[i, w] >> k) != 0:
            return False
    return True
