"""distributional: distributional quantization (the ``distquant`` package).

A compander. Standardise with the codec's location and scale, ``z = (x - loc) / scale``,
map through a prior's CDF ``G``, cut [0, 1] into n equal-probability bins, and
decode bin i at the quantile of its probability midpoint:
``x' = loc + scale * beta * G^-1((i + 0.5) / n)``. Every prior, its compander and
its standardisation follow distquant 0.1.0 exactly:

================  =========================================  ==========================  ==================
dist              G^-1(u) (in units of beta)                 loc (when zero is None)     scale
================  =========================================  ==========================  ==================
gaussian          sqrt(2) * Phi^-1(u)                        mean                        std
gaussian_cdf      Phi^-1(u)                                  mean                        std
logistic          2 * log(tan(pi * u / 2))                   mean                        std * sqrt(3) / pi
logistic_cdf      logit(u)                                   mean                        std * sqrt(3) / pi
gumbel            -log(2) - 2 * log(erfcinv(u))              mean - euler * scale        std * sqrt(6) / pi
gumbel_cdf        -log(-log(u))                              mean - euler * scale        std * sqrt(6) / pi
exponential       -2 * log(1 - u)                            0                           std
exponential_cdf   -log(1 - u)                                0                           std
cauchy_cdf        tan(pi * (u - 1/2))                        0                           1 (no normalisation)
================  =========================================  ==========================  ==================

(std is the unbiased sample standard deviation, as torch's ``.std()``; the non-``_cdf``
variants are distquant's asymptotically optimal companders, the ``_cdf`` ones use
the CDF itself.)

Encoding is by thresholds: since ``floor(n * G(z / beta)) >= k`` exactly when
``z >= beta * G^-1(k / n)``, fit precomputes the n - 1 decision thresholds and
the n levels in standardised units (float32, codec state), and encode is one
exact ``bucketize``. The same float32 row gives the same codes on every device,
and a value beyond the range clips to the end level (distquant gives index n
once the float32 CDF rounds to 1 and, packed, corrupts a neighbour).

Differences from distquant, on purpose:

- loc and scale are learned once at fit and stored in the codec, so every batch
  of a collection shares them (distquant recomputes them per call);
- ``zero`` forces loc for any n (distquant asserts odd n). For the symmetric
  priors (gaussian*, logistic*, cauchy_cdf) the tables are built mirror
  symmetric, so with odd n the middle level is exactly 0 in standardised units
  and ``zero`` (as float32) decodes exactly; with even n it is a threshold. For
  gumbel* and exponential* ``zero`` is the prior's location parameter, as in
  distquant, and not a level;
- ``beta=None`` minimises squared error, not absolute error: on the fit sample
  (at most 100,000 values, a seeded draw), standardised, a 41-point log grid
  over [0.1, 10] (cauchy_cdf: [0.01, 100] times the median of |x - loc|), then
  20 golden-section steps between the best point's neighbours (see `_search_beta`).
  distquant minimises absolute error over a fixed grid, which picks beta too
  small for squared error;
- ``dist=None`` keeps the prior with the lowest squared error (distquant: absolute).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from scipy import special

from ..errors import CodecMismatch, InvalidInput
from ._cancel import checkpoint, interruptible
from ._scalar import bucketize
from .base import Codec, Layout, Scheme, RotatableParams, require_state
from .registry import register

Dist = Literal[
    "gaussian", "gaussian_cdf", "logistic", "logistic_cdf", "cauchy_cdf",
    "gumbel", "gumbel_cdf", "exponential", "exponential_cdf",
]


@dataclass(frozen=True)
class _Prior:
    quantile: Callable[[np.ndarray], np.ndarray]  # G^-1 on float64 probabilities in (0, 1)
    symmetric: bool  # G^-1(1 - u) == -G^-1(u): build tables by mirroring
    loc: str  # "mean", "gumbel" (mean - euler * scale) or "zero" (0 unless forced)
    scale: float | None  # multiplies the sample std; None: no normalisation (scale 1)


_PRIORS: dict[str, _Prior] = {
    "gaussian": _Prior(lambda u: math.sqrt(2.0) * special.ndtri(u), True, "mean", 1.0),
    "gaussian_cdf": _Prior(special.ndtri, True, "mean", 1.0),
    "logistic": _Prior(lambda u: 2.0 * np.log(np.tan(u * (np.pi / 2))), True, "mean", math.sqrt(3) / math.pi),
    "logistic_cdf": _Prior(special.logit, True, "mean", math.sqrt(3) / math.pi),
    "cauchy_cdf": _Prior(lambda u: np.tan(np.pi * (u - 0.5)), True, "zero", None),
    # erfcinv(u) rather than erfinv(1 - u): keeps precision for small u.
    "gumbel": _Prior(lambda u: -math.log(2.0) - 2.0 * np.log(special.erfcinv(u)), False, "gumbel", math.sqrt(6) / math.pi),
    "gumbel_cdf": _Prior(lambda u: -np.log(-np.log(u)), False, "gumbel", math.sqrt(6) / math.pi),
    "exponential": _Prior(lambda u: -2.0 * np.log1p(-u), False, "zero", 1.0),
    "exponential_cdf": _Prior(lambda u: -np.log1p(-u), False, "zero", 1.0),
}
DISTS: tuple[str, ...] = tuple(_PRIORS)  # distquant's order; dist=None keeps the first of equals

# beta scales the standardised prior, so a bounded range is plenty; cauchy_cdf is
# not normalised, so its beta is the scale in data units and may be anything.
BETA_RANGE = (1e-3, 100.0)
CAUCHY_BETA_RANGE = (1e-37, 1e36)  # float32 range, with room for the outer quantiles (163x beta at n=256)
_SEARCH_SAMPLE = 100_000


class DistributionalParams(RotatableParams):
    bits: int | None = Field(None, ge=1, le=8, description="bits per dimension (n = 2**bits); or give n (default 4 bits)")
    n: int | None = Field(None, ge=2, le=256, description="number of levels, any n in [2, 256]; or give bits")
    dist: Dist | None = Field(
        "gaussian",
        description="distributional prior; null tries all nine at fit time and keeps the lowest squared error "
        "(the fitted codec names the one picked)",
    )
    beta: float | None = Field(
        1.0, gt=0, le=CAUCHY_BETA_RANGE[1], allow_inf_nan=False,
        description="range factor, within [0.001, 100] (cauchy_cdf: any positive value, it is the scale in data "
        "units). null searches it at fit time for the lowest mean squared error on the sample (at most 100,000 "
        "values, a seeded draw): 41 log-spaced values over [0.1, 10] (cauchy_cdf: over [0.01, 100] times the "
        "median of |x - loc|), then 20 golden-section steps between the best value's neighbours, rounded to 6 "
        "significant digits and kept only if no worse than the best grid value; with dist null, each prior "
        "gets its own search",
    )
    zero: float | None = Field(
        None, ge=-1e30, le=1e30, allow_inf_nan=False,
        description="force the location to this value; for gaussian/logistic/cauchy priors with odd n it is "
        "an exact level (with even n a decision threshold); for gumbel/exponential it is the prior's location "
        "(exponential default 0)",
    )

    @model_validator(mode="after")
    def _check(self):
        if self.bits is not None and self.n is not None:
            raise ValueError(f"give bits or n, not both (got bits={self.bits}, n={self.n})")
        if self.bits is None and self.n is None:
            object.__setattr__(self, "bits", 4)
        if self.beta is not None:
            lo, hi = CAUCHY_BETA_RANGE if self.dist == "cauchy_cdf" else BETA_RANGE
            if not lo <= self.beta <= hi:
                raise ValueError(f"beta must be within [{lo:g}, {hi:g}] for dist={self.dist!r}, got {self.beta!r}")
        return self

    @property
    def levels(self) -> int:
        return self.n if self.n is not None else 1 << self.bits


def strictly_increasing(t: np.ndarray) -> np.ndarray:
    """Float32 thresholds nudged up one ulp where rounding made neighbours equal
    (big n or extreme beta): an empty bin is harmless, an unsorted table is not."""
    t = np.array(t, dtype=np.float32)
    for k in range(1, t.size):
        if not t[k] > t[k - 1]:
            t[k] = np.nextafter(t[k - 1], np.float32(np.inf))
    return t


def tables(dist: str, beta: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds (n-1,), levels (n,)) in standardised units, float32.

    Probabilities are exact fractions num / (2n); a symmetric prior takes the
    upper half as the mirror of the lower one so the middle is exactly 0."""
    prior = _PRIORS[dist]
    num = np.concatenate([2 * np.arange(1, n), 2 * np.arange(n) + 1])  # thresholds k/n, levels (i+.5)/n
    if prior.symmetric:
        low = np.minimum(num, 2 * n - num)
        out = np.zeros(num.size)
        inner = low < n  # low == n is u = 1/2, exactly 0
        out[inner] = prior.quantile(low[inner] / (2.0 * n))
        out = np.where(num > n, -out, out)
    else:
        out = prior.quantile(num / (2.0 * n))
    out = beta * out
    th, lv = out[: n - 1], out[n - 1 :]
    th32, lv32 = th.astype(np.float32), lv.astype(np.float32)
    if not (np.isfinite(th32).all() and np.isfinite(lv32).all()):
        raise InvalidInput(f"dist={dist!r}, beta={beta:g}, n={n}: the quantizer's levels overflow float32")
    return strictly_increasing(th32), lv32


def standardisation(dist: str, x: torch.Tensor, zero: float | None) -> tuple[float, float]:
    """distquant's (loc, scale) of prior ``dist`` for the sample x (float64 math;
    the std is unbiased, as torch's ``.std()``)."""
    prior = _PRIORS[dist]
    x = x.double().flatten()
    mean = float(x.mean())
    std = float(x.std()) if x.numel() > 1 else 0.0
    if not (std > 0 and math.isfinite(std) and float(np.float32(std)) > 0):
        # Constant (or one-value) sample, where distquant fails: take the spread
        # around a forced location, else a tiny one, so the values land on or
        # next to a level instead of dividing by zero.
        base = zero if zero is not None else (0.0 if prior.loc == "zero" else mean)
        std = max(float((x - base).abs().max()), float(x.abs().max()) * 1e-6, 1e-30)
    scale = 1.0 if prior.scale is None else std * prior.scale
    if zero is not None:
        loc = float(zero)
    elif prior.loc == "mean":
        loc = mean
    elif prior.loc == "gumbel":
        loc = mean - float(np.euler_gamma) * scale
    else:
        loc = 0.0
    return loc, scale


def _mse(dist: str, beta: float, n: int, z: np.ndarray) -> float:
    checkpoint()  # fit only (the beta search, the dist choice); each call is milliseconds
    th, lv = tables(dist, beta, n)
    return float(np.mean((lv[np.searchsorted(th, z, side="right")] - z) ** 2))


def _search_beta(dist: str, n: int, z: np.ndarray) -> float:
    """The beta with the lowest mean squared error on standardised sample z.

    The error is exact for the float32 tables (float64 arithmetic). A 41-point
    log grid over [0.1, 10] (cauchy_cdf: [0.01, 100] x the median |z|, since it
    is not normalised), then 20 golden-section steps between the best grid
    point's neighbours, rounded to 6 significant digits; the grid point wins if
    the refinement is worse (the error is not unimodal in beta everywhere).
    A fit helper: each error evaluation (milliseconds) is a `checkpoint`."""
    if _PRIORS[dist].scale is None:
        spread = float(np.median(np.abs(z))) or float(np.abs(z).max()) or 1.0
        grid = spread * np.logspace(-2, 2, 41)
        lo_b, hi_b = CAUCHY_BETA_RANGE
    else:
        grid = np.logspace(-1, 1, 41)
        lo_b, hi_b = BETA_RANGE
    grid = np.clip(grid, lo_b, hi_b)
    errs = [_mse(dist, b, n, z) for b in grid]
    i = int(np.argmin(errs))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _mse(dist, a, n, z), _mse(dist, b, n, z)
    for _ in range(20):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _mse(dist, a, n, z)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _mse(dist, b, n, z)
    best = float(f"{(a + b) / 2:.6g}")
    # golden section assumes one minimum; never return worse than the grid found
    if _mse(dist, best, n, z) > errs[i]:
        best = float(grid[i])
    return min(max(best, lo_b), hi_b)


@register
class Distributional(Scheme):
    name = "distributional"
    summary = "Distributional quantization (distquant): equal-probability bins of a fitted prior, decoded at probability midpoints."
    Params = DistributionalParams
    data_dependent = True
    examples = (
        {"bits": 1},
        {"bits": 4},
        {"n": 15, "zero": 0.0},
        {"bits": 3, "dist": "gaussian_cdf"},
        {"bits": 4, "beta": None},
        {"n": 256, "dist": "gaussian_cdf", "beta": 2.0},
        {"bits": 2, "dist": "logistic"},
        {"n": 11, "dist": "logistic_cdf", "zero": 0.0, "beta": 0.7},
        {"n": 7, "dist": "gumbel"},
        {"bits": 3, "dist": "gumbel_cdf", "beta": None},
        {"bits": 4, "dist": "exponential"},
        {"n": 6, "dist": "exponential_cdf", "beta": None},
        {"n": 9, "dist": "cauchy_cdf", "zero": 0.0},
        {"n": 15, "dist": "cauchy_cdf", "beta": None},
        {"bits": 3, "dist": None},
        {"n": 5, "dist": None, "beta": None, "zero": 0.0},
        {"bits": 4, "rotate": True, "rotation_seed": 3},
    )

    def layout(self, params: DistributionalParams, dim: int) -> Layout:
        n = params.levels
        return Layout(bits=max(1, math.ceil(math.log2(n))), symbols=dim, side_values=0, levels=n)

    def fit(self, params: DistributionalParams, x: torch.Tensor):
        """Resolve dist and beta (searching where None) and learn loc and scale.

        The returned params name the dist and beta used; the state holds loc,
        scale, thresholds and levels (float32)."""
        n = params.levels
        flat = x.detach().double().flatten().cpu()
        if flat.numel() > _SEARCH_SAMPLE and (params.beta is None or params.dist is None):
            g = torch.Generator().manual_seed(0)
            # one call, 0.2-0.4 s for 7.7M values: stoppable under a cancel scope
            perm = interruptible(torch.randperm, flat.numel(), generator=g)
            sample = flat[perm[:_SEARCH_SAMPLE]]
        else:
            sample = flat
        best = None
        for dist in DISTS if params.dist is None else (params.dist,):
            checkpoint()
            loc, scale = standardisation(dist, flat, params.zero)
            checkpoint()
            beta = params.beta  # a beta shared by all priors is within BETA_RANGE, valid for each
            z = ((sample - loc) / scale).numpy()
            if beta is None:
                beta = _search_beta(dist, n, z)
            err = _mse(dist, beta, n, z) * scale * scale if params.dist is None else 0.0
            if best is None or err < best[0]:
                best = (err, dist, beta, loc, scale)
        _, dist, beta, loc, scale = best
        th, lv = tables(dist, beta, n)
        resolved = params.model_copy(update={"dist": dist, "beta": beta})
        state = {
            "loc": np.array([loc], dtype=np.float32),
            "scale": np.array([scale], dtype=np.float32),
            "thresholds": th,
            "levels": lv,
        }
        return resolved, state

    def check_state(self, codec: Codec) -> None:
        """A codec must be resolved and its tables usable (it may come from JSON)."""
        p = codec.params
        if p.dist is None or p.beta is None:
            raise CodecMismatch("a distributional codec must name its dist and beta (fit resolves them)")
        n = p.levels
        require_state(codec, "loc", (1,))
        require_state(codec, "scale", (1,))
        require_state(codec, "thresholds", (n - 1,))
        require_state(codec, "levels", (n,))
        if not float(codec.state["scale"][0]) > 0:
            raise CodecMismatch(f"codec scale must be positive, got {float(codec.state['scale'][0])}")
        if not bool(np.all(np.diff(codec.state["thresholds"]) > 0)):
            raise CodecMismatch("codec thresholds must be strictly increasing")
        if not bool(np.all(np.diff(codec.state["levels"]) >= 0)):
            raise CodecMismatch("codec levels must be sorted in increasing order")

    def encode(self, codec: Codec, x: torch.Tensor):
        t = codec.tensors(x.device)
        z = (x - t["loc"]) / t["scale"]
        return bucketize(z, t["thresholds"]), None

    def decode(self, codec: Codec, symbols: torch.Tensor, side):
        t = codec.tensors(symbols.device)
        return t["levels"][symbols] * t["scale"] + t["loc"]
