"""bitcodes: learned binary codes (the ``bitcodes-pytorch`` package).

A codec holds a codebook C of ``num_bits`` rows (D-vectors) and an offset o.
A vector x is encoded as bits b in {0, 1}^num_bits and decoded as ``o + b @ C``:
the sum of the selected rows. (bitcodes-pytorch keeps two rows per bit and picks
one; that is the same model with o = sum of the "0" rows and C = the differences.)

Encoding given a codebook is binary least squares, NP-hard in general. We use a
deterministic per-row encoder: a greedy pass from b = 0 over the bits in order of
decreasing row norm (coarse to fine), then ``encode_sweeps - 1`` sweeps of
iterated conditional modes (each bit set to its best value given the others).
Every step is a per-row operation in float64, so a row's bits do not depend on
the other rows of the batch.

Fitting alternates that encoder with a least-squares solve of the codebook and
offset (``[C; o] = lstsq([B, 1], X)``), starting from a PCA transform code (bits
allotted to principal directions by reverse water-filling, each direction a
uniform scalar quantizer written in binary) or from random rows. Unlike the
package's Gumbel-softmax training this needs no learning rate or temperature and
stops after ``iterations`` rounds; ``max_seconds`` (off by default) only caps it.
The codebook with the lowest training error seen is kept. With the same ``seed``
the codec is reproducible bit for bit on one machine whatever its load; a fit
stopped by the cap keeps the iterations it finished and its codec's params record
how many (a wall clock as the default stop made the codec depend on the load).

Packing: the symbols are the bits (1 bit each, ``num_bits`` per row), packed by
the common rule with b = 1: bit k of a row is bit k % 64 of word k // 64.
"""

from __future__ import annotations

import heapq
import math
import time
from typing import Callable, Literal

import numpy as np
import torch
from pydantic import Field

from . import kernels
from ._cancel import checkpoint, interruptible
from ._scalar import fixed_sum
from .base import Codec, Layout, Scheme, SchemeParams, require_state
from .registry import register

_BLOCK = 32  # bits per block of a sweep (one pass of correlations, then the block's bits one by one)


# -- the encoder -------------------------------------------------------------


def _order(codebook: torch.Tensor) -> torch.Tensor:
    """Bits in order of decreasing row norm (ties by index): coarse to fine."""
    c = codebook.double()
    norms = fixed_sum(c * c, dim=1)  # a fixed order: the same on every device
    # stable sort on the negated norms keeps the lowest index first among equals
    return torch.sort(-norms, stable=True).indices


def _dots(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b.T for a (N, D) and b (M, D) float64, each entry summed over D in ascending
    order, one multiply and one add per step (a matrix product's order is its
    library's, and changes with the device and the batch shape; this one does not,
    and `kernels.bitcodes_cpu` repeats it)."""
    bt = b.T.contiguous()
    acc = torch.zeros(a.shape[0], b.shape[0], dtype=torch.float64, device=a.device)
    for j in range(a.shape[1]):
        acc += a[:, j : j + 1] * bt[j]
    return acc


def _combine(w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """w @ b for w (N, M) and b (M, D) float64, summed over M in ascending order, one
    multiply and one add per step (as `_dots`)."""
    acc = torch.zeros(w.shape[0], b.shape[1], dtype=torch.float64, device=w.device)
    for t in range(b.shape[0]):
        acc += w[:, t : t + 1] * b[t]
    return acc


class _Plan:
    """What encoding with one codebook needs besides the rows, every sum in a fixed
    order: the bit order (coarse to fine), its blocks, each block's Gram matrix and
    half the codebook's column sums; built once per codec (`Bitcodes.encode`) or per
    fit iteration."""

    def __init__(self, c: torch.Tensor):
        self.c = c
        self.order = _order(c)
        self.blocks = [self.order[i : i + _BLOCK] for i in range(0, c.shape[0], _BLOCK)]
        full = len(self.blocks) - (c.shape[0] % _BLOCK != 0)
        # the full blocks' Gram matrices in one batch of elementwise steps (`_dots`'s, entry by entry)
        cb = c[self.order[: full * _BLOCK]].reshape(full, _BLOCK, c.shape[1])
        acc = torch.zeros(full, _BLOCK, _BLOCK, dtype=torch.float64, device=c.device)
        for j in range(c.shape[1] if full else 0):
            acc += cb[:, :, j : j + 1] * cb[:, None, :, j]
        self.grams = list(acc.unbind(0)) + [_dots(c[blk], c[blk]) for blk in self.blocks[full:]]
        self.half = 0.5 * fixed_sum(c, dim=0)
        self._arrays = None

    def arrays(self) -> tuple:
        """(rows of C in bit order, block starts, Gram matrices padded to (B, 32, 32),
        half the column sums): `kernels.bitcodes_cpu.encode`'s arguments (CPU)."""
        if self._arrays is None:
            grams = np.zeros((len(self.blocks), _BLOCK, _BLOCK))
            for b, g in enumerate(self.grams):
                grams[b, : g.shape[0], : g.shape[0]] = g.cpu().numpy()
            k = self.c.shape[0]
            starts = np.array([0] + [min(i + _BLOCK, k) for i in range(0, k, _BLOCK)], np.int64)
            self._arrays = (np.ascontiguousarray(self.c[self.order].cpu().numpy()), starts, grams,
                            np.ascontiguousarray(self.half.cpu().numpy()))
        return self._arrays


def encode_bits(
    residual: torch.Tensor, codebook: torch.Tensor, sweeps: int, poll: Callable[[], None] | None = None,
    plan: _Plan | None = None,
) -> torch.Tensor:
    """Binary least squares per row: bits b (N, K) float64 0/1 approximately
    minimising ``|residual - b @ codebook|^2``. Deterministic and per row: every sum
    in a fixed order (`_dots`, `_combine`, `fixed_sum`), so a row's bits are the same
    in any batch and on any device, and the compiled encoder's.

    ``poll`` (the fit passes `checkpoint`; encoding passes nothing) is called
    before each bit's update and each block's correlations (the compiled encoder:
    between blocks of `_POLL_ROWS` rows): a fraction of a second apart on a
    20,000-row sample. ``plan``: the codebook's `_Plan`, when the caller keeps one."""
    r = residual.double()
    c = codebook.double().to(r.device)
    if plan is None:
        plan = _Plan(c)
    if kernels.compiled(r):
        return _encode_bits_compiled(r, plan, sweeps, poll)
    n, k = r.shape[0], c.shape[0]
    # Start every bit undecided at 1/2 (its mean): the first pass then sets each
    # bit, coarse to fine, by the sign of its correlation with the residual, which
    # is successive approximation (a greedy pass from b = 0 is not, and gets stuck).
    bits = torch.full((n, k), 0.5, dtype=torch.float64, device=r.device)
    blocks, grams = plan.blocks, plan.grams
    err = r - plan.half  # residual after the current bits
    for _ in range(max(1, sweeps)):
        changed = False
        for blk, g in zip(blocks, grams):
            if poll is not None:
                poll()
            cb = c[blk]
            corr = _dots(err, cb)  # (N, m): correlation of each row's residual with each row of the block
            cur = bits[:, blk]
            delta = torch.zeros_like(cur)
            for t in range(blk.numel()):
                if poll is not None:
                    poll()
                gtt = g[t, t]
                val = corr[:, t] + cur[:, t] * gtt  # correlation with this bit's own contribution removed
                new = (val > 0.5 * gtt).double()
                d = new - cur[:, t]
                if bool(d.any()):
                    corr -= d[:, None] * g[t][None, :]
                    delta[:, t] = d
                    cur[:, t] = new
            if poll is not None:
                poll()
            if bool(delta.any()):
                changed = True
                bits[:, blk] = cur
                err -= _combine(delta, cb)
        if not changed:
            break
    return bits


#: Rows per call of the compiled encoder when a fit polls between calls.
_POLL_ROWS = 2048


def _encode_bits_compiled(r: torch.Tensor, plan: _Plan, sweeps: int, poll: Callable[[], None] | None):
    """`encode_bits` by `kernels.bitcodes_cpu`, bit for bit (the plan is the reference's)."""
    from .kernels import bitcodes_cpu

    cb, starts, grams, half = plan.arrays()
    x = np.ascontiguousarray(r.numpy())
    out = np.empty((x.shape[0], cb.shape[0]), np.float64)
    step = _POLL_ROWS if poll is not None else max(x.shape[0], 1)
    for lo in range(0, x.shape[0], step):
        if poll is not None:
            poll()
        bitcodes_cpu.encode(x[lo : lo + step], half, cb, starts, grams, sweeps, out[lo : lo + step])
    bits = torch.empty_like(torch.from_numpy(out))
    bits[:, plan.order] = torch.from_numpy(out)
    return bits


# -- fitting -----------------------------------------------------------------


def _pca_init(x: torch.Tensor, num_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A PCA transform code: bits allotted to principal directions greedily (each
    bit to the direction of largest remaining variance, which a bit divides by 4);
    a direction with n bits is a 2**n-level uniform quantizer written in binary."""
    mean = x.mean(0)
    r = x - mean
    # one LAPACK call, seconds on a 20,000-row sample: under a cancel scope it runs
    # where the scope can still stop the fit (see `_cancel.interruptible`)
    _, s, vt = interruptible(torch.linalg.svd, r, full_matrices=False)
    var = (s**2 / max(x.shape[0], 1)).tolist()
    heap = [(-v, i) for i, v in enumerate(var)]
    heapq.heapify(heap)
    counts = [0] * len(var)
    for _ in range(num_bits):
        v, i = heapq.heappop(heap)
        counts[i] += 1
        heapq.heappush(heap, (v / 4.0, i))
    rows = []
    offset = mean.clone()
    for i, nb in enumerate(counts):
        if nb == 0:
            continue
        sigma = math.sqrt(max(var[i], 0.0))
        half = sigma * min(1.6 + 0.6 * (nb - 1), 4.0)  # half range of the uniform quantizer
        offset = offset + vt[i] * (-half + half / 2**nb)
        for j in range(1, nb + 1):
            rows.append(vt[i] * (2 * half / 2**j))
    return torch.stack(rows), offset


def _lstsq(bits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codebook and offset minimising |x - o - bits @ C|^2 (a small ridge keeps
    unused or collinear bits finite; bits are 0/1 so it is scale free)."""
    n, k = bits.shape
    a = torch.cat([bits, torch.ones(n, 1, dtype=bits.dtype, device=bits.device)], 1)
    gram = a.T @ a
    gram += torch.eye(k + 1, dtype=gram.dtype, device=gram.device) * (1e-6 * max(n, 1))
    w = torch.linalg.solve(gram, a.T @ x)
    return w[:k], w[k]


def _sq_error(x: torch.Tensor, offset: torch.Tensor, codebook: torch.Tensor, bits: torch.Tensor) -> float:
    return float(((x - offset - bits @ codebook) ** 2).sum())


class BitcodesParams(SchemeParams):
    num_bits: int = Field(256, ge=1, le=4096, description="bits per vector (rows of the codebook)")
    iterations: int = Field(10, ge=0, le=1000, description="alternating encode / least-squares rounds at fit time")
    max_seconds: float | None = Field(
        None, gt=0, le=3600,
        description="optional wall-clock cap on the fit, in seconds; null (default): the fit stops on iterations "
        "alone, so the codec does not depend on the machine's load (a capped fit that stops early records the "
        "iterations it finished in the codec's params)",
    )
    seed: int = Field(0, ge=0, lt=2**31, description="seed of the training subsample and random init")
    encode_sweeps: int = Field(4, ge=1, le=64, description="coordinate-descent sweeps per encoded vector")
    init: Literal["pca", "random"] = Field("pca", description="codebook initialisation")
    max_fit_rows: int = Field(20000, ge=1, le=1_000_000, description="largest training sample (seeded subsample)")


@register
class Bitcodes(Scheme):
    name = "bitcodes"
    summary = "Learned binary codes (bitcodes): each vector is offset + the sum of the codebook rows its bits select."
    Params = BitcodesParams
    data_dependent = True
    examples = (
        {"num_bits": 8, "iterations": 2},
        {"num_bits": 70, "iterations": 3, "encode_sweeps": 2},
        {"num_bits": 16, "iterations": 1, "init": "random", "seed": 3},
    )

    def state_bytes(self, params: BitcodesParams, dim: int) -> int:
        return 4 * params.num_bits * dim + 4 * dim  # codebook and offset, float32

    def layout(self, params: BitcodesParams, dim: int) -> Layout:
        return Layout(bits=1, symbols=params.num_bits, side_values=0)

    def check_state(self, codec: Codec) -> None:
        require_state(codec, "codebook", (codec.params.num_bits, codec.dim))
        require_state(codec, "offset", (codec.dim,))

    def fit(self, params: BitcodesParams, x: torch.Tensor):
        start = time.monotonic()
        gen = torch.Generator().manual_seed(params.seed)
        xs = x.detach().double().cpu()
        if xs.shape[0] > params.max_fit_rows:
            pick = torch.randperm(xs.shape[0], generator=gen)[: params.max_fit_rows]
            xs = xs[torch.sort(pick).values]
        # Work in units of the sample's scale so 1e-30 or 1e30 inputs behave like 1.
        scale = float(xs.abs().max())
        if not (scale > 0 and math.isfinite(scale)):
            scale = 1.0
        xs = xs / scale
        if params.init == "pca":
            codebook, offset = _pca_init(xs, params.num_bits)
        else:
            offset = xs.mean(0)
            spread = float((xs - offset).pow(2).sum(1).mean().sqrt()) or 1.0
            codebook = torch.randn(params.num_bits, xs.shape[1], generator=gen, dtype=torch.float64)
            codebook *= spread / math.sqrt(params.num_bits * xs.shape[1])
        checkpoint()
        bits = encode_bits(xs - offset, codebook, params.encode_sweeps, checkpoint)
        best = (_sq_error(xs, offset, codebook, bits), codebook, offset)
        done = 0
        for _ in range(params.iterations):
            if params.max_seconds is not None and time.monotonic() - start > params.max_seconds:
                break
            done += 1
            checkpoint()
            codebook, offset = _lstsq(bits, xs)
            checkpoint()
            bits = encode_bits(xs - offset, codebook, params.encode_sweeps, checkpoint)
            err = _sq_error(xs, offset, codebook, bits)
            if err < best[0]:
                best = (err, codebook, offset)
        _, codebook, offset = best
        state = {
            "codebook": (codebook * scale).float().numpy(),
            "offset": (offset * scale).float().numpy(),
        }
        if done < params.iterations:
            # stopped by the cap: the codec says what it is (refitting with these params
            # and no cap gives the same codec on any machine)
            params = params.model_copy(update={"iterations": done})
        return params, state

    def encode(self, codec: Codec, x: torch.Tensor):
        t = codec.tensors(x.device)
        plan = codec.derived(("plan", str(x.device)), lambda: _Plan(t["codebook"].double()))
        bits = encode_bits(x.double() - t["offset"].double(), t["codebook"], codec.params.encode_sweeps, plan=plan)
        return bits.to(torch.int64), None

    def decode(self, codec: Codec, symbols: torch.Tensor, side):
        # o + bits @ C, the product summed over the bits in ascending order (`_combine`):
        # the same on every device and in any batch, and the compiled decode's
        if kernels.compiled(symbols):
            from .kernels import bitcodes_cpu

            c64, o64 = codec.derived("decode_cpu", lambda: (
                np.ascontiguousarray(codec.state["codebook"], dtype=np.float64),
                np.ascontiguousarray(codec.state["offset"], dtype=np.float64)))
            out = np.empty((symbols.shape[0], codec.dim), np.float32)
            bitcodes_cpu.decode(np.ascontiguousarray(symbols.numpy()), c64, o64, out)
            return torch.from_numpy(out)
        t = codec.tensors(symbols.device)
        out = _combine(symbols.double(), t["codebook"].double()) + t["offset"].double()
        return out.float()
