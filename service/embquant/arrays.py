"""Arrays on the wire: a JSON (nested) list, or base64 of little-endian bytes with
dtype and shape: ``{"dtype": "float32", "shape": [N, D], "data": "<base64>"}``.

JSON numbers are IEEE doubles in most readers (JavaScript among them), so int64
code words above 2**53 lose precision there: the base64 form is exact everywhere.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np

from .errors import InvalidInput

#: Arrays here are matrices or vectors; a few more axes are harmless, numpy's 64 is not.
MAX_NDIM = 4
WIRE_DTYPES = {"float32", "float64", "float16", "int64", "int32", "uint8", "int8", "uint64"}


def to_b64(arr: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)
    return {
        "dtype": a.dtype.name,
        "shape": list(a.shape),
        "data": base64.b64encode(a.tobytes()).decode("ascii"),
    }


def to_wire(arr: np.ndarray, form: str) -> Any:
    """``form`` is "json" or "base64". For JSON the array itself is returned: the
    API's response class has orjson write it natively (float32 in its shortest
    exact form), with no Python list built in between."""
    if form == "base64":
        return to_b64(arr)
    return np.ascontiguousarray(arr)


def from_b64(obj: dict[str, Any], name: str) -> np.ndarray:
    dtype = obj.get("dtype")
    shape = obj.get("shape")
    data = obj.get("data")
    if not isinstance(dtype, str) or dtype not in WIRE_DTYPES:
        raise InvalidInput(f"{name}: dtype must be one of {sorted(WIRE_DTYPES)}, got {dtype!r}")
    if not isinstance(shape, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**40 for s in shape
    ):
        raise InvalidInput(f"{name}: shape must be a list of non-negative integers, got {shape!r}")
    if len(shape) > MAX_NDIM:
        raise InvalidInput(f"{name}: shape has {len(shape)} dimensions; at most {MAX_NDIM}")
    if not isinstance(data, str):
        raise InvalidInput(f"{name}: data must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidInput(f"{name}: data is not valid base64 ({e})") from None
    dt = np.dtype(dtype).newbyteorder("<")
    # Python integers: numpy's int64 product wraps around (2**32 x 2**32 is 0) and
    # would let an empty payload pass as a gigantic shape.
    count = math.prod(shape)
    if len(raw) != count * dt.itemsize:
        raise InvalidInput(
            f"{name}: {len(raw)} bytes do not match dtype {dtype} and shape {shape} "
            f"({count * dt.itemsize} bytes expected)"
        )
    try:
        return np.frombuffer(raw, dtype=dt).astype(dt.newbyteorder("="), copy=True).reshape(shape)
    except ValueError as e:  # e.g. an empty array whose other axes overflow numpy's index type
        raise InvalidInput(f"{name}: shape {shape} cannot be an array ({e})") from None


def from_wire(obj: Any, name: str, kind: str) -> np.ndarray:
    """Decode a wire array. ``kind`` is "float" (returns float32) or "int" (int64).

    Raises InvalidInput with a message naming ``name`` for anything malformed.
    """
    if isinstance(obj, dict):
        arr = from_b64(obj, name)
    elif isinstance(obj, list):
        try:
            arr = np.asarray(obj)
        except ValueError:
            raise InvalidInput(f"{name}: rows have different lengths (ragged array)") from None
        if arr.dtype == object:
            raise InvalidInput(f"{name}: rows have different lengths or hold non-numbers")
        if arr.size and arr.dtype.kind not in "iufb":
            raise InvalidInput(f"{name}: must hold numbers, got {arr.dtype.kind!r} values")
    else:
        raise InvalidInput(f"{name}: expected a list of rows or a base64 object, got {type(obj).__name__}")
    if kind == "float":
        if arr.dtype.kind not in "iuf" and arr.size:
            raise InvalidInput(f"{name}: must be numbers, got dtype {arr.dtype}")
        with np.errstate(over="ignore"):
            out = arr.astype(np.float32)
        if out.size and not np.isfinite(out).all():
            bad = np.argwhere(~np.isfinite(out))[0].tolist()
            raise InvalidInput(
                f"{name}: NaN or Inf (or a value beyond float32 range) at index {bad}"
            )
        return out
    if arr.dtype.kind == "f":
        if arr.size and not np.all(np.mod(arr, 1) == 0):
            raise InvalidInput(f"{name}: must be integers, got fractional values")
        if arr.size and np.abs(arr).max() >= 2.0**63:
            raise InvalidInput(f"{name}: integer out of int64 range")
    elif arr.dtype.kind not in "iub" and arr.size:
        raise InvalidInput(f"{name}: must be integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64:
        return arr.view(np.int64)
    return arr.astype(np.int64)
