"""The codec core: a Scheme (a family's pure tensor functions plus a typed,
frozen parameter model) and a Codec (scheme + resolved parameters + learned
state, a small versioned JSON value).

A scheme maps each row to ``Layout.symbols`` integer symbols of ``Layout.bits``
bits (packed into int64 words by `packing`) and ``Layout.side_values`` float32 side
values. Encoding is a pure function of one row given the codec: the same row
gives the same codes whatever else is in the batch.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Hashable, Mapping, TypeVar

import numpy as np
import orjson
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..arrays import to_b64
from ..errors import CodecMismatch

#: Version of the codec JSON envelope. A scheme versions its own parameters and
#: state separately (``Scheme.version``).
FORMAT_VERSION = 1

#: Parameters added after codecs were stored, with the default a codec without them
#: means. `Codec.to_json` leaves them out at that default (so older codecs keep their
#: JSON and ids) and an older codec, parsed, gets it. A new parameter of an existing
#: scheme goes here, with a default that keeps what the scheme did before.
ADDED_LATER = {"center": False, "trellis": False}

T = TypeVar("T")


class SchemeParams(BaseModel):
    """Base of every scheme's parameter model: frozen, no unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class RotatableParams(SchemeParams):
    """Mixin for scalar schemes: an optional seeded orthogonal transform applied
    before quantizing and undone after decoding (see `codecs.rotation`)."""

    rotate: bool = Field(False, description="rotate by a seeded randomised Hadamard transform before quantizing")
    rotation_seed: int = Field(0, ge=0, lt=2**31, description="seed of the rotation (stored in the codec)")
    center: bool = Field(
        False,
        description="subtract the mean of the fitted sample before quantizing (kept in the codec, added back "
        "when decoding): the scheme then quantizes what varies, not the collection's common direction. "
        "The codec learns that mean, so it is fitted (POST /fit, or on a /quantize request's own rows)",
    )


@dataclass(frozen=True)
class Layout:
    """How one encoded row looks."""

    bits: int  # bits per symbol (1..8 or 16)
    symbols: int  # symbols per row
    side_values: int = 0  # how many float32 side values each row has (scales, zero points...)
    levels: int | None = None  # valid symbols are [0, levels); None means 2**bits

    @functools.cached_property
    def words(self) -> int:  # on every request's path: computed once per layout
        from .packing import words_per_row

        return words_per_row(self.symbols, self.bits)

    def bits_per_vector(self) -> int:
        """Storage per row: the packed words plus float32 side values."""
        return 64 * self.words + 32 * self.side_values

    @property
    def side(self) -> int:
        """The old name of `side_values` (a count, not the values), kept for one release."""
        return self.side_values


class Scheme(ABC):
    """One quantization family. Subclasses are stateless; register with
    ``@register``. Tensors passed in are float32 (N, D) on the worker's device."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    summary: ClassVar[str] = ""
    Params: ClassVar[type[SchemeParams]]
    #: True when `fit` learns from data (the codec then depends on the sample).
    data_dependent: ClassVar[bool] = False
    #: Parameter sets the generic tests run through every check.
    examples: ClassVar[tuple[dict[str, Any], ...]] = ({},)

    def learns(self, params: SchemeParams) -> bool:
        """True when `fit` with these parameters depends on the sample. False means the
        codec is a function of (params, dim) alone, so the service resolves it once
        when a request names the scheme, and such requests batch together."""
        return self.data_dependent

    def state_bytes(self, params: SchemeParams, dim: int) -> int | None:
        """An upper bound of the raw bytes of the state a fit with these parameters can
        learn for ``dim`` dimensions (None: not known ahead), so a service can refuse a
        codec too large to send back before it spends a fit on it."""
        return None

    def fit(self, params: SchemeParams, x: torch.Tensor) -> tuple[SchemeParams, dict[str, np.ndarray]]:
        """Resolve parameters (searches such as beta=None) and learn state from x."""
        return params, {}

    @abstractmethod
    def layout(self, params: SchemeParams, dim: int) -> Layout: ...

    @abstractmethod
    def encode(self, codec: "Codec", x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (symbols int64 (N, L), side float32 (N, G) or None)."""

    @abstractmethod
    def decode(self, codec: "Codec", symbols: torch.Tensor, side: torch.Tensor | None) -> torch.Tensor:
        """Return float32 (N, dim) reconstructions."""


@dataclass(frozen=True, eq=False)
class Codec:
    """A fitted, fully resolved codec. Immutable; safe to share across threads."""

    scheme: Scheme
    params: SchemeParams
    dim: int
    state: Mapping[str, np.ndarray] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @property
    def layout(self) -> Layout:
        if "layout" not in self._cache:
            self._cache["layout"] = self.scheme.layout(self.params, self.dim)
        return self._cache["layout"]

    def derived(self, key: Hashable, make: Callable[[], T]) -> T:
        """State derived from the codec (tables on a device, a kernel's arrays),
        built once by ``make()`` and kept with the codec. Thread-safe; the one
        place schemes and kernels keep per-codec caches."""
        try:
            return self._cache[key]
        except KeyError:
            pass
        with self._lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    def tensors(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """The learned state as tensors on ``device`` (copied once per device)."""
        return self.derived(
            ("tensors", str(device)),
            lambda: {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in self.state.items()},
        )

    def to_json(self) -> dict[str, Any]:
        params = self.params.model_dump(mode="json")
        for name, default in ADDED_LATER.items():
            # left out at their default, so a codec's JSON, and its id (the hash of that
            # JSON), are what they were before the parameter existed
            if name in params and params[name] == default:
                del params[name]
        return {
            "format_version": FORMAT_VERSION,
            "scheme": self.scheme.name,
            "scheme_version": self.scheme.version,
            "dim": self.dim,
            "params": params,
            "state": {k: to_b64(v) for k, v in sorted(self.state.items())},
        }

    @property
    def key(self) -> str:
        """Content hash: two codecs with the same key encode identically."""
        if "key" not in self._cache:
            blob = orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS)
            self._cache["key"] = hashlib.sha256(blob).hexdigest()[:32]
        return self._cache["key"]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Codec) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


def require_state(codec: Codec, name: str, shape: tuple[int, ...], dtype: str = "float32") -> None:
    """Helper for ``Scheme.check_state``: a clear error for a missing or misshapen array.
    An array no ``require_state`` names is refused by `codec_from_json` as unknown."""
    required = codec._cache.get("required")
    if required is not None:
        required.add(name)
    arr = codec.state.get(name)
    if arr is None:
        raise CodecMismatch(f"codec state lacks {name!r}")
    if tuple(arr.shape) != tuple(shape) or arr.dtype.name != dtype:
        raise CodecMismatch(
            f"codec state {name!r} has shape {tuple(arr.shape)} and dtype {arr.dtype}, "
            f"expected {tuple(shape)} {dtype}"
        )
