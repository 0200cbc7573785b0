"""binary and int8: the formats embedding providers ship.

``binary``: one sign bit per dimension, as Cohere, Voyage and sentence-transformers
(``precision="binary"/"ubinary"``) emit: bit j is 1 where x_j > 0 (zero maps to 0,
as in sentence-transformers). Bits are packed by the common rule (b = 1, least
significant bit first), where numpy's ``packbits`` puts the first dimension in
the most significant bit of a byte: the same bits, another order. Decoding gives
``+a`` / ``-a`` with

- ``scale="row"`` (default): a = mean |x| of the row, one float32 side value;
  it is the least-squares gain of a sign vector (<x, sign x> / D);
- ``scale="global"``: one a for all rows, the mean |x| of the fit sample,
  stored in the codec (no side values);
- ``scale="none"``: a = 1, no side values (the codes alone, for Hamming search).

``int8``: sentence-transformers' calibrated int8. Per-dimension ranges
(min, max) are learned at fit and kept in the codec; a value gets bucket
``floor((x - min) / step)`` clipped to [0, 255] with ``step = (max - min) / 255``
(a zero range uses step 1), computed in float32 exactly as
``quantize_embeddings(..., precision="uint8", ranges=...)`` does, so the indices
match it (its ``int8`` is the same index minus 128). Values beyond the fitted
range clip. We decode every bin at its MIDPOINT ``min + (i + 0.5) * step``, the
top bin (the maximum and the values beyond it) too, as faiss SQ8 does;
sentence-transformers' ``_dequantize_embeddings`` decodes at the lower edge,
which has 4x the squared error.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ..errors import CodecMismatch
from ._scalar import fixed_mean
from .base import Codec, Layout, RotatableParams, Scheme, require_state
from .registry import register


def _mean_abs(x: torch.Tensor) -> torch.Tensor:
    # Reduced in float64 so the float32 result does not depend on summation order (device).
    return fixed_mean(x.double().abs(), dim=1, keepdim=True).float()


class BinaryParams(RotatableParams):
    scale: Literal["row", "global", "none"] = Field(
        "row", description="decode to +-a: a = each row's mean |x| (a side value), the sample's mean |x|, or 1"
    )


@register
class Binary(Scheme):
    name = "binary"
    summary = "Sign bits (1 bit per dimension, as providers ship); decoded to +-mean|x| of the row, of the sample, or +-1."
    Params = BinaryParams
    data_dependent = True  # only for scale="global"
    # scale="none" decodes to +-1 whatever the input's magnitude, so it cannot meet the
    # generic "within the input's own range" checks on tiny inputs; tests/codecs/test_binary.py covers it.
    examples = ({}, {"scale": "global"}, {"rotate": True})

    def layout(self, params: BinaryParams, dim: int) -> Layout:
        return Layout(bits=1, symbols=dim, side_values=1 if params.scale == "row" else 0)

    def learns(self, params: BinaryParams) -> bool:
        return params.scale == "global"

    def warnings(self, params: BinaryParams) -> list[str]:
        """Accepted, with a warning in /fit and /quantize answers: the codes are fine for
        Hamming search, but their reconstruction is not (MiniLM: relative squared error 354)."""
        if params.scale != "none":
            return []
        return [
            "binary scale='none' is for Hamming search only: it decodes every coordinate to +-1 whatever the "
            "vector's magnitude, so decoded vectors and their reconstruction error are meaningless (relative "
            "squared error ~354 on unit-norm 384-d embeddings); use scale='row' (the default) to decode"
        ]

    def fit(self, params: BinaryParams, x: torch.Tensor):
        if params.scale != "global":
            return params, {}
        return params, {"scale": np.array([float(x.double().abs().mean())], dtype=np.float32)}

    def check_state(self, codec: Codec) -> None:
        if codec.params.scale == "global":
            require_state(codec, "scale", (1,))
            if not float(codec.state["scale"][0]) >= 0:
                raise CodecMismatch(f"codec scale must not be negative, got {float(codec.state['scale'][0])}")

    def encode(self, codec: Codec, x: torch.Tensor):
        sym = (x > 0).to(torch.int64)
        return sym, (_mean_abs(x) if codec.params.scale == "row" else None)

    def decode(self, codec: Codec, symbols: torch.Tensor, side):
        pm = symbols.to(torch.float32) * 2 - 1
        if codec.params.scale == "row":
            return pm * side
        if codec.params.scale == "global":
            return pm * codec.tensors(symbols.device)["scale"]
        return pm


class Int8Params(RotatableParams):
    pass


@register
class Int8(Scheme):
    name = "int8"
    summary = "sentence-transformers' calibrated int8: per-dimension ranges learned at fit, 256 buckets, decoded at bin midpoints."
    Params = Int8Params
    data_dependent = True
    examples = ({}, {"rotate": True})

    def layout(self, params: Int8Params, dim: int) -> Layout:
        return Layout(bits=8, symbols=dim, side_values=0)

    def fit(self, params: Int8Params, x: torch.Tensor):
        lo = x.amin(dim=0).float().cpu().numpy()
        hi = x.amax(dim=0).float().cpu().numpy()
        # The same float32 arithmetic as sentence-transformers, so bucket indices match.
        steps = (hi - lo) / np.float32(255)
        steps = np.where(steps == 0, np.float32(1), steps).astype(np.float32)
        return params, {"starts": lo.astype(np.float32), "steps": steps, "maxes": hi.astype(np.float32)}

    def check_state(self, codec: Codec) -> None:
        for k in ("starts", "steps", "maxes"):
            require_state(codec, k, (codec.dim,))
        st = codec.state
        if not bool(np.all(st["steps"] > 0)) or not bool(np.all(st["maxes"] >= st["starts"])):
            raise CodecMismatch("int8 codec state: steps must be positive and maxes >= starts")

    def encode(self, codec: Codec, x: torch.Tensor):
        t = codec.tensors(x.device)
        q = torch.floor((x - t["starts"]) / t["steps"])
        return q.clamp_(0, 255).to(torch.int64), None

    def decode(self, codec: Codec, symbols: torch.Tensor, side):
        t = codec.tensors(symbols.device)
        mid = t["starts"] + (symbols.to(torch.float32) + 0.5) * t["steps"]
        # Every bin at its midpoint, the top one too (faiss SQ8 does the same): bin 255 holds
        # the fitted maximum and every unseen value beyond it, whose mean lies above the
        # maximum, so decoding it at the maximum (as before) cost 1.2% of the error on
        # held-out MiniLM. A dimension with a zero range decodes at its one value.
        flat = (t["maxes"] == t["starts"]).expand_as(mid)
        return torch.where(flat, t["starts"].expand_as(mid), mid)
