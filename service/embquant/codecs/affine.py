"""affine: q = round(a*x + b) over blocks of each vector (lixilinx's
"a simple formula for eight types of quantization").

Three independent controls give eight variants:

- ``power_of_two``: ``a`` is an ordinary float, or ``a = 2**e`` with integer e
  (a block exponent), so decoding is ``(q - b) * 2**-e``: an exact shift, no
  float scale. The side value is then the exponent e itself.
- ``symmetric``: ``b`` is an integer zero point chosen from the block's [min, max],
  or ``b = 0`` and the range is [-max|x|, max|x|] (one side value less).
- ``rounding``: ``nearest`` (deterministic, biased per value) or ``stochastic``
  (``floor(y + u)``, u ~ U[0, 1): unbiased, E[q] = y).

Conventions (the seed's): codes are signed, q in [-2**(n-1), 2**(n-1) - 1], and
``b = floor(-a * (x0 + x1) / 2)`` centres the block's range on zero, so a*x + b
for x in [x0, x1] lies in [-(2**n - 1)/2 - f, (2**n - 1)/2 - f] with f in [0, 1).
Stored symbols are q + 2**(n-1) (unsigned, n bits). Side values per block, float32:
the step 1/a (or the exponent e), then b unless symmetric.

Every block is a slice of one row and every reduction stays inside its row, so a
row's codes never depend on the other rows of the batch. Stochastic noise comes
from a counter-based hash of (seed, the row's float32 bits, element index): the
same row gives the same codes alone, in any batch, on any device.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, field_validator

from ..errors import CodecMismatch
from .base import Codec, Layout, Scheme, RotatableParams
from .registry import register

_F32_MAX = float(torch.finfo(torch.float32).max)
_F32_TINY = float(torch.finfo(torch.float32).tiny)  # smallest normal: subnormals may flush to zero on GPUs
#: Exponent range of a power-of-two scale: 2**-e stays a normal float32.
_E_MIN, _E_MAX = -127, 126


class AffineParams(RotatableParams):
    bits: int = Field(4, ge=2, le=8, description="bits per dimension (2..8; 1 cannot work with an integer zero point)")
    group_size: int | None = Field(
        None, ge=1, le=1 << 20, description="dimensions per block (side values per block); null: the whole vector"
    )
    power_of_two: bool = Field(False, description="a = 2**e with integer e (block exponent): decoding needs no float scale")
    symmetric: bool = Field(False, description="b = 0 and a range symmetric about zero (one side value less per block)")
    rounding: Literal["nearest", "stochastic"] = Field("nearest", description="nearest, or unbiased stochastic floor(y + u)")
    seed: int = Field(0, ge=0, lt=2**31, description="seed of stochastic rounding (noise is a hash of seed, row and index)")

    @field_validator("bits", mode="before")
    @classmethod
    def _no_one_bit(cls, v):
        # Refused rather than fixed: the codes are {-1, 0} and b is an integer, so the two
        # levels are -b/a and (-1 - b)/a. A block whose range straddles zero (every
        # embedding) cannot have them on both sides of zero (that needs -1 < b < 0), so
        # one level sits at or near zero and nearly every value decodes there (MiniLM:
        # 383 of 384 coordinates decode to 0, relative squared error 0.99). A correct
        # 1-bit code has levels at the centre plus or minus a gain: that is `binary`.
        if v == 1 and not isinstance(v, bool):
            raise ValueError(
                "affine needs bits >= 2: with 1 bit the codes are {-1, 0} and the zero point b is an integer, "
                "so for a range that straddles zero one of the two levels sits at zero and nearly every value "
                "decodes to 0; use binary (sign bits times the mean |x|) or lloyd with bits=1"
            )
        return v


def _blocks(x: torch.Tensor, g: int) -> torch.Tensor:
    """(N, D) -> (N, G, g), padding the last block by repeating the row's last value
    (which changes neither its min, its max nor its largest magnitude)."""
    n, d = x.shape
    pad = (-d) % g
    if pad:
        x = torch.cat([x, x[:, -1:].expand(n, pad)], dim=1)
    return x.reshape(n, -1, g)


def group_count(dim: int, group_size: int | None) -> tuple[int, int]:
    """(block size, number of blocks) for a vector of ``dim`` values."""
    g = dim if group_size is None else min(group_size, dim)
    return g, -(-dim // g)


# --- counter-based noise: 32-bit integer hashing in int64 tensor ops -------------
_M32 = 0xFFFFFFFF


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """(h * c) mod 2**32 for 0 <= h < 2**32 without ever overflowing int64 (a full
    32x32 product can reach 2**64; split c into 16-bit halves, each product < 2**48)."""
    lo = h * (c & 0xFFFF)
    hi = ((h * (c >> 16)) & 0xFFFF) << 16
    return (lo + hi) & _M32


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finaliser: a bijection with good avalanche."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def row_uniforms(x: torch.Tensor, seed: int) -> torch.Tensor:
    """U[0, 1) noise (float64, multiples of 2**-24) of x's shape (N, D): element j of
    row i is a hash of (seed, a hash of row i's float32 bits, j). Pure per row."""
    n, d = x.shape
    bits = x.contiguous().view(torch.int32).to(torch.int64) & _M32
    idx = torch.arange(d, device=x.device, dtype=torch.int64)
    salt = _mix32(_mul32(idx, 0x9E3779B9))
    # Per-element hashes are < 2**32, so their int64 sum is exact (no overflow for
    # any realistic D) and independent of summation order.
    row = _mix32(_mix32(bits ^ salt).sum(dim=1, keepdim=True) & _M32)
    key = _mix32(row ^ _mix32(torch.tensor(seed & _M32, dtype=torch.int64, device=x.device)))
    h = _mix32((key + _mul32(idx + 1, 0x9E3779B9)) & _M32)
    h = _mix32(h ^ key)
    return (h >> 8).to(torch.float64) * (1.0 / (1 << 24))


# --- the pure quantizer -----------------------------------------------------------
def affine_quantize(x: torch.Tensor, p: AffineParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize float32 (N, D) rows; return (symbols int64 (N, D) in [0, 2**bits),
    side float32 (N, S*G)) where S is 1 (symmetric) or 2, laid out as all G steps
    (or exponents), then all G zero points."""
    n, d = x.shape
    g, ng = group_count(d, p.group_size)
    xb = _blocks(x, g).double()  # float64: exact for every float32 and for a*x with a = 2**e
    qmin, qmax = -(1 << (p.bits - 1)), (1 << (p.bits - 1)) - 1
    amax = xb.abs().amax(dim=2, keepdim=True)
    if p.symmetric:
        x1 = amax
        x0 = -x1
    else:
        x0, x1 = xb.amin(dim=2, keepdim=True), xb.amax(dim=2, keepdim=True)
    # Nearest rounding may put the range ends half a step beyond the outer levels
    # (they round inwards); stochastic rounding may not (a value past the last level
    # would be clipped, hence biased), so it spans one step less.
    steps = (1 << p.bits) - (1 if p.rounding == "nearest" else 2)
    # A floor on the span keeps |b| <= 2**23 + 1, exactly representable as a float32
    # side value, however far a narrow (or constant) block sits from zero.
    span = torch.maximum(x1 - x0, amax * 2.0 ** (p.bits - 23))
    live = span > 0  # all-zero blocks: any scale works; use a = 1
    if p.power_of_two:
        a_ideal = torch.where(live, steps / torch.where(live, span, 1.0), 1.0)
        _, k = torch.frexp(a_ideal)  # a_ideal = m * 2**k, m in [0.5, 1): floor(log2) = k - 1
        e = (k.to(torch.int64) - 1).clamp_(_E_MIN, _E_MAX)
        a = torch.ldexp(torch.ones_like(a_ideal), e)  # <= a_ideal: the range still fits
        scale_side = e.to(torch.float32)
    else:
        step64 = torch.where(live, span / steps, 1.0)
        step = step64.float()
        # Round the stored step up, never down, so the range still fits its levels.
        step = torch.where(step.double() < step64, torch.nextafter(step, torch.full_like(step, math.inf)), step)
        step = step.clamp_(_F32_TINY, _F32_MAX)
        a = 1.0 / step.double()
        scale_side = step
    b = torch.zeros_like(a) if p.symmetric else torch.floor(-a * (x0 + x1) / 2)
    y = xb * a + b
    if p.rounding == "nearest":
        # The seed's round(y + 1) - 1. torch.round, like numpy, rounds halves to the
        # even neighbour. The top of the range maps to at most (2**n - 1)/2 = 2**(n-1) - 0.5,
        # a tie whose even neighbour 2**(n-1) is one past the largest code: round() would
        # overflow (8 bits: round(127.5) = 128). Shifting by one flips the parity, so
        # round(y + 1) - 1 sends every tie k + 0.5 to its odd neighbour, which at the top
        # is 2**(n-1) - 1, the largest code. The bottom end cannot tie below the last
        # code: the range's low end lies in (-2**(n-1) - 0.5, -2**(n-1) + 0.5]. Ties
        # elsewhere move by one step either way at equal error. (With bits=1 the top
        # code 0 is even and the trick would overflow, so the clamp below stays as
        # the safety net it is for every other case.)
        q = torch.round(y + 1) - 1
    else:
        u = row_uniforms(_blocks(x, g).reshape(n, -1), p.seed).reshape(y.shape)
        q = torch.floor(y + u)  # E[floor(y + u)] = y for u ~ U[0, 1)
    q = q.clamp_(qmin, qmax).to(torch.int64).reshape(n, -1)[:, :d] - qmin
    side = scale_side.reshape(n, ng)
    if not p.symmetric:
        side = torch.cat([side, b.float().reshape(n, ng)], dim=1)
    return q, side


def affine_dequantize(symbols: torch.Tensor, side: torch.Tensor, p: AffineParams) -> torch.Tensor:
    """Inverse of `affine_quantize`: x = (q - b) / a, with 1/a = 2**-e exactly for
    power-of-two scales. Refuses side values the encoder cannot have produced."""
    n, d = symbols.shape
    g, ng = group_count(d, p.group_size)
    scale_side = side[:, :ng].double()
    if p.power_of_two:
        if not bool((scale_side == scale_side.round()).all()) or bool(
            ((scale_side < _E_MIN) | (scale_side > _E_MAX)).any()
        ):
            raise CodecMismatch(f"power-of-two side values must be integer exponents in [{_E_MIN}, {_E_MAX}]")
        step = torch.ldexp(torch.ones_like(scale_side), -scale_side.to(torch.int64))
    else:
        if bool((scale_side <= 0).any()):
            raise CodecMismatch("affine side values: every step (1/a) must be positive")
        step = scale_side
    if p.symmetric:
        b = torch.zeros_like(step)
    else:
        b = side[:, ng : 2 * ng].double()
        if not bool((b == b.round()).all()):
            raise CodecMismatch("affine side values: every zero point b must be an integer")
    q = _blocks(symbols, g).double() + (-(1 << (p.bits - 1)))
    x = (q - b.unsqueeze(2)) * step.unsqueeze(2)
    return x.clamp_(-_F32_MAX, _F32_MAX).float().reshape(n, -1)[:, :d]


@register
class Affine(Scheme):
    name = "affine"
    summary = (
        "round(a*x + b) per block (lixilinx/Flexible_quantization): float or power-of-two a, integer or zero b, "
        "nearest or stochastic rounding; float32 side values per block."
    )
    Params = AffineParams
    examples = (
        {"bits": 2},
        {"bits": 4},
        {"bits": 8, "group_size": 16},
        {"bits": 3, "power_of_two": True},
        {"bits": 4, "symmetric": True, "group_size": 20},
        {"bits": 5, "power_of_two": True, "symmetric": True},
        {"bits": 2, "rounding": "stochastic"},
        {"bits": 4, "rounding": "stochastic", "power_of_two": True, "group_size": 32, "seed": 7},
        {"bits": 6, "rounding": "stochastic", "symmetric": True},
        {"bits": 4, "rounding": "stochastic", "power_of_two": True, "symmetric": True, "group_size": 16},
        {"bits": 4, "rotate": True},
    )

    def layout(self, params: AffineParams, dim: int) -> Layout:
        _, ng = group_count(dim, params.group_size)
        return Layout(bits=params.bits, symbols=dim, side_values=ng * (1 if params.symmetric else 2))

    def encode(self, codec: Codec, x: torch.Tensor):
        return affine_quantize(x, codec.params)

    def decode(self, codec: Codec, symbols: torch.Tensor, side):
        return affine_dequantize(symbols, side, codec.params)
