"""tcq: trellis-coded quantization of the rotated coordinates; one float32 gain per vector.

As `lloyd`, each row is rotated (seeded randomised Hadamard, on by default), divided
by its RMS so its coordinates are near N(0, 1), and decoded as ``g * c`` with the
least-squares gain g of its reconstruction c (``norm="unit"``: unit-norm rows, scaled
by sqrt(D) and decoded at ``c / sqrt(D)``, no side value). Where lloyd picks each coordinate's
level alone, tcq picks the whole row's levels at once along a trellis
(Marcellin & Fischer, "Trellis coded quantization of memoryless and Gauss-Markov
sources", IEEE Trans. Commun. 1990):

- the reconstruction alphabet has ``2**(bits + 1)`` sorted levels, twice lloyd's,
  dealt into four subsets D0..D3 in turn (level j belongs to D_{j mod 4});
- Ungerboeck's 8-state trellis: from state s, branch b in {0, 1} uses subset
  ``SUB[s][b]`` and leads to state ``2 s mod 8 + b``; the even states offer D0 or D2,
  the odd ones D1 or D3;
- a coordinate's symbol is ``bits`` bits: the branch bit and the index of the level
  within its subset (``2**(bits - 1)`` levels each); the path starts in state 0;
- the encoder runs the Viterbi algorithm over the D coordinates of the row: the path
  of least total squared error (float64 sums in coordinate order, ties to the lower
  state), each branch's level the nearest of its subset (counted against the
  subset's float32 midpoints, as lloyd's thresholds); the decoder walks the trellis.

So a row gets any of 2**(bits * D) level sequences the trellis allows out of a
doubled alphabet, for the same ``bits`` per coordinate: on N(0, 1) sequences the mean
squared error is 0.30, 0.086, 0.0066 at 1, 2 and 4 bits against lloyd's 0.363, 0.117,
0.0095 (+0.8, +1.3, +1.6 dB; `tests/codecs/test_tcq.py` checks them). The price is the
encode: 8 states x 2 branches per coordinate, several times lloyd's work
(bench/codecs.py measures it). Decoding is a table walk.

Levels (the codec's state, always stored, so a codec never depends on recomputing
them): ``gaussian`` (default, data oblivious) are constants (`tcq_levels`), trained
once per bit width by Lloyd's iteration through the trellis (each level becomes the
mean of the values the Viterbi path assigns to it, kept symmetric) on a fixed N(0, 1)
sample (numpy's legacy RandomState, whose stream does not change between versions),
starting from the Lloyd-Max levels of ``2**(bits + 1)`` points (tests/support/tcq_levels.py
trains them and checks the constants);
``fit`` trains them the same way on the sample's own normalised rows.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ._cancel import checkpoint
from ._scalar import midpoints as _scalar_midpoints
from ..errors import CodecMismatch
from .base import Codec, Layout, RotatableParams, Scheme, require_state
from .lloyd import _check_unit, _rms, ls_gain
from .registry import register
from . import kernels, tcq_levels

STATES = 8
#: SUB[s][b]: the subset of branch b out of state s; it leads to state 2 s mod 8 + b
SUB = ((0, 2), (1, 3), (2, 0), (3, 1), (2, 0), (3, 1), (0, 2), (1, 3))
#: Lloyd iterations through the trellis when training levels
TRAIN_ITERS = 24
#: rows a fit trains on at most (an even spread of the sample beyond)
FIT_ROWS = 4096


class TcqParams(RotatableParams):
    bits: int = Field(4, ge=1, le=8, description="bits per dimension (a trellis over 2**(bits+1) levels)")
    mode: Literal["gaussian", "fit"] = Field(
        "gaussian", description="gaussian: levels trained once on N(0,1) (data oblivious); fit: trained on the sample"
    )
    rotate: bool = Field(True, description="rotate by a seeded randomised Hadamard transform before quantizing")
    norm: Literal["row", "unit"] = Field(
        "row",
        description="row: one float32 gain per vector (a side value); unit: the vectors are unit-norm, as most "
        "embedding models output, so no side value is stored (a vector whose norm is off by more than 1e-3 is refused)",
    )


def _tables_np():
    sub = np.array(SUB, dtype=np.int64)
    # predecessors of state t: p0 = t >> 1 and p1 = p0 + 4, both by branch b = t & 1
    p0 = np.arange(STATES) >> 1
    b = np.arange(STATES) & 1
    return sub, p0, p0 + 4, b


def midpoints(levels: np.ndarray) -> np.ndarray:
    """(4, 2**(bits-1) - 1) float32: each subset's midpoints between consecutive levels."""
    per = levels.size // 4
    out = np.empty((4, max(per - 1, 0)), np.float32)
    for i in range(4):
        out[i] = _scalar_midpoints(levels[i::4])
    return out


def _train(z: torch.Tensor, levels: np.ndarray, iters: int, symmetric: bool) -> np.ndarray:
    """Lloyd's iteration through the trellis on rows z (float32): encode, move each
    level to the mean of the values assigned to it (a level nothing chose stays)."""
    lv = levels.astype(np.float32)
    flat = z.double().flatten()
    for _ in range(iters):
        checkpoint()
        sym, _c = viterbi(z, torch.from_numpy(lv), torch.from_numpy(midpoints(lv)))
        j = _level_index(sym).flatten()
        sums = torch.zeros(lv.size, dtype=torch.float64).index_add_(0, j, flat)
        cnt = torch.zeros(lv.size, dtype=torch.float64).index_add_(0, j, torch.ones_like(flat))
        new = torch.where(cnt > 0, sums / cnt.clamp_min(1), torch.from_numpy(lv.astype(np.float64))).numpy()
        if symmetric:
            new = (new - new[::-1]) / 2
        new = np.sort(new).astype(np.float32)
        if np.array_equal(new, lv):
            break
        lv = new
    return lv


def _level_index(sym: torch.Tensor) -> torch.Tensor:
    """Each symbol's level index j = subset + 4 * index, by walking the trellis."""
    return walk(sym, None)


@functools.lru_cache(maxsize=None)
def gaussian_levels(bits: int) -> np.ndarray:
    """The data-oblivious levels for ``bits`` (float32, 2**(bits+1), sorted, symmetric,
    read-only): trained through the trellis (`_train`, from the Lloyd-Max levels of
    bits + 1) on a fixed N(0, 1) sample, and kept as constants (`tcq_levels`, generated
    and checked by tests/support/tcq_levels.py): no process trains them (it took a
    second per width on the compiled kernels, seven on the reference)."""
    if bits not in tcq_levels.LEVELS:
        raise ValueError(f"tcq's Gaussian levels exist for 1 to 8 bits, not {bits}")
    out = np.array(tcq_levels.LEVELS[bits], np.float32)
    out.setflags(write=False)
    return out


# -- the trellis: Viterbi and walk, torch reference and compiled CPU kernel ------------


def viterbi(z: torch.Tensor, levels: torch.Tensor, mids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(symbols int64 (N, D), levels chosen float32 (N, D)) of rows z (float32)."""
    if kernels.compiled(z):
        from .kernels import tcq_cpu

        zc = z.contiguous().numpy()
        sym = np.empty(zc.shape, np.int64)
        c = np.empty(zc.shape, np.float32)
        lv = levels.numpy()
        if lv.size <= 32:  # 16 rows at a time: subsets' midpoints and levels as 16-entry tables
            mids16 = np.full((4, 16), np.inf, np.float32)
            mids16[:, : mids.shape[1]] = mids.numpy()
            lv16 = np.empty((4, 16), np.float32)
            for i in range(4):
                lv16[i] = lv[i::4][np.minimum(np.arange(16), lv.size // 4 - 1)]
            tcq_cpu.viterbi16(zc, lv, mids16, lv16, sym, c)
        else:
            pad = np.full((4, mids.shape[1] + 1), np.inf, np.float32)
            pad[:, :-1] = mids.numpy()
            tcq_cpu.viterbi(zc, lv, pad, sym, c)
        return torch.from_numpy(sym), torch.from_numpy(c)
    step = max(1, (1 << 20) // max(z.shape[1], 1))
    parts = [_viterbi_torch(z[lo:lo + step], levels, mids) for lo in range(0, z.shape[0], step)]
    if len(parts) == 1:
        return parts[0]
    return torch.cat([s for s, _ in parts]), torch.cat([c for _, c in parts])


def _viterbi_torch(z: torch.Tensor, levels: torch.Tensor, mids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dev = z.device
    n, d = z.shape
    sub, p0, p1, b = (torch.from_numpy(a).to(dev) for a in _tables_np())
    lv = levels.to(dev)
    per = lv.numel() // 4
    idx = torch.zeros(n, d, 4, dtype=torch.int64, device=dev)
    if per > 1:
        for i in range(4):
            idx[:, :, i] = torch.bucketize(z, mids[i].to(dev).contiguous(), right=True)
    j = torch.arange(4, device=dev) + 4 * idx  # (n, d, 4) level index per subset
    err = (z.double()[..., None] - lv.double()[j]).square()
    s0, s1 = sub[p0, b], sub[p1, b]  # the subsets of the two branches into each state
    cost = torch.full((n, STATES), float("inf"), dtype=torch.float64, device=dev)
    cost[:, 0] = 0.0
    back = torch.empty(d, n, STATES, dtype=torch.bool, device=dev)
    for t in range(d):
        e = err[:, t, :]
        c0 = cost[:, p0] + e[:, s0]
        c1 = cost[:, p1] + e[:, s1]
        take1 = c1 < c0  # ties: the lower state
        cost = torch.where(take1, c1, c0)
        back[t] = take1
    s = torch.argmin(cost, dim=1)  # the first of equal costs
    sym = torch.empty(n, d, dtype=torch.int64, device=dev)
    chosen = torch.empty(n, d, dtype=torch.int64, device=dev)
    rows = torch.arange(n, device=dev)
    for t in range(d - 1, -1, -1):
        bt = s & 1
        prev = (s >> 1) + 4 * back[t, rows, s].long()
        i = sub[prev, bt]
        k = idx[rows, t, i]
        sym[:, t] = (k << 1) | bt
        chosen[:, t] = i + 4 * k
        s = prev
    return sym, lv[chosen]


def walk(sym: torch.Tensor, levels: torch.Tensor | None) -> torch.Tensor:
    """The trellis walked along symbols (N, D): each coordinate's level (float32), or
    with ``levels`` None its level index j (int64)."""
    if kernels.compiled(sym):
        from .kernels import tcq_cpu

        s = sym.contiguous().numpy()
        if levels is None:
            out = np.empty(s.shape, np.int64)
            tcq_cpu.walk_index(s, out)
        else:
            out = np.empty(s.shape, np.float32)
            tcq_cpu.walk(s, levels.numpy(), out)
        return torch.from_numpy(out)
    dev = sym.device
    sub = torch.tensor(SUB, dtype=torch.int64, device=dev)
    n, d = sym.shape
    st = torch.zeros(n, dtype=torch.int64, device=dev)
    j = torch.empty(n, d, dtype=torch.int64, device=dev)
    for t in range(d):
        b = sym[:, t] & 1
        j[:, t] = sub[st, b] + 4 * (sym[:, t] >> 1)
        st = (2 * st) % STATES + b
    return j if levels is None else levels.to(dev)[j]


# -- the scheme -------------------------------------------------------------------------


@register
class Tcq(Scheme):
    name = "tcq"
    summary = ("Trellis-coded quantization (8-state TCQ over a doubled level alphabet) after a seeded rotation; "
               "one float32 gain per vector.")
    Params = TcqParams
    data_dependent = True
    examples = (
        {"bits": 1},
        {"bits": 2},
        {"bits": 4},
        {"bits": 3, "rotate": False},
        {"bits": 8},
        {"bits": 2, "mode": "fit"},
        {"bits": 4, "center": True},
    )

    def state_bytes(self, params: TcqParams, dim: int) -> int:
        return 4 << (params.bits + 1)

    def layout(self, params: TcqParams, dim: int) -> Layout:
        return Layout(bits=params.bits, symbols=dim, side_values=1 if params.norm == "row" else 0)

    def learns(self, params: TcqParams) -> bool:
        return params.mode != "gaussian"

    def fit(self, params: TcqParams, x: torch.Tensor):
        levels = gaussian_levels(params.bits)
        if params.mode == "fit":
            z = (x / _rms(x)).float().cpu()
            if z.shape[0] > FIT_ROWS:  # an even spread of the sample
                z = z[torch.from_numpy(np.linspace(0, z.shape[0] - 1, FIT_ROWS).round().astype(np.int64))]
            levels = _train(z, levels, TRAIN_ITERS, symmetric=False)
        return params, {"levels": np.array(levels, dtype=np.float32)}

    def check_state(self, codec: Codec) -> None:
        require_state(codec, "levels", (2 << codec.params.bits,))
        lv = codec.state["levels"]
        if not bool(np.all(np.isfinite(lv))) or not bool(np.all(np.diff(lv) >= 0)):
            raise CodecMismatch("codec levels must be finite and sorted in increasing order")

    def _tables(self, codec: Codec, device) -> tuple[torch.Tensor, torch.Tensor]:
        def make():
            lv = np.asarray(codec.state["levels"], dtype=np.float32)
            return torch.from_numpy(lv.copy()).to(device), torch.from_numpy(midpoints(lv)).to(device)

        return codec.derived(("tcq", str(device)), make)

    def encode(self, codec: Codec, x: torch.Tensor):
        lv, mids = self._tables(codec, x.device)
        if codec.params.norm == "unit":  # as lloyd's: the RMS of a unit vector is 1/sqrt(D)
            _check_unit(x)
            return viterbi((x * math.sqrt(x.shape[1])).contiguous(), lv, mids)[0], None
        sym, c = viterbi((x / _rms(x)).contiguous(), lv, mids)
        return sym, ls_gain(x, c)

    def decode(self, codec: Codec, symbols: torch.Tensor, side):
        lv, _ = self._tables(codec, symbols.device)
        if codec.params.norm == "unit":
            return walk(symbols, lv) * (1.0 / math.sqrt(codec.dim))
        return walk(symbols, lv) * side
