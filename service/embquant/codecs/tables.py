"""Named level tables (codebooks) for the table schemes (`codebook`, `blockwise`).

Every table is a sorted, read-only float32 numpy array of distinct levels in
[-1, 1] (or [0, 1] for the unsigned ones), meant to be scaled by an absmax.
Tables are computed once per process and cached; they are never rebuilt per
request.

- ``dynamic``: the signed dynamic 8-bit map of bitsandbytes' ``create_dynamic_map``
  (Dettmers, "8-Bit Approximations for Parallelism in Deep Learning"): a decimal
  exponent from 10**-6 to 10**0 and a linear fraction whose resolution grows with
  the exponent; 256 levels including 0 and 1.0 (the most negative is -0.99297).
- ``dynamic_unsigned``: the same for non-negative data, 256 levels in [0, 1].
- ``nf4``: NormalFloat4 (QLoRA): quantiles of N(0, 1), with an exact zero, 16 levels.
- ``fp4``: bitsandbytes' 4-bit float (1 sign, 2 exponent, 1 mantissa bit, normalised
  by 12). Its +0 and -0 are one level here, so it has 15 distinct levels in 4 bits.
- ``linear``: 2**bits evenly spaced levels from -1 to 1 (the seed's ``np.linspace``).

The dynamic map and NF4 are computed with float32 arithmetic as bitsandbytes does,
so they equal its tables bit for bit (tests/codecs/test_codebook.py checks this).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from ..errors import InvalidInput

#: Bits each fixed table needs; ``None`` means the caller picks (``linear``).
_NATIVE_BITS: dict[str, int | None] = {
    "dynamic": 8,
    "dynamic_unsigned": 8,
    "nf4": 4,
    "fp4": 4,
    "linear": None,
}

#: The level the 4-bit NormalFloat is anchored at (QLoRA, bitsandbytes' create_normal_map).
NF4_OFFSET = 0.9677083


def table_names() -> tuple[str, ...]:
    """Names ``get_table`` accepts, in a stable order."""
    return tuple(_NATIVE_BITS)


def native_bits(name: str) -> int | None:
    """The bit width a named table needs, or None when any width 1..8 works."""
    _check_name(name)
    return _NATIVE_BITS[name]


def _check_name(name: str) -> None:
    if name not in _NATIVE_BITS:
        raise InvalidInput(f"unknown level table {name!r}; known tables: {', '.join(_NATIVE_BITS)}")


def _frozen(values) -> np.ndarray:
    arr = np.array(values, dtype=np.float32)
    arr = np.unique(arr)  # sorted; merges +0 and -0
    arr.setflags(write=False)
    return arr


def create_dynamic_map(signed: bool = True, n: int = 7) -> np.ndarray:
    """The dynamic quantization map of the seed tutorial, as sorted float32 levels.

    For each decimal exponent ``10**(i - (n-1))``, i in 0..n-1, the interval
    [0.1, 1] is cut into 2**(i + 7 - n) (signed) or 2**(i + 8 - n) (unsigned) equal
    bins and the bin centres, times the exponent, are levels (mirrored for signed
    maps). When n < 7 the spare codes become extra linear levels at the largest
    exponent. 0 and 1.0 complete the map; it always has 256 entries.

    Arithmetic is float32 (torch.linspace) so the result matches bitsandbytes.
    """
    if not 1 <= n <= 7:
        raise InvalidInput(f"dynamic map exponent bits n must be in 1..7, got {n}")
    data: list[float] = []

    def centres(items: int, exponent: int) -> list[float]:
        edges = torch.linspace(0.1, 1, items + 1, dtype=torch.float32)
        mids = (edges[:-1] + edges[1:]) / 2.0
        return (mids * (10.0**exponent)).tolist()

    for i in range(n):
        items = 2 ** (i + 7 - n) if signed else 2 ** (i + 8 - n)
        c = centres(items, i - (n - 1))
        data += c
        if signed:
            data += [-v for v in c]
    extra = 2 ** (7 - n) - 1
    if not signed:
        extra *= 2
    if extra > 0:
        c = centres(extra, 0)
        data += c
        if signed:
            data += [-v for v in c]
    data += [0.0, 1.0]
    out = np.sort(np.array(data, dtype=np.float32))
    if out.size != 256:  # internal invariant, not an input check
        raise RuntimeError(f"dynamic map has {out.size} entries, expected 256")
    return out


def _nf4() -> np.ndarray:
    """NF4: 8 positive and 7 negative normal quantiles plus 0, normalised to [-1, 1]."""
    from scipy.special import ndtri

    pos = ndtri(torch.linspace(NF4_OFFSET, 0.5, 9, dtype=torch.float32)[:-1].double().numpy())
    neg = -ndtri(torch.linspace(NF4_OFFSET, 0.5, 8, dtype=torch.float32)[:-1].double().numpy())
    v = torch.tensor(np.concatenate([pos, [0.0], neg]), dtype=torch.float32).sort().values
    return (v / v.max()).numpy()


def _fp4() -> np.ndarray:
    """bitsandbytes FP4 magnitudes {0, 1/16, 2, 3, 4, 6, 8, 12} / 12, both signs."""
    mags = np.array([0.0, 0.0625, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0], dtype=np.float32) / np.float32(12.0)
    return np.concatenate([-mags, mags])


@lru_cache(maxsize=None)
def get_table(name: str, bits: int | None = None) -> np.ndarray:
    """The named table as sorted, distinct, read-only float32 levels.

    ``bits`` may be omitted for fixed tables (dynamic: 8, nf4/fp4: 4) and must
    match them when given; ``linear`` takes any bits in 1..8 (default 4).
    """
    _check_name(name)
    nb = _NATIVE_BITS[name]
    if nb is not None and bits is not None and bits != nb:
        raise InvalidInput(f"table {name!r} is a {nb}-bit table, got bits={bits}")
    if name == "linear":
        b = 4 if bits is None else bits
        if not isinstance(b, int) or not 1 <= b <= 8:
            raise InvalidInput(f"linear table bits must be in 1..8, got {bits!r}")
        return _frozen(np.linspace(-1.0, 1.0, 1 << b))
    if name == "dynamic":
        return _frozen(create_dynamic_map(signed=True))
    if name == "dynamic_unsigned":
        return _frozen(create_dynamic_map(signed=False))
    if name == "nf4":
        return _frozen(_nf4())
    return _frozen(_fp4())


def bits_for(n_levels: int) -> int:
    """Bits needed to index n levels (at least 1)."""
    return max(1, math.ceil(math.log2(n_levels)))


# The fixed tables, computed once at import (cheap: well under a millisecond each).
DYNAMIC = get_table("dynamic")
DYNAMIC_UNSIGNED = get_table("dynamic_unsigned")
NF4 = get_table("nf4")
FP4 = get_table("fp4")
