from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._arrays import unpack_bits


@dataclass
class Fitted:
    """A codec from /fit: pass it to quantize(codec=...) for every batch of a collection."""

    codec: dict[str, Any]
    layout: dict[str, Any] = field(default_factory=dict)
    #: the service's id of the codec: later requests send it instead of the codec
    codec_id: str | None = None


@dataclass
class Encoded:
    """What /quantize returned: store ``codes`` (and ``side``) per row, the codec once."""

    codes: np.ndarray  # int64 (N, W)
    side: np.ndarray | None  # float32 (N, G) or None
    codec: dict[str, Any] | None
    shape: tuple[int, int]
    layout: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, float] | None = None
    codec_id: str | None = None

    def bits(self) -> np.ndarray:
        """The code bits per row, (N, symbols*bits) uint8 (for 1-bit codes: the binary code)."""
        n_bits = self.layout.get("symbols", 0) * self.layout.get("bits", 1)
        return unpack_bits(self.codes, n_bits)

    def __len__(self) -> int:
        return self.codes.shape[0]


@dataclass
class Scored:
    """What /score returned: per query, the best codes' ``indices`` (rows of the codes
    sent) and their ``scores``, best first (``l2``: squared distances, smallest
    first); with ``all=True``, ``scores`` is (Q, N) and ``indices`` None."""

    scores: np.ndarray
    indices: np.ndarray | None
    metric: str = "dot"
    codec_id: str | None = None
