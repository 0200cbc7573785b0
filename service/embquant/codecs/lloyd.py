"""lloyd: Lloyd-Max (minimum squared error) scalar levels, after a rotation.

Each row is rotated (a seeded randomised Hadamard transform, on by default, see
`codecs.rotation`) so its coordinates are near-Gaussian, divided by its RMS
``s = ||x|| / sqrt(D)`` so they are near N(0, 1), and every coordinate is
bucketized against a sorted threshold table (exact comparisons: the same symbol
on every device). The one float32 side value per row is the least-squares gain
``g = <x, c> / <c, c>`` of the chosen levels c, so the decode ``g * c`` is the
best reconstruction along c; it beats decoding at ``s * c`` because the levels
of a row never match its own spread exactly.

Modes:

- ``gaussian`` (default, data oblivious): the Lloyd-Max quantizer of a standard
  Gaussian, computed from the exact density (Lloyd's iteration with closed-form
  centroids) and kept as constants (`lloyd_max`); distortion on N(0, 1) is
  0.3634, 0.1175, 0.03454, 0.009497 at 1..4 bits.
- ``fit_global``: one table of 2**bits levels, fitted by 1-D k-means (Lloyd)
  on the rotated, RMS-normalised sample at fit time.
- ``fit_dim``: one table per dimension, fitted the same way per coordinate;
  state (D, 2**bits) levels and (D, 2**bits - 1) thresholds; encoding is one
  batched ``searchsorted`` over the rows of the threshold table.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from . import lloyd_max
from ._cancel import checkpoint
from ._scalar import fixed_mean, fixed_sum
from ..errors import InvalidInput
from .base import Codec, Layout, RotatableParams, Scheme, require_state
from .registry import register

#: Values per fit at most (a seeded subsample beyond), so /fit stays fast.
FIT_VALUES = 2_000_000
FIT_ROWS_DIM = 20_000


class LloydParams(RotatableParams):
    bits: int = Field(4, ge=1, le=8, description="bits per dimension (2**bits levels)")
    mode: Literal["gaussian", "fit_global", "fit_dim"] = Field(
        "gaussian", description="gaussian: Lloyd-Max levels of N(0,1); fit_global / fit_dim: levels fitted on the sample"
    )
    rotate: bool = Field(True, description="rotate by a seeded randomised Hadamard transform before quantizing")
    norm: Literal["row", "unit"] = Field(
        "row",
        description="row: one float32 gain per vector (a side value); unit: the vectors are unit-norm, as most "
        "embedding models output, so no side value is stored (a vector whose norm is off by more than 1e-3 is refused)",
    )


@functools.lru_cache(maxsize=None)
def gaussian_tables(bits: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(thresholds float32 (n-1,), levels float32 (n,), distortion) of the Lloyd-Max
    quantizer of N(0, 1) with n = 2**bits levels, 1 <= bits <= 9: constants
    (`lloyd_max`, computed from the exact density by tests/support/lloyd_max.py and
    checked against that computation by the tests)."""
    if bits not in lloyd_max.LEVELS:
        raise ValueError(f"Gaussian Lloyd-Max tables exist for 1 to 9 bits, not {bits}")
    return (np.array(lloyd_max.THRESHOLDS[bits], np.float32), np.array(lloyd_max.LEVELS[bits], np.float32),
            lloyd_max.DISTORTION[bits])


#: Values of the sample a fit handles between two checkpoints (a few hundredths
#: of a second of work on one core).
_CHUNK_VALUES = 1 << 20


def ls_gain(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The least-squares gain (N, 1) of levels c for rows x, ``<x, c> / <c, c>`` (0 where
    c is all zero): float32, in fixed-order sums (batch invariant), computed on x / m
    with m the row's largest magnitude and scaled back last (no overflow)."""
    m = _row_max(x)
    den = fixed_sum(c.square(), dim=1, keepdim=True)
    num = fixed_sum((x / m) * c, dim=1, keepdim=True)
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den)) * m


def _rms(x: torch.Tensor) -> torch.Tensor:
    """Per-row RMS (N, 1) float32, summed in a fixed order (the same bits in any
    batch, on any device). Zero rows get 1."""
    m = _row_max(x)
    # scaled by m: no overflow near float32's max. The square root is taken in float64
    # and rounded once to float32, which is the correctly rounded float32 root: torch's
    # own float32 sqrt on CPU is off by one ulp for about 0.6% of inputs (2.13, AVX-512),
    # and CUDA's and the compiled kernels' are exact.
    s = fixed_mean((x / m).square(), dim=1, keepdim=True).double().sqrt().float() * m
    return torch.where(s > 0, s, torch.ones_like(s))


def _row_max(x: torch.Tensor) -> torch.Tensor:
    """Largest magnitude per row (exact, so batch invariant); 1 for zero rows."""
    m = x.abs().amax(dim=1, keepdim=True)
    return torch.where(m > 0, m, torch.ones_like(m))


def _lloyd_1d(z: np.ndarray, lv: np.ndarray, iters: int = 60) -> np.ndarray:
    """1-D k-means from initial sorted levels lv; empty cells keep their level.
    A fit helper: each step is a `checkpoint`."""
    z = np.sort(z.astype(np.float64))
    lv = lv.astype(np.float64).copy()
    csum = np.concatenate(([0.0], np.cumsum(z)))
    for _ in range(iters):
        checkpoint()
        th = (lv[:-1] + lv[1:]) / 2
        cut = np.concatenate(([0], np.searchsorted(z, th, side="right"), [z.size]))
        cnt = np.diff(cut)
        sums = csum[cut[1:]] - csum[cut[:-1]]
        new = np.where(cnt > 0, sums / np.maximum(cnt, 1), lv)
        new = np.sort(new)
        if np.max(np.abs(new - lv)) <= 1e-9 * max(1.0, float(np.max(np.abs(lv)))):
            lv = new
            break
        lv = new
    return lv


def _lloyd_dims(z: torch.Tensor, lv: torch.Tensor, iters: int = 40) -> torch.Tensor:
    """Per-dimension Lloyd on z (N, D) float64 from levels lv (D, n), vectorised.

    A fit helper (lloyd's and transform's). Each step goes over the dimensions
    in chunks of about `_CHUNK_VALUES` values with a `checkpoint` before
    each: a whole step is 0.3 s at 20,000 x 384 on 2 cores. Every dimension's
    search and sums are its own (row-wise ops), so the chunks change no bit."""
    zt = z.T.contiguous()  # (D, N)
    d, n = lv.shape
    rows = max(1, _CHUNK_VALUES // max(zt.shape[1], 1))
    for _ in range(iters):
        th = ((lv[:, :-1] + lv[:, 1:]) / 2).contiguous()
        sums = torch.zeros(d, n, dtype=z.dtype)
        cnt = torch.zeros(d, n, dtype=z.dtype)
        for lo in range(0, d, rows):
            checkpoint()
            part = zt[lo : lo + rows]
            idx = torch.searchsorted(th[lo : lo + rows], part, right=True)
            sums[lo : lo + rows].scatter_add_(1, idx, part)
            cnt[lo : lo + rows].scatter_add_(1, idx, torch.ones_like(part))
        new = torch.where(cnt > 0, sums / cnt.clamp_min(1), lv).sort(dim=1).values
        moved = float((new - lv).abs().max())
        lv = new
        if moved <= 1e-9:
            break
    return lv


@register
class Lloyd(Scheme):
    name = "lloyd"
    summary = "Lloyd-Max levels (Gaussian, or fitted globally or per dimension) after a seeded rotation; one float32 gain per vector."
    Params = LloydParams
    data_dependent = True
    examples = (
        {"bits": 1},
        {"bits": 4},
        {"bits": 8},
        {"bits": 3, "rotate": False},
        {"bits": 2, "mode": "fit_global"},
        {"bits": 4, "mode": "fit_dim"},
        {"bits": 4, "mode": "fit_dim", "rotate": False},
        {"bits": 4, "center": True},
        {"bits": 2, "mode": "fit_dim", "center": True, "norm": "row"},
    )

    def state_bytes(self, params: LloydParams, dim: int) -> int:
        tables = 4 * ((1 << params.bits) + (1 << params.bits) - 1)  # levels and thresholds, float32
        return {"gaussian": 0, "fit_global": tables, "fit_dim": dim * tables}[params.mode]

    def layout(self, params: LloydParams, dim: int) -> Layout:
        return Layout(bits=params.bits, symbols=dim, side_values=1 if params.norm == "row" else 0)

    def learns(self, params: LloydParams) -> bool:
        return params.mode != "gaussian"

    def fit(self, params: LloydParams, x: torch.Tensor):
        th, lv, _ = gaussian_tables(params.bits)
        if params.mode == "gaussian":
            return params, {}
        z = _normalised(x)
        checkpoint()
        g = np.random.default_rng(0)
        if params.mode == "fit_global":
            flat = z.flatten().numpy()
            if flat.size > FIT_VALUES:
                flat = g.choice(flat, FIT_VALUES, replace=False)
                checkpoint()
            levels = _lloyd_1d(flat, lv).astype(np.float32)
            return params, {"levels": levels, "thresholds": _midpoints(levels)}
        if z.shape[0] > FIT_ROWS_DIM:
            z = z[torch.from_numpy(np.sort(g.choice(z.shape[0], FIT_ROWS_DIM, replace=False)))]
        # Start each dimension from the Gaussian levels placed at its own mean and spread.
        mu, sd = z.mean(dim=0, keepdim=True), z.std(dim=0, keepdim=True, unbiased=False)
        sd = torch.where(sd > 0, sd, torch.ones_like(sd))
        init = mu.T + sd.T * torch.from_numpy(lv.astype(np.float64))[None, :]
        checkpoint()
        levels = _lloyd_dims(z, init).float().numpy()
        return params, {"levels": levels, "thresholds": _midpoints(levels)}

    def check_state(self, codec: Codec) -> None:
        n, p = 1 << codec.params.bits, codec.params
        if p.mode == "fit_global":
            require_state(codec, "levels", (n,))
            require_state(codec, "thresholds", (n - 1,))
        elif p.mode == "fit_dim":
            require_state(codec, "levels", (codec.dim, n))
            require_state(codec, "thresholds", (codec.dim, n - 1))
        if p.mode != "gaussian":
            from ..errors import CodecMismatch

            # encoding searches the thresholds: unsorted tables give meaningless codes
            for name in ("thresholds", "levels"):
                if not bool(np.all(np.diff(codec.state[name], axis=-1) >= 0)):
                    raise CodecMismatch(f"codec {name} must be sorted in increasing order (in each dimension)")

    def _tables(self, codec: Codec, device) -> tuple[torch.Tensor, torch.Tensor]:
        if codec.params.mode == "gaussian":

            def make():
                th, lv, _ = gaussian_tables(codec.params.bits)
                return torch.from_numpy(th).to(device), torch.from_numpy(lv).to(device)

            return codec.derived(("gauss", str(device)), make)
        t = codec.tensors(device)
        return t["thresholds"], t["levels"]

    def _levels_of(self, codec: Codec, lv: torch.Tensor, sym: torch.Tensor) -> torch.Tensor:
        if lv.dim() == 1:
            return lv[sym]
        return torch.gather(lv, 1, sym.T.contiguous()).T  # per-dimension tables (D, n)

    def encode(self, codec: Codec, x: torch.Tensor):
        th, lv = self._tables(codec, x.device)
        if codec.params.norm == "unit":
            _check_unit(x)
            z = x * math.sqrt(x.shape[1])  # RMS of a unit vector is 1/sqrt(D)
        else:
            z = x / _rms(x)
        if th.dim() == 1:
            sym = torch.bucketize(z.contiguous(), th, right=True)
        else:
            sym = torch.searchsorted(th, z.T.contiguous(), right=True).T.contiguous()
        if codec.params.norm == "unit":
            return sym, None
        return sym, ls_gain(x, self._levels_of(codec, lv, sym))

    def decode(self, codec: Codec, symbols: torch.Tensor, side):
        _, lv = self._tables(codec, symbols.device)
        if codec.params.norm == "unit":
            return self._levels_of(codec, lv, symbols) * (1.0 / math.sqrt(codec.dim))
        return self._levels_of(codec, lv, symbols) * side


UNIT_TOLERANCE = 1e-3


def _check_unit(x: torch.Tensor) -> None:
    norms = fixed_sum(x.double().square(), dim=1).sqrt()
    bad = (norms - 1).abs() > UNIT_TOLERANCE
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise unit_norm_error(i, float(norms[i]))


def unit_norm_error(row: int, norm: float) -> InvalidInput:
    return InvalidInput(
        f"norm='unit' needs unit-norm vectors; row {row} has norm {norm:.6g} (normalise them, or use norm='row')"
    )


def _normalised(x: torch.Tensor) -> torch.Tensor:
    """The fit's sample ``x / _rms(x)``, float64 on the CPU, in row chunks of about
    `_CHUNK_VALUES` values with a `checkpoint` before each (0.1-0.4 s for
    20,000 x 384 in one piece). Every op is per row, so chunks change no bit."""
    step = max(1, _CHUNK_VALUES // max(x.shape[1], 1))
    parts = []
    for lo in range(0, x.shape[0], step):
        checkpoint()
        part = x[lo : lo + step]
        parts.append((part / _rms(part)).double().cpu())
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _midpoints(levels: np.ndarray) -> np.ndarray:
    lv = levels.astype(np.float64)
    return ((lv[..., :-1] + lv[..., 1:]) / 2).astype(np.float32)
