"""codebook: non-linear codebook quantization (bitsandbytes-style).

Each vector is divided by its absmax (its largest magnitude) and every coordinate
becomes the index of the nearest level of a codebook in [-1, 1]: a named table
(`tables`: the dynamic 8-bit map, NF4, FP4, evenly spaced) or levels the caller
gives. Decoding looks the level up and multiplies by the absmax, which travels as
one float32 side value per vector (or, with ``scale="codec"``, is learned once at
fit time and stored in the codec, so rows carry no side values).

Nearest level is found by thresholds (the midpoints between levels, `_scalar`),
never by a float argmin, so a vector gets the same symbols on every device.

This module also holds the parameter base and level helpers that `blockwise`
shares.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator

from ..errors import CodecMismatch, InvalidInput
from . import tables
from ._scalar import bucketize, midpoints
from .base import Codec, Layout, Scheme, RotatableParams, require_state
from .registry import register

TableName = Literal["dynamic", "dynamic_unsigned", "nf4", "fp4", "linear"]

#: Most levels a user codebook may have (8-bit symbols).
MAX_LEVELS = 256


class LevelParams(RotatableParams):
    """Parameters that pick the levels: a named table, or explicit levels.

    After validation ``bits`` is always resolved, and ``table`` is set unless
    ``levels`` was given (then it is None), so a stored codec does not depend on
    today's defaults. Subclasses change the default table by redeclaring ``table``.
    """

    table: TableName | None = Field(
        "nf4", description="named level table (dynamic, dynamic_unsigned: 8 bits; nf4, fp4: 4 bits; linear: any bits)"
    )
    bits: int | None = Field(None, ge=1, le=8, description="bits per dimension; only `linear` lets you choose")
    levels: tuple[float, ...] | None = Field(
        None,
        min_length=2,
        max_length=MAX_LEVELS,
        description="your own codebook instead of a table: 2..256 strictly increasing finite levels, in units of absmax",
    )

    @field_validator("levels")
    @classmethod
    def _check_levels(cls, v):
        if v is None:
            return v
        arr = np.asarray(v, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError("levels must be finite numbers (no NaN or Inf)")
        with np.errstate(over="ignore"):
            f32 = arr.astype(np.float32)
        if not np.isfinite(f32).all():
            raise ValueError("levels must fit in float32")
        d = np.diff(f32)
        if (d == 0).any():
            i = int(np.nonzero(d == 0)[0][0])
            raise ValueError(f"levels must be distinct (as float32): levels[{i}] and levels[{i + 1}] are both {v[i]}")
        if (d < 0).any():
            i = int(np.nonzero(d < 0)[0][0])
            raise ValueError(f"levels must be sorted ascending: levels[{i}]={v[i]} > levels[{i + 1}]={v[i + 1]}")
        return tuple(float(x) for x in f32)

    @model_validator(mode="after")
    def _resolve(self):
        if self.levels is not None:
            if self.table is not None and "table" in self.model_fields_set:
                raise ValueError("give table or levels, not both")
            object.__setattr__(self, "table", None)
            need = tables.bits_for(len(self.levels))
            if self.bits is not None and self.bits != need:
                raise ValueError(f"{len(self.levels)} levels take {need} bits; bits={self.bits} was given (leave it out)")
            object.__setattr__(self, "bits", need)
            return self
        table = self.table if self.table is not None else type(self).model_fields["table"].default
        nb = tables.native_bits(table)
        if nb is not None and self.bits is not None and self.bits != nb:
            raise ValueError(f"table {table!r} is a {nb}-bit table, got bits={self.bits}")
        if table == "linear" and self.bits == 1:
            # Two levels, -1 and +1: every coordinate decodes to +- the absmax (relative
            # squared error 6.2 per vector, 3.8 per block of 64 on MiniLM: worse than zeros).
            raise ValueError(
                "table 'linear' needs bits >= 2: with 1 bit its levels are -1 and +1, so every value decodes to "
                "plus or minus the largest magnitude (an error several times the vector's own energy); "
                "use the binary scheme (sign bits times the mean |x|) or lloyd with bits=1"
            )
        if table == "dynamic_unsigned" and self.rotate:
            raise ValueError(
                "table 'dynamic_unsigned' is for non-negative data and rotate=true makes coordinates signed "
                "(their negative values would decode to 0); use table 'dynamic' with rotate, or rotate=false"
            )
        object.__setattr__(self, "table", table)
        object.__setattr__(self, "bits", nb if nb is not None else (self.bits or 4))
        return self

    def level_values(self) -> np.ndarray:
        """The resolved levels, sorted float32 (cached for tables)."""
        if self.levels is not None:
            return np.asarray(self.levels, dtype=np.float32)
        return tables.get_table(self.table, self.bits)

    @property
    def n_levels(self) -> int:
        return len(self.levels) if self.levels is not None else len(tables.get_table(self.table, self.bits))


@lru_cache(maxsize=512)
def _device_tables(key: tuple, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    lv = np.asarray(key[1], dtype=np.float32) if key[0] == "levels" else tables.get_table(key[1], key[2])
    return (
        torch.from_numpy(np.array(lv, dtype=np.float32)).to(device),
        torch.from_numpy(midpoints(lv)).to(device),
    )


def level_tensors(params: LevelParams, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(levels, thresholds) float32 tensors on ``device``, built once per device."""
    key = ("levels", params.levels) if params.levels is not None else ("table", params.table, params.bits)
    return _device_tables(key, str(device))


def refuse_negative(params: LevelParams, x: torch.Tensor | np.ndarray) -> None:
    """``dynamic_unsigned`` has no negative levels: a negative value would decode to 0
    (half of a signed embedding lost, relative squared error ~0.5 on MiniLM). Refuse
    such input, naming how many values are negative, the first and the smallest."""
    if params.table != "dynamic_unsigned":
        return
    t = torch.as_tensor(x)
    neg = t < 0
    if not bool(neg.any()):
        return
    n = int(neg.sum())
    r, c = (int(v) for v in neg.nonzero()[0])
    raise InvalidInput(
        f"table 'dynamic_unsigned' is for non-negative data, but {n} of {t.numel()} values are negative "
        f"(the first at row {r}, dimension {c}: {float(t[r, c]):.6g}; the smallest {float(t.min()):.6g}); "
        "they would all decode to 0: use table 'dynamic' (signed)"
    )


def scaled_symbols(x: torch.Tensor, absmax: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """Nearest-level symbols of x / absmax (absmax broadcast; 0 means an all-zero group)."""
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    return bucketize(x / safe, thresholds)


class CodebookParams(LevelParams):
    scale: Literal["row", "codec"] = Field(
        "row", description="row: each vector's absmax is a side value; codec: one absmax learned at fit, no side values"
    )


@register
class Codebook(Scheme):
    name = "codebook"
    summary = (
        "Non-linear codebook (dynamic 8-bit map, NF4, FP4, linear, or your levels) scaled by each vector's absmax."
    )
    Params = CodebookParams
    examples = (
        {},
        {"table": "fp4"},
        {"table": "dynamic"},
        {"table": "linear", "bits": 3},
        {"table": "linear", "bits": 2},
        {"levels": [-1.0, -0.5, -0.25, -0.075, 0.075, 0.25, 0.5, 1.0]},
        {"levels": [-1.0, 0.0, 1.0]},
        {"table": "nf4", "scale": "codec"},
        {"table": "dynamic", "scale": "codec"},
        {"table": "nf4", "rotate": True},
    )

    # Only scale="codec" learns from the sample (one absmax); the default does not.
    data_dependent = False

    def learns(self, params: CodebookParams) -> bool:
        return params.scale == "codec"

    def layout(self, params: CodebookParams, dim: int) -> Layout:
        return Layout(bits=params.bits, symbols=dim, side_values=1 if params.scale == "row" else 0, levels=params.n_levels)

    def fit(self, params: CodebookParams, x: torch.Tensor):
        refuse_negative(params, x)
        if params.scale != "codec":
            return params, {}
        amax = float(x.abs().max())
        if not amax > 0:
            raise InvalidInput('scale="codec" needs a sample with a non-zero value to learn its absmax')
        return params, {"absmax": np.array([amax], dtype=np.float32)}

    def check_input(self, codec: Codec, x: np.ndarray) -> None:
        """Input a request may not encode with this codec (the service asks before encoding)."""
        refuse_negative(codec.params, x)

    def check_state(self, codec: Codec) -> None:
        if codec.params.scale == "codec":
            require_state(codec, "absmax", (1,))
            if not float(codec.state["absmax"][0]) > 0:
                raise CodecMismatch(f"codec absmax must be positive, got {float(codec.state['absmax'][0])}")

    def _absmax(self, codec: Codec, x: torch.Tensor) -> torch.Tensor:
        if codec.params.scale == "codec":
            return codec.tensors(x.device)["absmax"].view(1, 1)
        return x.abs().amax(dim=1, keepdim=True)

    def encode(self, codec: Codec, x: torch.Tensor):
        _, th = level_tensors(codec.params, x.device)
        amax = self._absmax(codec, x)
        sym = scaled_symbols(x, amax, th)
        return sym, (amax if codec.params.scale == "row" else None)

    def decode(self, codec: Codec, symbols: torch.Tensor, side):
        lv, _ = level_tensors(codec.params, symbols.device)
        amax = side if codec.params.scale == "row" else codec.tensors(symbols.device)["absmax"].view(1, 1)
        return lv[symbols] * amax
