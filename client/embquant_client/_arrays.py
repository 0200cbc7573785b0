"""Arrays on the wire (raw little-endian bytes in msgpack bodies, base64 of them or
JSON lists in JSON bodies) and the bit helpers for binary vector codes."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np


def encode_array(a: np.ndarray, form: str = "base64") -> Any:
    """``form``: "msgpack" (raw bytes, for a msgpack body), "base64" or "json" (lists)."""
    a = np.ascontiguousarray(a)
    if form == "json":
        return a.tolist()
    le = a.astype(a.dtype.newbyteorder("<"), copy=False)
    if form == "msgpack":
        return {"dtype": a.dtype.name, "shape": list(a.shape), "data": le.data.cast("B") if le.size else b""}
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": base64.b64encode(le.tobytes()).decode("ascii")}


def decode_array(obj: Any, dtype: str) -> np.ndarray:
    if obj is None:
        return None
    if isinstance(obj, dict):
        data = obj["data"]
        raw = data if isinstance(data, (bytes, bytearray, memoryview)) else base64.b64decode(data)
        dt = np.dtype(obj["dtype"]).newbyteorder("<")
        # a writable array of its own, in native byte order
        return np.frombuffer(raw, dtype=dt).astype(np.dtype(obj["dtype"]), copy=True).reshape(obj["shape"])
    return np.asarray(obj, dtype=dtype)


def as_matrix(vectors: Any) -> np.ndarray:
    """float32 (N, D); a single 1-D vector becomes one row."""
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2:
        raise ValueError(f"vectors must be 1-D or 2-D, got shape {x.shape}")
    return x


def unpack_bits(codes: np.ndarray, num_bits: int) -> np.ndarray:
    """(N, W) int64 words -> (N, num_bits) uint8 bits, by the service's packing rule (b=1)."""
    c = np.ascontiguousarray(codes, dtype=np.int64).view(np.uint64)
    shifts = np.arange(64, dtype=np.uint64)
    bits = ((c[..., None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return bits.reshape(c.shape[0], -1)[:, :num_bits]


def to_decimal(bits: np.ndarray) -> np.ndarray:
    """Rows of bits (..., K) to integers, first bit most significant (as bitcodes-pytorch)."""
    b = np.asarray(bits).astype(np.int64)
    k = b.shape[-1]
    if k > 63:
        raise ValueError(f"to_decimal handles at most 63 bits per integer, got {k}")
    weights = 1 << np.arange(k - 1, -1, -1, dtype=np.int64)
    return (b * weights).sum(-1)


def to_bits(indices: np.ndarray, num_bits: int) -> np.ndarray:
    """Integers to rows of ``num_bits`` bits, first bit most significant (as bitcodes-pytorch)."""
    idx = np.asarray(indices, dtype=np.int64)
    shifts = np.arange(num_bits - 1, -1, -1, dtype=np.int64)
    return ((idx[..., None] >> shifts) & 1).astype(np.int64)
