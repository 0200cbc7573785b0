"""distributional: distributional quantization (seed 000, the ``distquant`` package).

A compander: standardise with the codec's location and scale, map through a CDF
F, cut [0, 1] into n equal-probability bins, and decode a bin at the quantile of
its probability midpoint: ``loc + scale * beta' * F^-1((i + 0.5) / n)``.

Unlike distquant, location and scale are learned once at fit time and stored in
the codec (so every batch of a collection shares them), a value at the extreme of
the CDF clips to the last level instead of getting index n, and decoding never
touches its input.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from ._scalar import bucketize
from .base import Codec, Layout, Scheme, SchemeParams, require_state
from .registry import register

from scipy.special import ndtri as _ndtri  # noqa: E402  (scipy is a service dependency)


class DistributionalParams(SchemeParams):
    bits: int | None = Field(None, ge=1, le=8, description="bits per dimension (n = 2**bits); or give n")
    n: int | None = Field(None, ge=2, le=256, description="number of levels (any n >= 2); or give bits")
    dist: Literal["gaussian", "gaussian_cdf"] = Field("gaussian", description="distributional prior")
    beta: float | None = Field(1.0, gt=0, le=100, description="range factor; null searches it at fit time")
    zero: float | None = Field(None, description="force this location (an exact level when n is odd)")

    @model_validator(mode="after")
    def _one_of(self):
        if self.bits is not None and self.n is not None:
            raise ValueError("give bits or n, not both")
        if self.bits is None and self.n is None:
            object.__setattr__(self, "bits", 4)
        return self

    @property
    def levels(self) -> int:
        return self.n if self.n is not None else 1 << self.bits


def _width(dist: str) -> float:
    # distquant's `gaussian` (the p=1 compander) widens by sqrt(2); `_cdf` does not.
    return math.sqrt(2.0) if dist == "gaussian" else 1.0


def _tables(dist: str, beta: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, levels) in standardised units, float32."""
    w = _width(dist) * beta
    k = np.arange(1, n, dtype=np.float64) / n
    thresholds = w * _ndtri(k)
    levels = w * _ndtri((np.arange(n, dtype=np.float64) + 0.5) / n)
    return thresholds.astype(np.float32), levels.astype(np.float32)


def _std(x: torch.Tensor) -> float:
    """Spread of the sample; for a constant sample, a tiny one (levels collapse onto it)."""
    s = float(x.double().std()) if x.numel() > 1 else 0.0
    if s > 0 and math.isfinite(s) and float(np.float32(s)) > 0:
        return s
    return max(float(x.double().abs().max()) * 1e-6, 1e-30)


@register
class Distributional(Scheme):
    name = "distributional"
    summary = "Distributional quantization (distquant): equal-probability bins of a fitted prior, decoded at probability midpoints."
    Params = DistributionalParams
    data_dependent = True
    examples = ({"bits": 1}, {"bits": 4}, {"n": 15, "zero": 0.0}, {"bits": 3, "dist": "gaussian_cdf"}, {"bits": 4, "beta": None})

    def layout(self, params: DistributionalParams, dim: int) -> Layout:
        n = params.levels
        bits = max(1, math.ceil(math.log2(n)))
        return Layout(bits=bits, symbols=dim, side=0, levels=n)

    def fit(self, params: DistributionalParams, x: torch.Tensor):
        loc = float(params.zero) if params.zero is not None else float(x.double().mean())
        scale = _std(x)
        beta = params.beta
        if beta is None:
            beta = self._search_beta(params, x, loc, scale)
        resolved = params.model_copy(update={"beta": beta})
        th, lv = _tables(params.dist, beta, params.levels)
        state = {
            "loc": np.array([loc], dtype=np.float32),
            "scale": np.array([scale], dtype=np.float32),
            "thresholds": th,
            "levels": lv,
        }
        return resolved, state

    def _search_beta(self, params, x, loc, scale) -> float:
        """Lowest squared error over a log grid, refined by golden section."""
        z = ((x.double().flatten() - loc) / scale).cpu().numpy()
        if z.size > 200_000:
            z = np.random.default_rng(0).choice(z, 200_000, replace=False)
        n = params.levels

        def mse(b: float) -> float:
            th, lv = _tables(params.dist, b, n)
            return float(np.mean((lv[np.searchsorted(th, z, side="right")] - z) ** 2))

        grid = np.logspace(-1, 1, 41)
        errs = [mse(b) for b in grid]
        i = int(np.argmin(errs))
        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        g = (math.sqrt(5) - 1) / 2
        a, b = lo + (1 - g) * (hi - lo), lo + g * (hi - lo)
        fa, fb = mse(a), mse(b)
        for _ in range(20):
            if fa < fb:
                hi, b, fb = b, a, fa
                a = lo + (1 - g) * (hi - lo)
                fa = mse(a)
            else:
                lo, a, fa = a, b, fb
                b = lo + g * (hi - lo)
                fb = mse(b)
        return float(round((a + b) / 2, 6))

    def check_state(self, codec: Codec) -> None:
        n = codec.params.levels
        require_state(codec, "loc", (1,))
        require_state(codec, "scale", (1,))
        require_state(codec, "thresholds", (n - 1,))
        require_state(codec, "levels", (n,))

    def encode(self, codec: Codec, x: torch.Tensor):
        t = codec.tensors(x.device)
        z = (x - t["loc"]) / t["scale"]
        return bucketize(z, t["thresholds"]), None

    def decode(self, codec: Codec, symbols: torch.Tensor, side):
        t = codec.tensors(symbols.device)
        return t["levels"][symbols] * t["scale"] + t["loc"]
