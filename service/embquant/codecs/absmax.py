"""absmax: symmetric linear quantization with one scale per vector (bitsandbytes-style).

Each row is divided by its largest magnitude and rounded to one of 2**bits - 1
evenly spaced integers in [-qmax, qmax] (qmax = 2**(bits-1) - 1), so zero is exact.
Side value: the row's scale absmax / qmax (float32).
"""

from __future__ import annotations

import torch
from pydantic import Field

from .base import Codec, Layout, Scheme, RotatableParams
from .registry import register


class AbsmaxParams(RotatableParams):
    bits: int = Field(4, ge=2, le=8, description="bits per dimension")


@register
class Absmax(Scheme):
    name = "absmax"
    summary = "Symmetric linear levels scaled by each vector's largest magnitude (one float32 scale per vector)."
    Params = AbsmaxParams
    examples = ({"bits": 2}, {"bits": 4}, {"bits": 8}, {"bits": 4, "rotate": True}, {"bits": 4, "rotate": True, "center": True})

    def layout(self, params: AbsmaxParams, dim: int) -> Layout:
        return Layout(bits=params.bits, symbols=dim, side_values=1, levels=(1 << params.bits) - 1)

    def encode(self, codec: Codec, x: torch.Tensor):
        qmax = (1 << (codec.params.bits - 1)) - 1
        amax = x.abs().amax(dim=1, keepdim=True)
        scale = amax / qmax
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(x / safe).clamp_(-qmax, qmax).to(torch.int64)
        return q + qmax, scale

    def decode(self, codec: Codec, symbols: torch.Tensor, side):
        qmax = (1 << (codec.params.bits - 1)) - 1
        return (symbols - qmax).to(torch.float32) * side
