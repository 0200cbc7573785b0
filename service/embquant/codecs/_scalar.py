"""Shared helpers for scalar (per-coordinate) codebook schemes.

Encoding by thresholds: a symbol is the number of decision thresholds at or below
the value (``torch.bucketize(..., right=True)``). Comparisons are exact, so the
same float32 input gives the same symbol on every device, and a value beyond the
outermost threshold clips to the end level, never past it.
"""

from __future__ import annotations

import numpy as np
import torch


def midpoints(levels: np.ndarray) -> np.ndarray:
    """Nearest-level decision thresholds for sorted levels."""
    lv = np.asarray(levels, dtype=np.float64)
    return ((lv[:-1] + lv[1:]) / 2).astype(np.float32)


def bucketize(z: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Symbol index = count of thresholds <= z (int64, in [0, len(thresholds)])."""
    return torch.bucketize(z.contiguous(), thresholds.contiguous(), right=True)


def lookup(levels: torch.Tensor, symbols: torch.Tensor) -> torch.Tensor:
    return levels[symbols]
