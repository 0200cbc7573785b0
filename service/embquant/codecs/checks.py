"""Input checks of the codec verbs and the errors they raise, shared by the
reference path (`core`) and the compiled kernels, so both say the same thing."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import CodecMismatch, InvalidInput
from .base import Codec


_SMALL = 1 << 14


def all_finite(t: torch.Tensor | np.ndarray) -> bool:
    """Whether every value of t (a tensor on any device, or a numpy array) is finite;
    for large arrays and tensors by reductions, not a boolean array of t's size first
    (torch's isfinite(t).all() builds one, and is much slower on the CPU).

    numpy, float16 or float32 (the API's request arrays, a kernel's side values): up
    to _SMALL values, ``isfinite(t).all()`` (its boolean array is at most 16 KiB here,
    and it is faster than a widening sum at these sizes; nothing in it can warn, so a
    filter that turns numpy's warnings into errors cannot turn bad input into a 500);
    beyond, for a contiguous float32 array, its dot product with itself (one BLAS pass;
    it overflows only past 1.8e19), and where that is not finite, or the array is not
    contiguous, a min and a max (faster there than the widening sum), their overflow and
    NaN warnings silenced: here those are answers. Tensors, and float64 arrays: a sum in
    their own type, and the elementwise check only when it is not finite (a sum of large
    finite values can overflow too)."""
    if isinstance(t, np.ndarray):
        if t.dtype.kind != "f" or t.size == 0:
            return True
        if t.dtype.itemsize > 4 or t.size <= _SMALL:
            return bool(np.isfinite(t).all())
        with np.errstate(over="ignore", invalid="ignore"):
            if t.dtype == np.float32 and t.flags.c_contiguous:
                if math.isfinite(np.dot(v := t.reshape(-1), v)):
                    return True  # x . x: NaN or Inf anywhere makes it non-finite
            # (or values past 1.8e19 overflow it): the min and the max decide
            return bool(np.isfinite(t.min()) and np.isfinite(t.max()))
    if not t.is_floating_point() or t.numel() == 0:
        return True
    if bool(torch.isfinite(t.sum())):
        return True
    if t.device.type == "cpu":
        return bool(np.isfinite(t.detach().numpy()).all())
    return bool(torch.isfinite(t).all())


def check_vectors(x: torch.Tensor, dim: int | None = None, finite: bool = True) -> None:
    """Vectors must be a non-empty finite float (N, D) matrix, D == dim if given.
    ``finite=False`` leaves the NaN/Inf check to a kernel that makes it in its pass."""
    if x.dim() != 2:
        raise InvalidInput(f"vectors must be 2-D (rows, dims), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InvalidInput(f"vectors must not be empty, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise CodecMismatch(f"vectors have {x.shape[1]} dimensions, the codec was fitted for {dim}")
    if finite and not all_finite(x):
        raise InvalidInput("vectors hold NaN or Inf")


def check_code_shapes(codec: Codec, codes: torch.Tensor, side: torch.Tensor | None) -> None:
    """Shapes and side values against the codec (cheap: no symbol is looked at)."""
    lay = codec.layout
    if codes.dim() != 2 or codes.shape[0] == 0:
        raise CodecMismatch(f"codes must be a non-empty 2-D (rows, words) array, got shape {tuple(codes.shape)}")
    if codes.shape[1] != lay.words:
        raise CodecMismatch(
            f"codes have {codes.shape[1]} words per row, the codec needs {lay.words} "
            f"({lay.symbols} symbols of {lay.bits} bits)"
        )
    if lay.side_values:
        if side is None:
            raise CodecMismatch(f"this codec needs side values: float32 ({codes.shape[0]}, {lay.side_values})")
        if side.dim() != 2 or tuple(side.shape) != (codes.shape[0], lay.side_values):
            raise CodecMismatch(
                f"side values have shape {tuple(side.shape)}, expected ({codes.shape[0]}, {lay.side_values})"
            )
        if not all_finite(side):
            raise InvalidInput("side values hold NaN or Inf")
    elif side is not None and side.numel():
        raise CodecMismatch("this codec takes no side values, but some were sent")


def padding_error(row: int) -> CodecMismatch:
    return CodecMismatch(f"codes row {row}: unused bits of its words are not zero (corrupted codes?)")


def symbol_error(row: int, col: int, value: int, levels: int) -> CodecMismatch:
    return CodecMismatch(f"codes row {row}, symbol {col}: value {value} is out of range for a codec with {levels} levels")


RANGE_ERROR = (
    "these codes, side values and codec decode to values beyond float32 range (corrupted side values or codec?)"
)
