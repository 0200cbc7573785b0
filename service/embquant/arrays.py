"""Array objects: little-endian bytes with dtype and shape,
``{"dtype": "float32", "shape": [N, D], "data": ...}``, whose data is base64 text in
JSON and raw bytes in msgpack (read with one copy, never element by element). A neutral
leaf: codecs keep their state in this form, the API reads and writes request arrays
with it (`api.wire_arrays`: JSON lists too).

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
#: little-endian wire dtypes (native or explicit: equal dtypes) -> their names
_NAMES = {np.dtype(n).newbyteorder("<"): n for n in WIRE_DTYPES}


def _little(arr: np.ndarray) -> tuple[np.ndarray, str]:
    """The array C-contiguous in little-endian order (itself when it already is), and
    its dtype's wire name. numpy builds ``dtype.name`` in Python on every read; the
    names of the few wire dtypes are looked up instead (single-vector answers spent
    about 5% of their event-loop time there)."""
    name = _NAMES.get(arr.dtype)
    if name is None or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False)
        name = _NAMES.get(arr.dtype) or arr.dtype.name
    return arr, name


def to_b64(arr: np.ndarray) -> dict[str, Any]:
    a, name = _little(arr)
    return {
        "dtype": name,
        "shape": list(a.shape),
        # from the array's own buffer: no bytes copy of it first (a 16 MiB answer's
        # peak memory is then the array, the base64 text and its JSON)
        "data": base64.b64encode(a.data.cast("B") if a.size else b"").decode("ascii"),
    }


def to_bin(arr: np.ndarray) -> dict[str, Any]:
    """The array object with raw little-endian bytes (msgpack bodies)."""
    a, name = _little(arr)
    return {"dtype": name, "shape": list(a.shape), "data": a.data.cast("B") if a.size else b""}


def from_object(obj: dict[str, Any], name: str) -> np.ndarray:
    """An array object: data as base64 text (JSON) or raw bytes (msgpack). The
    result may be a read-only view of the request's bytes."""
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
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = data
    elif isinstance(data, str):
        try:
            raw = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidInput(f"{name}: data is not valid base64 ({e})") from None
    else:
        raise InvalidInput(f"{name}: data must be a base64 string (JSON) or bytes (msgpack)")
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
        arr = np.frombuffer(raw, dtype=dt).reshape(shape)
    except ValueError as e:  # e.g. an empty array whose other axes overflow numpy's index type
        raise InvalidInput(f"{name}: shape {shape} cannot be an array ({e})") from None
    # native byte order (a no-op on little-endian machines); from_wire makes it writable
    return arr.astype(dt.newbyteorder("="), copy=False)


def from_b64(obj: dict[str, Any], name: str) -> np.ndarray:
    """An array object as a writable array of its own (codec state)."""
    return np.array(from_object(obj, name))
