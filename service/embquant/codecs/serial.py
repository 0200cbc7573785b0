"""Codecs from their JSON form: versions, shapes and values checked, unknown state
refused. (The JSON form itself is `Codec.to_json`.)"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..arrays import from_b64
from ..errors import CodecMismatch, InvalidInput, UnsupportedVersion
from .base import FORMAT_VERSION, Codec
from .core import check_state
from .registry import get_scheme, parse_params


def codec_from_json(obj: Any) -> Codec:
    """Rebuild a codec from its JSON form, checking versions, shapes and values."""
    if not isinstance(obj, dict):
        raise InvalidInput(f"codec must be an object, got {type(obj).__name__}")
    fv = obj.get("format_version")
    if fv != FORMAT_VERSION:
        raise UnsupportedVersion(f"codec format_version {fv!r} is not supported (this server reads {FORMAT_VERSION})")
    scheme = get_scheme(obj.get("scheme"))
    sv = obj.get("scheme_version")
    if sv != scheme.version:
        raise UnsupportedVersion(
            f"codec is for {scheme.name} version {sv!r}; this server implements version {scheme.version}"
        )
    dim = obj.get("dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise InvalidInput(f"codec dim must be a positive integer, got {dim!r}")
    params = parse_params(scheme, obj.get("params") or {})
    raw_state = obj.get("state") or {}
    if not isinstance(raw_state, dict):
        raise InvalidInput("codec state must be an object of arrays")
    state = {}
    for k, v in raw_state.items():
        if not isinstance(v, dict):
            raise InvalidInput(f"codec state {k!r} must be a base64 array object")
        arr = from_b64(v, f"codec.state.{k}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InvalidInput(f"codec state {k!r} holds NaN or Inf")
        state[k] = arr
    codec = Codec(scheme, params, dim, state)
    # Every array a scheme uses is named by a require_state call in its check_state:
    # whatever it did not ask for is junk (it would only cost memory in the cache).
    codec._cache["required"] = required = set()
    check_state(codec)  # the scheme's arrays, and a centred codec's mean
    del codec._cache["required"]
    unknown = sorted(set(state) - required)
    if unknown:
        known = f"expected {sorted(required)}" if required else "this codec has no state"
        raise CodecMismatch(f"codec state has unknown arrays {unknown}; {known}")
    return codec
