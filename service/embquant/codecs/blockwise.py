"""blockwise: block-wise absmax quantization over a level table (bitsandbytes-style), as
``bitsandbytes.functional.quantize_blockwise`` (8-bit dynamic map) and
``quantize_4bit`` (NF4, FP4) do.

Each vector is cut into blocks of ``block_size`` consecutive dimensions (the last
block may be shorter); each block is divided by its own absmax and every
coordinate becomes the index of the nearest table level. One float32 absmax per
block travels as a side value, so a row costs ``bits * D + 32 * ceil(D / block_size)``
bits. An outlier only coarsens its own block.

Unlike bitsandbytes, which blocks the flattened tensor, blocks never span two
vectors: rows stay independent. When D is a multiple of ``block_size`` the two
coincide (tests/codecs/test_blockwise.py checks codes and reconstructions against
bitsandbytes on CPU).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from .base import Codec, Layout, Scheme
from .codebook import LevelParams, TableName, level_tensors, refuse_negative, scaled_symbols
from .registry import register

#: Largest block (bitsandbytes' largest blocksize as well).
MAX_BLOCK = 4096


class BlockwiseParams(LevelParams):
    table: TableName | None = Field(
        "dynamic", description="named level table (dynamic, dynamic_unsigned: 8 bits; nf4, fp4: 4 bits; linear: any bits)"
    )

    block_size: int = Field(
        64, ge=2, le=MAX_BLOCK, description="dimensions per block; each block has its own float32 absmax"
    )


def n_blocks(dim: int, block_size: int) -> int:
    """Blocks per row of ``dim`` dimensions (the last one may be partial)."""
    return math.ceil(dim / block_size)


def _blocked(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """(N, D) -> (N, G, block_size), zero padded at the end (zeros never raise an absmax)."""
    n, d = x.shape
    g = n_blocks(d, block_size)
    pad = g * block_size - d
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(n, g, block_size)


@register
class Blockwise(Scheme):
    name = "blockwise"
    summary = (
        "Block-wise absmax quantization (bitsandbytes style): one float32 absmax per block of dimensions, "
        "over the dynamic 8-bit map, NF4, FP4, linear or your levels."
    )
    Params = BlockwiseParams
    examples = (
        {},
        {"table": "dynamic", "block_size": 16},
        {"table": "nf4"},
        {"table": "nf4", "block_size": 20},
        {"table": "fp4", "block_size": 16},
        {"table": "linear", "bits": 3, "block_size": 8},
        {"levels": [-1.0, -0.5, -0.25, -0.075, 0.075, 0.25, 0.5, 1.0], "block_size": 24},
        {"table": "nf4", "block_size": 16, "rotate": True},
    )

    def layout(self, params: BlockwiseParams, dim: int) -> Layout:
        return Layout(
            bits=params.bits, symbols=dim, side_values=n_blocks(dim, params.block_size), levels=params.n_levels
        )

    def fit(self, params: BlockwiseParams, x: torch.Tensor):
        refuse_negative(params, x)  # dynamic_unsigned on signed data
        return params, {}

    def check_input(self, codec: Codec, x) -> None:
        refuse_negative(codec.params, x)

    def encode(self, codec: Codec, x: torch.Tensor):
        bs = codec.params.block_size
        _, th = level_tensors(codec.params, x.device)
        xb = _blocked(x, bs)
        amax = xb.abs().amax(dim=2)  # (N, G): the block's largest magnitude, exact
        sym = scaled_symbols(xb, amax.unsqueeze(2), th)
        return sym.reshape(x.shape[0], -1)[:, : x.shape[1]], amax

    def decode(self, codec: Codec, symbols: torch.Tensor, side):
        bs = codec.params.block_size
        lv, _ = level_tensors(codec.params, symbols.device)
        vals = _blocked(lv[symbols], bs) * side.unsqueeze(2)
        return vals.reshape(symbols.shape[0], -1)[:, : symbols.shape[1]]
