"""Bit packing of per-row integer symbols into int64 words (a public contract).

For b bits per symbol (1..8 or 16), v = 64 // b symbols share one int64 word and a
row of L symbols takes W = ceil(L / v) words. Symbol j of a row sits in word j // v
at bit offset (j % v) * b, least significant bits first; unused bits are zero.
Words are two's-complement int64, so a symbol in the top bits can make a word
negative. Rows are packed independently: any row decodes on its own.
"""

from __future__ import annotations

import torch

from ..errors import CodecMismatch, InvalidInput

ALLOWED_BITS = tuple(range(1, 9)) + (16,)


def _check_bits(bits: int) -> None:
    if bits not in ALLOWED_BITS:
        raise InvalidInput(f"bits per symbol must be one of {ALLOWED_BITS}, got {bits}")


def symbols_per_word(bits: int) -> int:
    _check_bits(bits)
    return 64 // bits


def words_per_row(length: int, bits: int) -> int:
    """Number of int64 words that hold ``length`` symbols of ``bits`` bits."""
    v = symbols_per_word(bits)
    return -(-length // v)


def _shifts(bits: int, device: torch.device) -> torch.Tensor:
    v = 64 // bits
    return torch.arange(v, device=device, dtype=torch.int64) * bits


def pack(symbols: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack (N, L) integer symbols in [0, 2**bits) into (N, W) int64 words."""
    if symbols.dim() != 2:
        raise InvalidInput(f"symbols must be 2-D (rows, symbols), got shape {tuple(symbols.shape)}")
    v = symbols_per_word(bits)
    n, length = symbols.shape
    w = words_per_row(length, bits)
    s = symbols.to(torch.int64)
    pad = w * v - length
    if pad:
        s = torch.nn.functional.pad(s, (0, pad))
    s = s.view(n, w, v) << _shifts(bits, s.device)
    # The fields are disjoint, so a sum equals a bitwise OR; int64 addition wraps
    # in two's complement, which keeps the top field exact.
    return s.sum(dim=-1)


def unpack(words: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Unpack (N, W) int64 words into (N, length) int64 symbols; checks W."""
    if words.dim() != 2:
        raise CodecMismatch(f"codes must be 2-D (rows, words), got shape {tuple(words.shape)}")
    w = words_per_row(length, bits)
    if words.shape[1] != w:
        raise CodecMismatch(
            f"codes have {words.shape[1]} words per row, the codec needs {w} "
            f"({length} symbols of {bits} bits)"
        )
    mask = (1 << bits) - 1
    s = (words.to(torch.int64).unsqueeze(-1) >> _shifts(bits, words.device)) & mask
    return s.reshape(words.shape[0], -1)[:, :length]


def unused_masks(words: int, bits: int, length: int) -> list[int]:
    """Per word of a row, the int64 mask of its unused bits (0 where every bit is used):
    the top ``64 - v * bits`` bits of every word, and everything past the last symbol."""
    v = 64 // bits
    out = []
    for w in range(words):
        used = min(v, length - w * v) * bits
        out.append(0 if used >= 64 else ~((1 << used) - 1))
    return out


def padding_is_clean(words: torch.Tensor, bits: int, length: int) -> torch.Tensor:
    """Per row: True where every unused bit of every word is zero."""
    masks = unused_masks(words.shape[1], bits, length)
    if not any(masks):
        return torch.ones(words.shape[0], dtype=torch.bool, device=words.device)
    m = torch.tensor(masks, dtype=torch.int64, device=words.device)
    return ((words & m) == 0).all(dim=1)
