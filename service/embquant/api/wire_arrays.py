"""Request and answer arrays (the API's): a JSON (nested) list, or an array object
(`embquant.arrays`), decoded into numpy with the checks every request gets (shape,
numbers, NaN and Inf, float32 range, int64 range) and written back in the answer's form.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arrays import from_object, to_b64, to_bin
from ..codecs.checks import all_finite
from ..errors import InvalidInput


def to_wire(arr: np.ndarray, form: str) -> Any:
    """``form`` is "json", "base64" or "binary". For JSON the array itself is
    returned: the API's response class has orjson write it natively (float32 in its
    shortest exact form), with no Python list built in between."""
    if form == "base64":
        return to_b64(arr)
    if form == "binary":
        return to_bin(arr)
    return np.ascontiguousarray(arr)



#: float32's largest finite value: inputs strictly inside (-_F32_MAX, _F32_MAX) cast to
#: float32 without overflow.
_F32_MAX = float(np.finfo(np.float32).max)


def _not_finite(name: str, out: np.ndarray) -> InvalidInput:
    bad = np.argwhere(~np.isfinite(out))[0].tolist()
    return InvalidInput(f"{name}: NaN or Inf (or a value beyond float32 range) at index {bad}")


def from_wire(obj: Any, name: str, kind: str) -> np.ndarray:
    """Decode a wire array. ``kind`` is "float" (returns float32) or "int" (int64).

    Raises InvalidInput with a message naming ``name`` for anything malformed.
    """
    if isinstance(obj, dict):
        arr = from_object(obj, name)
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
        if arr.dtype == np.float32:  # msgpack and base64 bodies: no cast, so no overflow
            out = arr if arr.flags.writeable else arr.copy()
            if out.size and not all_finite(out):
                raise _not_finite(name, out)
            return out
        # min and max propagate NaN, and are Inf where any value is: two vectorised
        # passes, no temporary array; the index is searched only for the message.
        # Taken on the input, they also show that the cast cannot overflow, so the
        # common case needs no np.errstate (a context variable set and reset per call:
        # a few percent of a single-vector request's time on the event loop).
        if arr.size and arr.dtype.kind == "f":
            lo, hi = arr.min(), arr.max()
            if np.isfinite(lo) and np.isfinite(hi) and -_F32_MAX < lo and hi < _F32_MAX:
                return arr.astype(np.float32, copy=not arr.flags.writeable)
        with np.errstate(over="ignore"):
            out = arr.astype(np.float32, copy=not arr.flags.writeable)
        if out.size and not all_finite(out):
            raise _not_finite(name, out)
        return out
    if arr.dtype.kind == "f":
        if arr.size and not np.all(np.mod(arr, 1) == 0):
            raise InvalidInput(f"{name}: must be integers, got fractional values")
        if arr.size and np.abs(arr).max() >= 2.0**63:
            raise InvalidInput(f"{name}: integer out of int64 range")
    elif arr.dtype.kind not in "iub" and arr.size:
        raise InvalidInput(f"{name}: must be integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64:
        arr = arr.view(np.int64)
    return arr.astype(np.int64, copy=not arr.flags.writeable)
