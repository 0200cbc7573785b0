"""transform: classic transform coding (KLT + reverse water-filling + Lloyd-Max).

Fit, on the sample:

1. the mean ``mu`` and the KLT/PCA basis ``V`` (D x D, orthonormal columns in
   order of decreasing variance) of the sample covariance, by a float64 ``eigh``.
   The centred sample is divided by its largest magnitude first, so inputs near
   1e30 (or 1e-30) neither overflow nor underflow the covariance; the variances
   ``lambda_i`` are scaled back afterwards.
2. an integer bit allocation ``b_i`` in 0..8 with ``sum b_i = round(bits * D)``,
   by greedy reverse water-filling: one bit at a time goes to the component whose
   distortion drops most, ``lambda_i * (d(b_i) - d(b_i + 1))``, with ``d(b)`` the
   distortion of the Gaussian Lloyd-Max quantizer at b bits (``d(0) = 1``).
   With ``shrink`` (default) the variances are Ledoit-Wolf estimates (see
   `_klt`). Components of (numerically) zero variance get no bits; when every component
   is full or has no variance, the rest of the budget stays unused (those
   symbols are always zero) so the code width depends on D alone.
3. per component, ``2**b_i`` levels: the Gaussian Lloyd-Max levels (reused from
   `codecs.lloyd`, never recomputed) scaled by ``sqrt(lambda_i)``, or with
   ``levels="fitted"`` a 1-D k-means on the sample projections (divided by
   their sample sd, started from the unit Gaussian levels) scaled back by
   ``sqrt(lambda_i)``. k-means needs several samples per level, so a component is only fitted
   when the sample has at least ``max(FIT_MIN_ROWS, 4 * 2**b_i)`` rows; others
   keep the Gaussian levels.

Encode: ``z = (x - mu) @ V`` in float64, rounded to float32. The float64
accumulation makes CPU and CUDA agree on z except for a value within about
1e-16 (relative) of a float32 rounding boundary, and the exact threshold
comparisons that follow then give the same symbols on every device. Each
component with b_i > 0 is bucketized against the midpoints of its own levels
(components grouped by bit width, one batched ``searchsorted`` per group) and
its index is written as b_i one-bit symbols, least significant bit first,
components in order of decreasing variance. So the layout is ``bits=1`` with
``round(bits * D)`` symbols: the packing contract (one width per symbol) holds
although the components have different widths.

Decode: indices are reassembled from their bits, levels looked up (a 0-bit
component decodes to its single level 0, i.e. to the mean), and
``y = z_hat @ V^T + mu`` accumulated in float64 and rounded to float32.

Optional ``gain``: one float32 side value per row, the least-squares scale of
the centred reconstruction, ``g = <z, z_hat> / <z_hat, z_hat>``. It costs 32
bits per vector; whether it pays is measured in the tests (on MiniLM at 4
bits/dim it does not beat spending the same bits on the allocation).

D is capped at `MAX_DIM`: the D x D basis is both the cost of ``eigh`` (cubic)
and the size of the codec (D*D float32: 0.6 MB at D=384, 16 MB at D=2048).
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import math
import threading
from typing import Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from ..errors import CodecMismatch, InvalidInput
from ._cancel import checkpoint, interruptible
from ._scalar import fixed_sum
from .base import Codec, Layout, Scheme, SchemeParams, require_state
from .lloyd import _lloyd_dims, gaussian_tables
from .registry import register

MAX_DIM = 2048
MAX_BITS = 8  # per component
#: Rows used by the fit at most (a seeded subsample beyond): the covariance costs N * D^2.
FIT_ROWS = 20_000
#: Fewest sample rows for which a component's levels are fitted by k-means.
FIT_MIN_ROWS = 64
#: Eigenvalues below this fraction of the largest count as zero variance
#: (a rank-deficient sample leaves eigenvalues of order 1e-16 there, not 0).
ZERO_VARIANCE = 1e-12
_F32_MAX = float(np.finfo(np.float32).max)


class TransformParams(SchemeParams):
    bits: float = Field(
        4, ge=1, le=8, description="average bits per dimension; the code holds round(bits * D) bits per vector"
    )
    levels: Literal["gaussian", "fitted"] = Field(
        "gaussian",
        description="gaussian: Lloyd-Max levels of N(0, lambda_i); fitted: 1-D k-means per component on the sample",
    )
    gain: bool = Field(False, description="store one float32 least-squares gain per vector")
    shrink: bool = Field(
        True, description="Ledoit-Wolf shrinkage of the component variances (robust held-out error on small samples)"
    )
    trellis: bool = Field(
        False,
        description="code the components of each bit width together by trellis-coded quantization (tcq's 8-state "
        "trellis and levels, scaled to each component's spread) instead of one Lloyd-Max quantizer each",
    )

    @model_validator(mode="after")
    def _trellis_levels(self):
        if self.trellis and self.levels == "fitted":
            raise ValueError("levels='fitted' is for scalar coding; with trellis=true the levels are tcq's, scaled")
        return self


def budget(params: TransformParams, dim: int) -> int:
    """Total bits per vector: round(bits * D), half up."""
    return max(1, min(MAX_BITS * dim, int(math.floor(params.bits * dim + 0.5))))


@functools.lru_cache(maxsize=None)
def distortions() -> tuple[float, ...]:
    """d(b) for b = 0..8: the Gaussian Lloyd-Max distortion of N(0, 1), d(0) = 1."""
    return (1.0,) + tuple(gaussian_tables(b)[2] for b in range(1, MAX_BITS + 1))


def allocate(variances: np.ndarray, total: int) -> np.ndarray:
    """Greedy reverse water-filling: ``total`` bits, one at a time, each to the
    component whose expected distortion ``lambda_i * d(b_i)`` drops most.

    Ties go to the lower component index, so the result is deterministic.
    Components with zero variance get nothing; bits no component can use are
    left over (the result may sum to less than ``total``).
    """
    lam = np.asarray(variances, dtype=np.float64)
    d = distortions()
    alloc = np.zeros(lam.shape[0], dtype=np.uint8)
    heap = [(-lam[i] * (d[0] - d[1]), i) for i in range(lam.shape[0]) if lam[i] > 0]
    heapq.heapify(heap)
    for _ in range(total):
        if not heap:
            break
        _, i = heapq.heappop(heap)
        alloc[i] += 1
        b = int(alloc[i])
        if b < MAX_BITS:
            heapq.heappush(heap, (-lam[i] * (d[b] - d[b + 1]), i))
    return alloc


#: One BLAS thread count change at a time (threadpoolctl's limit is process-wide).
_BLAS_LOCK = threading.Lock()


@contextlib.contextmanager
def _one_blas_thread():
    """BLAS/LAPACK on one thread for the block. LAPACK's eigh through a threaded
    OpenBLAS gives other bits with 1 and 2 threads (a fit over HTTP, where the
    thread count differed, gave another codec than one in process on the same rows);
    on one thread the result depends on the data and the BLAS build alone. Costs
    little here: eigh of a 384 x 384 matrix takes 0.04 s on one thread.

    Set in the fitting thread, around `interruptible` (which may run the call in a
    helper thread): a limit set from inside that fresh helper thread was measured
    not to hold when the calling thread had set its own. The lock keeps two fits from
    restoring each other's limit mid-call; numpy work elsewhere in the process runs on
    one BLAS thread for that long."""
    from threadpoolctl import threadpool_limits

    with _BLAS_LOCK, threadpool_limits(limits=1, user_api="blas"):
        yield


def _klt(x: np.ndarray, shrink: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean (D,), basis (D, D), variances (D,), sample variances (D,)), float64,
    variances decreasing, each basis column's largest entry made positive (a fixed sign).

    With ``shrink`` the variances are the Ledoit-Wolf estimate: the sample
    covariance shrunk toward ``m * I`` (m its mean eigenvalue) by the weight that
    minimises the expected Frobenius error. Shrinkage keeps the eigenvectors and
    pulls the eigenvalues toward m. It matters: with N not much larger than D the
    small sample eigenvalues are far too small (MiniLM, N=400, D=384: the 300th
    is 5.6e-5, held-out variance along it 6.9e-4), so their levels are too
    narrow and held-out values clip; on MiniLM at 4 bits/dim the held-out error
    went from 0.039 to 0.0064 with shrinkage.
    """
    mu = x.mean(axis=0)
    xc = x - mu
    scale = float(np.abs(xc).max())
    n, d = x.shape
    if scale == 0.0:  # constant sample: any basis, no variance anywhere
        return mu, np.eye(d), np.zeros(d), np.zeros(d)
    xs = xc / scale
    # two BLAS/LAPACK calls (0.1-1 s at 20,000 x 384 on 2 busy cores): stoppable
    # under a cancel scope (see `_cancel.interruptible`), on one BLAS thread so the
    # codec does not depend on the thread count (`_one_blas_thread`)
    with _one_blas_thread():
        cov = interruptible(lambda: (xs.T @ xs) / n)
        w, v = interruptible(np.linalg.eigh, cov)
    checkpoint()
    w, v = w[::-1].copy(), v[:, ::-1].copy()
    w[w <= ZERO_VARIANCE * max(float(w[0]), 0.0)] = 0.0
    sign = np.sign(v[np.abs(v).argmax(axis=0), np.arange(d)])
    v *= np.where(sign == 0, 1.0, sign)
    raw = w.copy()
    if shrink:
        m = float(np.trace(cov)) / d
        dist2 = float(np.sum((cov - m * np.eye(d)) ** 2))
        # Ledoit-Wolf (2004): b2 = mean_k ||x_k x_k^T - S||_F^2 / n, which reduces to
        # (sum_k ||x_k||^4 - n ||S||_F^2) / n^2 since sum_k x_k^T S x_k = n ||S||_F^2.
        b2 = (float(np.sum(np.sum(xs * xs, axis=1) ** 2)) - n * float(np.sum(cov * cov))) / (n * n)
        delta = min(max(b2, 0.0), dist2) / dist2 if dist2 > 0 else 0.0
        w = (1.0 - delta) * w + delta * m
    return mu, v, w * scale * scale, raw * scale * scale


def _trellis_state(mu: np.ndarray, v: np.ndarray, alloc: np.ndarray, sd: np.ndarray) -> dict:
    """trellis=true: each coded component's scale (its sd; 0 for 0-bit components) and
    tcq's unit levels of every bit width the allocation uses, in increasing width."""
    from .tcq import gaussian_levels

    used = sorted({int(b) for b in alloc if b > 0})
    tables = [np.asarray(gaussian_levels(b), dtype=np.float32) for b in used]
    return {
        "mean": mu.astype(np.float32),
        "basis": v.astype(np.float32),
        "alloc": alloc,
        "scale": np.clip(np.where(alloc > 0, sd, 0.0), 0, _F32_MAX).astype(np.float32),
        "levels": np.concatenate(tables) if tables else np.zeros(0, np.float32),
    }


def _trellis_tables(alloc: np.ndarray) -> list[tuple[int, int]]:
    """(bit width, start of its 2**(b+1) levels in the flat table) of each width used."""
    out, at = [], 0
    for b in sorted({int(b) for b in alloc if b > 0}):
        out.append((b, at))
        at += 2 << b
    return out


def _segments(alloc: np.ndarray) -> np.ndarray:
    """Start of each component's levels in the flat level table (2**b_i each)."""
    sizes = np.left_shift(1, alloc.astype(np.int64))
    return np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)


@register
class Transform(Scheme):
    name = "transform"
    summary = (
        "Transform coding: KLT/PCA basis, greedy reverse water-filling bit allocation, "
        "per-component Lloyd-Max (Gaussian or fitted) levels."
    )
    Params = TransformParams
    data_dependent = True
    examples = (
        {"bits": 4},
        {"bits": 1.5, "levels": "fitted"},
        {"bits": 2, "gain": True},
        {"bits": 4, "trellis": True},
        {"bits": 1.5, "trellis": True, "gain": True},
    )

    def state_bytes(self, params: TransformParams, dim: int) -> int:
        # mean and basis (float32), alloc (uint8), levels: one per 0-bit component plus
        # 2**b_i per coded one, at most 32 per bit of the budget (2**b / b <= 32 for b <= 8)
        if params.trellis:  # scale, and tcq's tables of the widths used (at most 2 + 4 + ... + 512)
            return 4 * dim + 4 * dim * dim + dim + 4 * dim + 4 * 1020
        return 4 * dim + 4 * dim * dim + dim + 4 * (dim + 32 * budget(params, dim))

    def layout(self, params: TransformParams, dim: int) -> Layout:
        return Layout(bits=1, symbols=budget(params, dim), side_values=1 if params.gain else 0)

    def fit(self, params: TransformParams, x: torch.Tensor):
        n, d = x.shape
        if d > MAX_DIM:
            raise InvalidInput(f"transform supports D <= {MAX_DIM}, got D = {d} (the D x D basis would be too large)")
        xs = x.detach().to("cpu", torch.float64).numpy()
        if n > FIT_ROWS:
            rows = np.sort(np.random.default_rng(0).choice(n, FIT_ROWS, replace=False))
            xs = xs[rows]
        checkpoint()
        mu, v, lam, raw = _klt(xs, params.shrink)
        checkpoint()
        alloc = allocate(lam, budget(params, d))
        sd = np.sqrt(lam)
        if params.trellis:
            return params, _trellis_state(mu, v, alloc, sd)
        levels = [np.zeros(1)] * d  # 0-bit components: one level at the mean
        z = None
        for b in range(1, MAX_BITS + 1):
            checkpoint()
            comp = np.nonzero(alloc == b)[0]
            if comp.size == 0:
                continue
            init = sd[comp, None] * gaussian_tables(b)[1].astype(np.float64)[None, :]
            if params.levels == "fitted" and xs.shape[0] >= max(FIT_MIN_ROWS, 4 << b):
                # k-means learns each component's shape on its unit-variance sample
                # projections; the scale stays the (shrunk) sd, because the sample
                # spread of a small component is too narrow for held-out data.
                fit = comp[raw[comp] > 0]
                if fit.size:
                    if z is None:
                        z = (xs - mu) @ v
                    zn = torch.from_numpy(z[:, fit] / np.sqrt(raw[fit]))
                    unit = np.broadcast_to(gaussian_tables(b)[1].astype(np.float64), (fit.size, 1 << b))
                    shape = _lloyd_dims(zn, torch.from_numpy(unit.copy())).numpy()
                    init[np.searchsorted(comp, fit)] = sd[fit, None] * shape
            for k, i in enumerate(comp):
                levels[i] = init[k]
        flat = np.clip(np.concatenate(levels), -_F32_MAX, _F32_MAX).astype(np.float32)
        state = {
            "mean": mu.astype(np.float32),
            "basis": v.astype(np.float32),
            "alloc": alloc,
            "levels": flat,
        }
        return params, state

    def check_state(self, codec: Codec) -> None:
        d = codec.dim
        if d > MAX_DIM:
            raise CodecMismatch(f"transform supports D <= {MAX_DIM}, the codec says D = {d}")
        require_state(codec, "mean", (d,))
        require_state(codec, "basis", (d, d))
        require_state(codec, "alloc", (d,), "uint8")
        alloc = codec.state["alloc"]
        if int(alloc.max()) > MAX_BITS:
            raise CodecMismatch(f"codec alloc holds {int(alloc.max())} bits for a component; at most {MAX_BITS}")
        total = budget(codec.params, d)
        if int(alloc.sum(dtype=np.int64)) > total:
            raise CodecMismatch(f"codec alloc sums to {int(alloc.sum(dtype=np.int64))} bits, the budget is {total}")
        if codec.params.trellis:
            require_state(codec, "scale", (d,))
            tables = _trellis_tables(alloc)
            require_state(codec, "levels", (sum(2 << b for b, _ in tables),))
            lv, sc = codec.state["levels"], codec.state["scale"]
            if not (np.all(np.isfinite(sc)) and np.all(sc[alloc > 0] > 0)):
                raise CodecMismatch("codec scale must be finite and positive for every coded component")
            for b, at in tables:
                if not (np.all(np.isfinite(lv[at:at + (2 << b)])) and np.all(np.diff(lv[at:at + (2 << b)]) >= 0)):
                    raise CodecMismatch(f"codec levels of width {b} must be finite and sorted in increasing order")
            return
        size = int(np.left_shift(1, alloc.astype(np.int64)).sum())
        require_state(codec, "levels", (size,))
        lv = codec.state["levels"]
        starts = _segments(alloc)
        inner = np.ones(size, dtype=bool)
        inner[starts] = False  # a step into a new component may go down
        if not np.all(np.diff(lv)[inner[1:]] >= 0):
            raise CodecMismatch("codec levels must be sorted within each component")

    def _plan(self, codec: Codec, device) -> dict:
        """Per-device tensors derived once from the state (cached on the codec)."""
        return codec.derived(("plan", str(device)), lambda: self._make_plan(codec, device))

    def _make_plan(self, codec: Codec, device) -> dict:
        t = codec.tensors(device)
        alloc = codec.state["alloc"].astype(np.int64)
        if codec.params.trellis:
            from .tcq import midpoints

            lv = codec.state["levels"]
            trellis = []
            for b, at in _trellis_tables(alloc):
                table = np.ascontiguousarray(lv[at:at + (2 << b)], dtype=np.float32)
                trellis.append((torch.from_numpy(np.nonzero(alloc == b)[0]).to(device),
                                torch.from_numpy(table).to(device), torch.from_numpy(midpoints(table)).to(device)))
            starts = np.zeros(alloc.size, np.int64)
        else:
            trellis = None
            starts = _segments(alloc)
        lv = codec.state["levels"].astype(np.float64)
        groups = []
        for b in range(1, MAX_BITS + 1):
            comp = np.nonzero(alloc == b)[0]
            if comp.size and trellis is None:
                seg = lv[starts[comp, None] + np.arange(1 << b)[None, :]]
                th = ((seg[:, :-1] + seg[:, 1:]) / 2).astype(np.float32)
                groups.append((torch.from_numpy(comp).to(device), torch.from_numpy(th).to(device)))
        comp_of_bit = np.repeat(np.arange(alloc.size), alloc)
        bitpos = np.concatenate([np.arange(b) for b in alloc]) if alloc.sum() else np.zeros(0, np.int64)
        p = {
            "mean64": t["mean"].double(),
            "basis64": t["basis"].double(),
            "mean": t["mean"],
            "basisT64": t["basis"].double().T.contiguous(),
            "levels": t["levels"],
            "starts": torch.from_numpy(starts).to(device),
            "groups": groups,
            "comp": torch.from_numpy(comp_of_bit.astype(np.int64)).to(device),
            "bitpos": torch.from_numpy(bitpos.astype(np.int64)).to(device),
            "trellis": trellis,
            "scale": t["scale"] if trellis is not None else None,
        }
        return p

    def encode(self, codec: Codec, x: torch.Tensor):
        p = self._plan(codec, x.device)
        z = ((x.double() - p["mean64"]) @ p["basis64"]).float()
        n = x.shape[0]
        idx = torch.zeros(n, codec.dim, dtype=torch.int64, device=x.device)
        zh = None
        if p["trellis"] is not None:
            from .tcq import viterbi

            zh = torch.zeros(n, codec.dim, dtype=torch.float32, device=x.device)
            for comp, table, mids in p["trellis"]:  # each width's components, in order, one trellis
                sc = p["scale"][comp]
                sym, chosen = viterbi((z[:, comp] / sc).contiguous(), table, mids)
                idx[:, comp] = sym
                zh[:, comp] = chosen * sc
        for comp, th in p["groups"]:
            idx[:, comp] = torch.searchsorted(th, z[:, comp].T.contiguous(), right=True).T
        sym = torch.zeros(n, codec.layout.symbols, dtype=torch.int64, device=x.device)
        used = p["comp"].numel()
        if used:
            sym[:, :used] = (idx[:, p["comp"]] >> p["bitpos"]) & 1
        if not codec.params.gain:
            return sym, None
        zh = (p["levels"][p["starts"] + idx] if zh is None else zh).double()
        den = fixed_sum(zh.square(), dim=1, keepdim=True)
        num = fixed_sum(z.double() * zh, dim=1, keepdim=True)
        # no quantized energy: the gain is irrelevant, keep 1
        g = torch.where(den > 0, num / den.clamp_min(1e-300), torch.ones_like(den))
        return sym, g.float()

    def decode(self, codec: Codec, symbols: torch.Tensor, side):
        p = self._plan(codec, symbols.device)
        used = p["comp"].numel()
        if bool((symbols[:, used:] != 0).any()):
            raise CodecMismatch(f"codes carry bits past the {used} this codec uses (corrupted codes?)")
        idx = torch.zeros(symbols.shape[0], codec.dim, dtype=torch.int64, device=symbols.device)
        if used:
            idx.index_add_(1, p["comp"], symbols[:, :used] << p["bitpos"])
        if p["trellis"] is not None:
            from .tcq import walk

            zh = torch.zeros(symbols.shape[0], codec.dim, dtype=torch.float32, device=symbols.device)
            for comp, table, _mids in p["trellis"]:
                zh[:, comp] = walk(idx[:, comp].contiguous(), table) * p["scale"][comp]
        else:
            zh = p["levels"][p["starts"] + idx]
        if side is not None:
            zh = zh * side
        # float64 accumulation, rounded once: float32 matmuls change their summation
        # order with the batch shape, so a row could decode differently in another batch
        return (zh.double() @ p["basisT64"] + p["mean64"]).float()
