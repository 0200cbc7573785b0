"""hqq: half-quadratic quantization (mobiusml's ``hqq`` package).

Each vector is cut into groups of ``group_size`` dimensions (the last group may be
shorter). A group gets 2**bits affine levels, ``x ~ s * (q - z)`` with q in
[0, 2**bits - 1], and its scale s and zero z travel as float32 side values (all G
scales, then all G zeros). The hqq package keeps them in fp16 (its compute dtype);
float32 costs 32 more bits per group but never rounds the optimised zero.

Starting from min-max levels, the HQQ optimiser refines z (and with
``optimize_scale`` also s) by half-quadratic splitting of min ||W - dequant(quant(W))||_p^p
with p < 1: an auxiliary error W_e absorbs the residual through the lp proximal map
(generalised soft-thresholding ``shrink_lp``), then z is the closed-form least-squares
fit ``mean(q - (W - W_e)/s)``, and beta grows by kappa each step.

Differences from the package, each for a reason:

- Every group is optimised on its own: early stopping and the choice of the best
  iterate are per group, never a batch-wide criterion (hqq stops the whole tensor
  on its mean error), so a row's codes never depend on the rest of the batch.
- The residual is measured in units of the group's step (the group is normalised to
  [0, 2**bits - 1] first). hqq's shrinkage works in the weights' absolute units, so
  its behaviour depends on their magnitude; ours gives the same codes for a vector
  and for 1000 times that vector.
- The iterate kept is the one with the lowest squared error (the service's metric),
  the min-max start included: the optimiser never makes a group worse.
- ``optimize_scale`` refits s and z together by least squares on (W - W_e) given
  the codes (hqq's scale search is an experimental grid over a tensor-wide range).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..errors import CodecMismatch, InvalidInput
from .affine import group_count
from . import kernels
from ._scalar import fixed_sum, pow_pos
from .base import Codec, Layout, Scheme, RotatableParams
from .checks import all_finite
from .registry import register

_F32_MAX = float(torch.finfo(torch.float32).max)
_F16_MAX = float(torch.finfo(torch.float16).max)
_F16_TINY = float(torch.finfo(torch.float16).tiny)  # smallest normal fp16: a positive step


class HqqParams(RotatableParams):
    bits: int = Field(4, ge=1, le=8, description="bits per dimension (2**bits levels per group)")
    group_size: int | None = Field(64, ge=1, le=1 << 20, description="dimensions per group; null: the whole vector")
    p: float = Field(0.7, gt=0, le=1, description="lp norm of the error (p < 1 favours sparse outliers)")
    iterations: int = Field(20, ge=0, le=1000, description="optimiser iterations (0: plain min-max levels)")
    beta: float = Field(10.0, gt=0, le=1e8, description="initial half-quadratic penalty")
    kappa: float = Field(1.01, ge=1, le=100, description="beta grows by this factor each iteration")
    early_stop: bool = Field(True, description="stop a group once its error stops improving")
    tolerance: float = Field(0.0, ge=0, lt=1, description="relative improvement below which a group stops")
    optimize_scale: bool = Field(
        True,
        description="also refit each group's scale (least squares given the codes); "
        "on by default: with it the error is at or below the hqq package's, without it up to 3% above",
    )
    side_dtype: Literal["float32", "float16"] = Field(
        "float32",
        description="float32: scale and zero as float32 side values (64 bits per group); float16: rounded to "
        "fp16 as the hqq package stores them and carried in the codes (32 bits per group, counted in "
        "bits/dim), the codes then refitted to the rounded values",
    )


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Proximal map of |x|^p / beta, approximated as in HQQ: generalised soft-thresholding
    sign(x) * max(|x| - |x|^(p-1) / beta, 0). At x = 0 the power is inf and the result 0."""
    ax = x.abs()
    if p < 1:
        # |x|^(p-1) by `pow_pos` (IEEE operations only), not torch's pow or exp and log:
        # those differ in the last bit by device and vector width (and from a compiled
        # kernel's), and the codes would with them
        pos = ax > 0
        thresh = torch.where(pos, pow_pos(torch.where(pos, ax, 1.0), p - 1) * (1.0 / beta), math.inf)
    else:
        thresh = torch.full_like(ax, 1.0 / beta)
    return torch.sign(x) * (ax - thresh).clamp_min(0)


def _grouped(x: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) -> values (N*G, g) and a 0/1 mask of the real (not padding) entries."""
    n, d = x.shape
    pad = (-d) % g
    mask = torch.ones(n, d + pad, dtype=x.dtype, device=x.device)
    if pad:
        x = torch.cat([x, x[:, -1:].expand(n, pad)], dim=1)  # keeps each group's min and max
        mask[:, d:] = 0
    return x.reshape(-1, g), mask.reshape(-1, g)


class _Groups:
    """Masked per-group statistics over rows of (R, g); every reduction is along dim 1."""

    def __init__(self, v: torch.Tensor, mask: torch.Tensor, levels: int):
        self.v, self.mask, self.top = v, mask, float(levels - 1)
        self.count = fixed_sum(mask, dim=1, keepdim=True)

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        return fixed_sum(t * self.mask, dim=1, keepdim=True) / self.count

    def codes(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.round(self.v / s + z).clamp_(0, self.top)

    def sq_error(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        q = self.codes(s, z)
        return fixed_sum(((self.v - s * (q - z)) ** 2) * self.mask, dim=1, keepdim=True)


def optimize_groups(v: torch.Tensor, mask: torch.Tensor, p: HqqParams) -> tuple[torch.Tensor, torch.Tensor]:
    """HQQ on normalised groups v (R, g), each spanning [0, 2**bits - 1] (so the min-max
    start is s = 1, z = 0). Returns the best (s, z) per group, each (R, 1)."""
    grp = _Groups(v, mask, 1 << p.bits)
    s = torch.ones_like(grp.count)
    z = torch.zeros_like(grp.count)
    best_s, best_z, best_err = s, z, grp.sq_error(s, z)
    active = torch.ones_like(grp.count, dtype=torch.bool)
    beta = p.beta
    for _ in range(p.iterations):
        q = grp.codes(s, z)
        w = v / s  # the group in units of the current step
        w_e = shrink_lp(w - (q - z), beta, p.p)  # the error the lp term absorbs
        if p.optimize_scale:
            # Least squares of (w - w_e) ~ alpha * q + c over the group: both the new
            # scale (alpha, relative to s) and the zero point (-c / alpha).
            t = w - w_e
            qm, tm = grp.mean(q), grp.mean(t)
            cov = grp.mean((q - qm) * (t - tm))
            var = grp.mean((q - qm) ** 2)
            ok = (var > 0) & (cov > 0)
            alpha = torch.where(ok, cov / torch.where(ok, var, 1.0), 1.0)
            s_new = s * alpha
            z_new = qm - tm / alpha
        else:
            s_new = s
            z_new = grp.mean(q - (w - w_e))
        beta *= p.kappa
        err = grp.sq_error(s_new, z_new)
        better = active & (err < best_err * (1 - p.tolerance))
        best_s = torch.where(better, s_new, best_s)
        best_z = torch.where(better, z_new, best_z)
        best_err = torch.where(better, err, best_err)
        # A stopped group keeps its parameters; the loop's own exit below only saves time.
        s = torch.where(active, s_new, s)
        z = torch.where(active, z_new, z)
        if p.early_stop:
            active = better
            if not bool(active.any()):
                break
    return best_s, best_z


def hqq_quantize(x: torch.Tensor, p: HqqParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize float32 (N, D) rows; return (symbols int64 (N, D), side float32 (N, 2G):
    G scales then G zeros, decoding x = s * (q - z))."""
    n, d = x.shape
    g, ng = group_count(d, p.group_size)
    # Floor the span relative to the magnitude so a constant group (or one far from
    # zero) keeps a usable, finite step; an all-zero group gets step 1. With fp16 side
    # values the floor is higher: the zero point -lo/step must stay small enough for
    # fp16 (2**-6: |zero| <= 64 * (2**bits - 1) steps, its rounding under a step).
    floor = 2.0**-20 if p.side_dtype == "float32" else 2.0**-6
    compiled = None
    if kernels.compiled(x):  # the whole encode (float32 side values: the answer; fp16: s and z below)
        from .kernels import hqq_cpu

        compiled = hqq_cpu.quantize(x.detach().float().numpy(), g, p, floor)
        if p.side_dtype == "float32":
            return torch.from_numpy(compiled[0]), torch.from_numpy(compiled[1])
    w, mask = _grouped(x.double(), g)
    top = (1 << p.bits) - 1
    # + 0.0: a group whose least value is zero starts at +0.0 whichever zero the
    # reduction met first (the side values' bits would depend on it)
    lo = w.amin(dim=1, keepdim=True) + 0.0
    amax = w.abs().amax(dim=1, keepdim=True)
    span = torch.maximum(w.amax(dim=1, keepdim=True) - lo, amax * floor)
    step0 = torch.where(span > 0, span / top, 1.0)
    v = ((w - lo) / step0).float()  # in [0, top]: the optimiser is scale and shift invariant
    if compiled is not None:
        s, z = torch.from_numpy(compiled[2]).unsqueeze(1), torch.from_numpy(compiled[3]).unsqueeze(1)
    else:
        s, z = optimize_groups(v, mask.float(), p)
    # Back to absolute units: x ~ lo + step0 * s * (q - z) = S * (q - Z).
    scale = step0 * s.double()
    zero = z.double() - lo / scale
    if p.side_dtype == "float16":
        # fp16 as the hqq package stores them, then the codes refitted to the rounded
        # scale and zero. A step outside fp16's normal range is refused, naming the row.
        bad = ~((scale >= _F16_TINY) & (scale <= _F16_MAX) & (zero.abs() <= _F16_MAX))
        if bool(bad.any()):
            i = int(bad.reshape(-1).nonzero()[0, 0])
            raise _half_range_error(i // ng, i % ng, float(scale.reshape(-1)[i]))
        scale = scale.half().double()
        zero = zero.half().double()
        q = torch.round(w / scale + zero).clamp_(0, top)
        q = q.to(torch.int64).reshape(n, -1)[:, :d]
        return torch.cat([q, _half_symbols(scale, n, ng, p.bits), _half_symbols(zero, n, ng, p.bits)], 1), None
    q = torch.round(v / s + z).clamp_(0, top).to(torch.int64).reshape(n, -1)[:, :d]
    side = torch.cat([scale.reshape(n, ng), zero.reshape(n, ng)], dim=1)
    return q, side.clamp(-_F32_MAX, _F32_MAX).float()


def _half_range_error(row: int, group: int, step: float) -> InvalidInput:
    return InvalidInput(
        f"hqq side_dtype='float16': row {row}, group {group} needs a step of {step:.3g}, outside fp16's normal "
        f"range [{_F16_TINY:.3g}, {_F16_MAX:g}] (values far below or above about 1e-3..1e4 in magnitude); "
        "use side_dtype='float32'"
    )


def check_half_range(x: torch.Tensor | np.ndarray, p: HqqParams) -> None:
    """Refuse input whose groups' steps leave fp16's range (float16 side values only),
    before encoding: the min-max step, with a factor 4 of room for the optimiser."""
    if p.side_dtype != "float16":
        return
    t = torch.as_tensor(x)
    n, d = t.shape
    g, ng = group_count(d, p.group_size)
    w, _ = _grouped(t.double(), g)
    lo, amax = w.amin(dim=1, keepdim=True), w.abs().amax(dim=1, keepdim=True)
    span = torch.maximum(w.amax(dim=1, keepdim=True) - lo, amax * 2.0**-6)
    step = torch.where(span > 0, span / ((1 << p.bits) - 1), 1.0)
    bad = ~((step >= 4 * _F16_TINY) & (step <= _F16_MAX / 4))
    if bool(bad.any()):
        i = int(bad.reshape(-1).nonzero()[0, 0])
        raise _half_range_error(i // ng, i % ng, float(step.reshape(-1)[i]))


def half_symbols_per_value(bits: int) -> int:
    """Symbols of ``bits`` bits that carry one fp16 value (16 bits, least significant first)."""
    return -(-16 // bits)


def _half_symbols(v: torch.Tensor, n: int, ng: int, bits: int) -> torch.Tensor:
    """fp16-exact float64 values (N*G, 1) -> int64 symbols (N, G*k): each value's 16 bits,
    ``bits`` at a time, least significant first."""
    u = v.reshape(n, ng).half().view(torch.int16).to(torch.int64) & 0xFFFF
    k = half_symbols_per_value(bits)
    shifts = torch.arange(k, device=v.device, dtype=torch.int64) * bits
    return ((u.unsqueeze(2) >> shifts) & ((1 << bits) - 1)).reshape(n, ng * k)


def _half_values(sym: torch.Tensor, ng: int, bits: int, what: str) -> torch.Tensor:
    """Inverse of `_half_symbols`: (N, G*k) symbols -> float64 (N, G). Refuses bits set
    past the 16 (when bits does not divide 16) and non-finite values."""
    n = sym.shape[0]
    k = half_symbols_per_value(bits)
    shifts = torch.arange(k, device=sym.device, dtype=torch.int64) * bits
    u = (sym.reshape(n, ng, k) << shifts).sum(dim=2)
    if bool((u >> 16).any()):
        raise CodecMismatch(f"hqq float16 {what}: bits set past the 16 of a float16 value (corrupted codes?)")
    v = (u - ((u >> 15) << 16)).to(torch.int16).view(torch.float16).double()
    if not all_finite(v):
        raise CodecMismatch(f"hqq float16 {what}: a value is not finite (corrupted codes?)")
    return v


def hqq_dequantize(symbols: torch.Tensor, side: torch.Tensor | None, p: HqqParams, dim: int | None = None) -> torch.Tensor:
    """x = s * (q - z) per group, computed in float64 and returned as float32. With
    float16 side values the symbols hold D codes, then the G scales, then the G zeros
    (``dim``: D, needed then)."""
    n = symbols.shape[0]
    d = dim if dim is not None else symbols.shape[1]
    g, ng = group_count(d, p.group_size)
    if p.side_dtype == "float32" and kernels.compiled(symbols):
        from .kernels import hqq_cpu

        return torch.from_numpy(hqq_cpu.dequantize(symbols.numpy(), side.numpy(), g, d))
    q, _ = _grouped(symbols[:, :d].double(), g)
    if p.side_dtype == "float16":
        k = ng * half_symbols_per_value(p.bits)
        scale = _half_values(symbols[:, d : d + k], ng, p.bits, "scale").reshape(-1, 1)
        zero = _half_values(symbols[:, d + k :], ng, p.bits, "zero").reshape(-1, 1)
        if not bool((scale > 0).all()):
            raise CodecMismatch("hqq float16 scale: every scale must be positive (corrupted codes?)")
    else:
        scale = side[:, :ng].double().reshape(-1, 1)
        zero = side[:, ng : 2 * ng].double().reshape(-1, 1)
    x = scale * (q - zero)
    return x.clamp_(-_F32_MAX, _F32_MAX).float().reshape(n, -1)[:, :d]


@register
class Hqq(Scheme):
    name = "hqq"
    summary = (
        "Half-quadratic quantization (HQQ): per-group affine levels whose zero (and optionally scale) "
        "an lp-norm proximal optimiser refines; float32 scale and zero per group."
    )
    Params = HqqParams
    examples = (
        {"bits": 1, "group_size": 64},
        {"bits": 2},
        {"bits": 4, "group_size": 16},
        {"bits": 3, "group_size": 20, "p": 1.0},
        {"bits": 4, "group_size": None, "optimize_scale": True},
        {"bits": 8, "group_size": 32, "early_stop": False, "iterations": 5},
        {"bits": 3, "rotate": True},
        # side_dtype="float16" is not among the generic examples: it cannot pass their
        # check that any float32 scale works (fp16 steps stop near 6e-5 and 65504);
        # tests/codecs/test_hqq.py runs its own checks (the fp16 section).
    )

    def layout(self, params: HqqParams, dim: int) -> Layout:
        _, ng = group_count(dim, params.group_size)
        if params.side_dtype == "float16":
            # scale and zero travel in the codes: 16 bits each, in ceil(16 / bits) symbols
            return Layout(bits=params.bits, symbols=dim + 2 * ng * half_symbols_per_value(params.bits), side_values=0)
        return Layout(bits=params.bits, symbols=dim, side_values=2 * ng)

    def fit(self, params: HqqParams, x: torch.Tensor):
        check_half_range(x, params)  # float16 side values: a sample outside fp16's range
        return params, {}

    def check_input(self, codec: Codec, x) -> None:
        """Input a request may not encode with this codec (the service asks before encoding)."""
        check_half_range(x, codec.params)

    def encode(self, codec: Codec, x: torch.Tensor):
        return hqq_quantize(x, codec.params)

    def decode(self, codec: Codec, symbols: torch.Tensor, side):
        return hqq_dequantize(symbols, side, codec.params, codec.dim)
