"""Shared helpers for scalar (per-coordinate) codebook schemes.

Encoding by thresholds: a symbol is the number of decision thresholds at or below
the value (what ``torch.bucketize(..., right=True)`` returns). Comparisons are
exact, so the same float32 input gives the same symbol on every device, and a
value beyond the outermost threshold clips to the end level, never past it.

`bucketize` gives exactly that count; for large inputs and tables of 64 levels
or more (where it measured 3-4x faster than a binary search on CPU) it uses a
grid: a uniform grid over the thresholds' range gives each value a cell, a
per-cell table gives a lower bound on its count (taken one cell to the left, so
float rounding in the cell arithmetic can never make it too high), and a fixed
number of exact compare-and-step passes climbs to the true count.
"""

from __future__ import annotations

import math
import threading
import weakref

import numpy as np
import torch

_FAST_MIN = 1 << 14  # below this many values a binary search is as fast
_FAST_LEVELS = 63  # with fewer thresholds torch's binary search wins (measured on CPU)
_MAX_STEPS = 6  # above this many passes the grid does not pay; fall back
_cache: dict[int, tuple | None] = {}
_lock = threading.Lock()


def midpoints(levels: np.ndarray) -> np.ndarray:
    """Nearest-level decision thresholds for sorted levels."""
    lv = np.asarray(levels, dtype=np.float64)
    return ((lv[:-1] + lv[1:]) / 2).astype(np.float32)


def _grid(thresholds: torch.Tensor):
    """(lo, inv_width, cells, start table, padded thresholds, steps) or None."""
    t = thresholds.detach().to("cpu", torch.float64).numpy()
    n = t.size
    if n < 2 or not np.all(np.diff(t) > 0):
        return None
    lo, hi = float(t[0]), float(t[-1])
    cells = int(min(1 << 16, 8 * n))
    inv_w = np.float32(cells / (hi - lo))
    if not np.isfinite(inv_w) or inv_w <= 0:
        return None
    edges = lo + np.arange(cells + 1, dtype=np.float64) * ((hi - lo) / cells)
    # start[c] = thresholds strictly below the left edge of cell c - 1 (a lower bound
    # on the count of any value the float32 cell arithmetic puts in cell c).
    left = np.concatenate([[-np.inf, -np.inf], edges[:-2]])[: cells]
    start = np.searchsorted(t, left, side="left")
    # the most thresholds any value of cell c can still be above: up to the right
    # edge of cell c + 1 (last cell: all of them)
    right = np.concatenate([edges[2:], [np.inf]])[:cells]
    right[-1] = np.inf
    top = np.searchsorted(t, right, side="right")
    steps = int((top - start).max())
    if steps > _MAX_STEPS:
        return None
    dev = thresholds.device
    padded = torch.cat([thresholds.float(), torch.full((1,), float("inf"), device=dev)])
    return (
        torch.tensor(lo, dtype=torch.float32, device=dev),
        torch.tensor(float(inv_w), dtype=torch.float32, device=dev),
        cells,
        torch.from_numpy(start.astype(np.int64)).to(dev),
        padded,
        steps,
    )


def _grid_for(thresholds: torch.Tensor):
    key = id(thresholds)
    g = _cache.get(key, False)
    if g is False:
        with _lock:
            g = _cache.get(key, False)
            if g is False:
                g = _grid(thresholds)
                _cache[key] = g
                weakref.finalize(thresholds, _cache.pop, key, None)
    return g


def bucketize(z: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Symbol index = count of thresholds <= z (int64, in [0, len(thresholds)]).

    ``thresholds`` must be sorted; for long-lived tables (a codec's state) the grid
    is built once per tensor.
    """
    if z.numel() >= _FAST_MIN and thresholds.dim() == 1 and thresholds.numel() >= _FAST_LEVELS:
        g = _grid_for(thresholds)
        if g is not None:
            lo, inv_w, cells, start, padded, steps = g
            zc = z.contiguous().float()
            cell = ((zc - lo) * inv_w).floor_().clamp_(0, cells - 1).to(torch.int64)
            idx = start[cell]
            for _ in range(steps):
                idx += zc >= padded[idx]
            return idx
    return torch.bucketize(z.contiguous(), thresholds.contiguous(), right=True)


def fixed_sum(t: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """Sum along ``dim`` in a fixed pairwise order, by elementwise adds of halves.

    torch's reductions pick their summation order by shape and device (a row
    summed in a batch of 40 can differ in the last bit from the same row alone);
    elementwise IEEE adds cannot, so this gives the same bits for a row whatever
    else is in the batch, on CPU and GPU. Encoders use it for per-row statistics
    that become side values or decisions.
    """
    t = t.movedim(dim, -1)
    n = t.shape[-1]
    width = 1 << max(0, (n - 1).bit_length())
    if width != n:
        t = torch.nn.functional.pad(t, (0, width - n))
    while t.shape[-1] > 1:
        h = t.shape[-1] // 2
        t = t[..., :h] + t[..., h:]
    out = t[..., 0] if n else t.new_zeros(t.shape[:-1])
    if keepdim:
        out = out.unsqueeze(-1).movedim(-1, dim)
    return out


def fixed_mean(t: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    return fixed_sum(t, dim, keepdim) / t.shape[dim]


# -- a power function from IEEE adds, multiplies, divides and bit operations --------
# torch's exp, log and pow differ by device, vector width and library (and a compiled
# kernel's libm differs again) in the last bit; these operations do not. `pow_pos`
# spells out a**e as exp(e * log(a)) with them alone, in float32, so every path (torch
# on any device, `kernels.hqq_cpu`'s 16-lane copy) gets the same bits. Its constants
# are float32 values (torch rounds a Python float to float32 before it multiplies a
# float32 tensor by it; the kernels use them as float32).
def _f32(x: float) -> float:
    return float(np.float32(x))


POW_FLT_MIN = 2.0**-126  # below: subnormal, scaled by 2**24 first
POW_SQRT_HALF = _f32(0.7071067811865476)
POW_LN2_HI = _f32(0.693145751953125)  # 15 significant bits: k * hi is exact for |k| < 256
POW_LN2_LO = _f32(0.6931471805599453 - 0.693145751953125)
POW_INV_LN2 = _f32(1.4426950408889634)
POW_MANT = (1 << 23) - 1
POW_HALF = 126 << 23  # the exponent field of [0.5, 1)
#: log(m) = 2 f (1 + f^2/3 + f^4/5 + ...), f = (m - 1) / (m + 1), |f| <= 0.172: 5 terms
#: leave under 1e-9 (float32's own rounding is 6e-8); Horner from the last.
POW_LOG_C = tuple(_f32(1.0 / (2 * i + 1)) for i in range(5))
#: exp(r) = sum r^i / i!, |r| <= 0.347: 9 terms leave under 3e-10.
POW_EXP_C = tuple(_f32(1.0 / math.factorial(i)) for i in range(9))


def pow_pos(a: torch.Tensor, e: float) -> torch.Tensor:
    """a**e for float32 a > 0 (finite) and a float e in [-1, 1], to about 3e-6 relative
    (float32's exp(e log a) loses as much); +inf from about 2**127.5, 0 under 2**-126. Each step is one
    IEEE float32 operation (one tensor op, no fused multiply-add) or a bit operation, so
    the bits are the same on every device and in the kernels."""
    # in-place steps where a fresh tensor is not needed: the same IEEE operations, less memory traffic
    sub = a < POW_FLT_MIN
    a = torch.where(sub, a * 16777216.0, a)
    b = a.view(torch.int32)
    k = (b >> 23).bitwise_and_(0xFF).sub_(torch.where(sub, 150, 126).to(torch.int32))  # a = m 2**k, m in [0.5, 1)
    m = (b & POW_MANT).bitwise_or_(POW_HALF).view(torch.float32)
    small = m < POW_SQRT_HALF
    m = torch.where(small, m + m, m)  # m in [sqrt(1/2), sqrt(2))
    k = torch.where(small, k - 1, k).float()
    f = (m - 1.0).div_(m + 1.0)
    f2 = f * f
    s = torch.full_like(f, POW_LOG_C[-1])
    for c in POW_LOG_C[-2::-1]:
        s.mul_(f2).add_(c)
    ln = (k * POW_LN2_HI).add_((k * POW_LN2_LO).add_(s.mul_(f.add_(f))))  # k hi + (k lo + 2 f s)
    y = ln.mul_(_f32(e))
    n = (y * POW_INV_LN2).add_(0.5).floor_()
    r = (y - n * POW_LN2_HI).sub_(n * POW_LN2_LO)
    p = torch.full_like(r, POW_EXP_C[-1])
    for c in POW_EXP_C[-2::-1]:
        p.mul_(r).add_(c)
    ni = n.clamp(-126, 127).to(torch.int32)
    out = p.mul_(ni.add_(127).bitwise_left_shift_(23).view(torch.float32))
    return torch.where(n > 127, math.inf, torch.where(n < -126, 0.0, out))
