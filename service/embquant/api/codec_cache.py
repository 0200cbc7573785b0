"""Parsed codecs by content, so a collection's codec is parsed (and copied to the
device) once, not per request; bounded in entries and in bytes.

A codec's cost is its learned arrays plus what encoding and decoding derive from
them and keep on the codec (device copies, decoding plans): a ``transform`` codec of
dimension 2048 holds 16 MiB of basis and several times that once used. The cost of
an entry is measured again each time it is used, so a codec that grows once it
is used is accounted for at its next use, and least recently used entries leave
until both bounds hold (the entry just used always stays: the request needs it).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import orjson
import torch

from .. import codecs
from ..errors import InvalidInput, PayloadTooLarge


def nbytes(obj: Any, _depth: int = 0) -> int:
    """Bytes held by the arrays and tensors in ``obj`` (dicts, lists, tuples of them)."""
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if _depth > 4:
        return 0
    if isinstance(obj, dict):
        try:
            values = list(obj.values())  # the device thread may add entries meanwhile
        except RuntimeError:
            return 0
        return sum(nbytes(v, _depth + 1) for v in values)
    if isinstance(obj, (list, tuple)):
        return sum(nbytes(v, _depth + 1) for v in obj)
    return 0


def codec_cost(codec: codecs.Codec) -> int:
    # On the CPU the device copies share the state's memory and count twice: an
    # over-estimate, which errs on the bounded side.
    return nbytes(dict(codec.state)) + nbytes(codec._cache)


class CodecCache:
    def __init__(self, entries: int = 256, max_bytes: int = 256 << 20, *, max_dim: int | None = None,
                 max_codec_bytes: int | None = None):
        self.entries = entries
        self.max_bytes = max_bytes
        self.max_dim = max_dim
        self.max_codec_bytes = max_codec_bytes
        self._d: OrderedDict[str, codecs.Codec] = OrderedDict()
        self._cost: dict[str, int] = {}
        self.bytes = 0
        # large bodies are parsed in the thread pool: several threads may be here at once
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._d)

    def get(self, obj: dict[str, Any]) -> codecs.Codec:
        """The parsed codec for its JSON form; raises InvalidInput (or PayloadTooLarge)
        with a message for anything malformed, too deep, too wide or too large."""
        if isinstance(obj, dict) and self.max_dim is not None:
            dim = obj.get("dim")
            if isinstance(dim, int) and not isinstance(dim, bool) and dim > self.max_dim:
                raise InvalidInput(f"codec dim {dim} exceeds the limit of {self.max_dim} dimensions (EMBQUANT_MAX_DIM)")
        try:
            blob = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError as e:
            # orjson writes at most 254 levels of nesting; a codec has four
            why = "nested more than 254 levels deep" if "ecursion" in str(e) else str(e)
            raise InvalidInput(f"codec is not a JSON object of arrays and parameters: {why}") from None
        if self.max_codec_bytes is not None and len(blob) > self.max_codec_bytes:
            raise PayloadTooLarge(
                f"codec of {len(blob)} bytes exceeds the limit of {self.max_codec_bytes} bytes (EMBQUANT_MAX_CODEC_BYTES)"
            )
        key = hashlib.sha256(blob).hexdigest()
        with self._lock:
            c = self._d.get(key)
            if c is not None:
                self._d.move_to_end(key)
                self._account(key, c)
                return c
        c = codecs.codec_from_json(obj)  # outside the lock: parsing may take a while
        with self._lock:
            c = self._d.setdefault(key, c)
            self._d.move_to_end(key)
            self._account(key, c)
        return c

    def _account(self, key: str, codec: codecs.Codec) -> None:
        cost = codec_cost(codec)
        self.bytes += cost - self._cost.get(key, 0)
        self._cost[key] = cost
        while len(self._d) > 1 and (len(self._d) > self.entries or self.bytes > self.max_bytes):
            old, _ = self._d.popitem(last=False)
            self.bytes -= self._cost.pop(old, 0)
