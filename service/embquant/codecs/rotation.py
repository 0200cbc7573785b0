"""A seeded randomised Hadamard rotation: orthogonal, D-preserving, exact to undo.

Scalar quantizers work best when every coordinate looks alike (near-Gaussian,
same spread). Real embeddings are not like that: a few coordinates carry large,
heavy-tailed values. An orthogonal rotation keeps lengths and inner products
but spreads each coordinate's energy over many, so the rotated coordinates
are near-Gaussian and a data-oblivious codebook fits them.

The transform is ``R = H2 P2 S2 . H1 P1 S1`` (two rounds), where per round

- ``S``: random signs, one per coordinate;
- ``P``: a random permutation of the coordinates;
- ``H``: normalised Walsh-Hadamard transforms on consecutive blocks whose sizes
  are the powers of two in the binary expansion of D, largest first
  (384 = 256 + 128, 385 = 256 + 128 + 1). Every block is orthogonal, so the whole
  is orthogonal for any D, nothing is padded, and the biggest blocks mix the most.
  (Blocks of the largest power of two dividing D, as in 3 x 128 for 384, would
  mix less, and nothing at all for odd D.) A block of size 1 is the identity; the
  second round's fresh permutation sends such a coordinate into a big block.

Signs and permutations are a pure function of (seed, D, round): splitmix64
hashes of the coordinate index, sorted for the permutation, so any client can
rebuild them without our RNG (numpy and torch generators may change streams
between versions; a stored codec must not). They are built once on CPU and
cached per (seed, D, device).

The butterfly uses only reshapes, adds, subtracts and one multiplication by a
constant, each an exactly rounded IEEE operation in a fixed order, so CPU and
CUDA give bit-identical results (a matmul would not: its summation order and
TF32 settings vary by device and library).
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
import torch

from ..errors import InvalidInput

ROUNDS = 2

_cache: dict[tuple[int, int, str], list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
_lock = threading.Lock()

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _stream(seed: int, dim: int, rnd: int, kind: int) -> np.ndarray:
    """dim pseudo-random uint64 values for (seed, dim, round, kind)."""
    base = _splitmix64(np.array([seed, dim, rnd, kind], dtype=np.uint64))
    # Chain the four words so each one changes every value of the stream.
    with np.errstate(over="ignore"):
        key = base[0]
        for w in base[1:]:
            key = _splitmix64(np.array([key ^ w], dtype=np.uint64))[0]
    idx = np.arange(dim, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _splitmix64(idx * np.uint64(0xD1B54A32D192ED03) + key)


def blocks(dim: int) -> list[int]:
    """Hadamard block sizes of one round: the powers of two in dim's binary expansion, largest first."""
    return [1 << k for k in range(dim.bit_length() - 1, -1, -1) if dim >> k & 1]


def tables(seed: int, dim: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(signs float32 (dim,), permutation int64 (dim,))] per round."""
    out = []
    for r in range(ROUNDS):
        bits = _stream(seed, dim, r, 0) >> np.uint64(63)
        signs = np.where(bits == 1, -1.0, 1.0).astype(np.float32)
        # Sorting distinct-with-overwhelming-probability hashes gives a uniform
        # permutation; the stable sort breaks any tie by index, deterministically.
        perm = np.argsort(_stream(seed, dim, r, 1), kind="stable").astype(np.int64)
        out.append((signs, perm))
    return out


@functools.lru_cache(maxsize=64)
def kernel_tables(seed: int, dim: int):
    """The transform as the compiled kernels take it: (signs (R, D) f32, perm (R, D) i64,
    inv (R, D) i64, blocks i64, 1/sqrt(block) f32), read-only numpy arrays."""
    tabs = tables(seed, dim)
    signs = np.stack([s for s, _ in tabs]).astype(np.float32)
    perm = np.stack([p for _, p in tabs]).astype(np.int64)
    inv = np.empty_like(perm)
    for r in range(perm.shape[0]):
        inv[r, perm[r]] = np.arange(dim, dtype=np.int64)
    bl = np.array(blocks(dim), dtype=np.int64)
    # torch multiplies a float32 tensor by a Python float rounded to float32
    scales = np.array([np.float32(1.0 / math.sqrt(b)) for b in bl], dtype=np.float32)
    for a in (signs, perm, inv, bl, scales):
        a.setflags(write=False)
    return signs, perm, inv, bl, scales


def _get(seed: int, dim: int, device: torch.device):
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise InvalidInput(f"rotation seed must be an integer in [0, 2**63), got {seed!r}")
    key = (seed, dim, str(device))
    t = _cache.get(key)
    if t is None:
        with _lock:
            t = _cache.get(key)
            if t is None:
                t = []
                for signs, perm in tables(seed, dim):
                    inv = np.empty_like(perm)
                    inv[perm] = np.arange(dim, dtype=np.int64)
                    t.append(tuple(torch.from_numpy(a).to(device) for a in (signs, perm, inv)))
                _cache[key] = t
    return t


def _fwht(x: torch.Tensor) -> torch.Tensor:
    """Normalised Walsh-Hadamard transform along the last dim (a power of two).

    Scaling first by 1/sqrt(B) keeps every intermediate within sqrt(B) times
    the input's largest magnitude, the bound of the result itself, so nothing
    overflows that the result would not."""
    n, b = x.shape
    if b == 1:
        return x
    y = x * (1.0 / math.sqrt(b))
    buf = torch.empty_like(y)
    h = 1
    while h < b:
        # each butterfly writes straight into the other buffer: the same adds in the
        # same order as a stack of (a + c, a - c), without the extra copy
        v = y.view(n, b // (2 * h), 2, h)
        o = buf.view(n, b // (2 * h), 2, h)
        torch.add(v[:, :, 0, :], v[:, :, 1, :], out=o[:, :, 0, :])
        torch.sub(v[:, :, 0, :], v[:, :, 1, :], out=o[:, :, 1, :])
        y, buf = buf, y
        h *= 2
    return y


def _hadamard_blocks(x: torch.Tensor) -> torch.Tensor:
    parts, lo = [], 0
    for b in blocks(x.shape[1]):
        parts.append(_fwht(x[:, lo : lo + b].contiguous()))
        lo += b
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _check(x: torch.Tensor) -> None:
    if x.dim() != 2 or x.shape[1] == 0:
        raise InvalidInput(f"rotation needs a 2-D (rows, dims) tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InvalidInput(f"rotation needs floating point vectors, got {x.dtype}")


def forward(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Rotate rows of x (N, D) by the seeded orthogonal transform R; returns a new (N, D) tensor."""
    _check(x)
    y = x
    for signs, perm, _inv in _get(seed, x.shape[1], x.device):
        y = _hadamard_blocks((y * signs.to(y.dtype))[:, perm])
    return y


def inverse(y: torch.Tensor, seed: int) -> torch.Tensor:
    """Undo `forward`: x = R^T y (exact up to float rounding)."""
    _check(y)
    x = y
    for signs, _perm, inv in reversed(_get(seed, y.shape[1], y.device)):
        # H is its own inverse once normalised; then undo the permutation and signs.
        x = _hadamard_blocks(x)[:, inv] * signs.to(x.dtype)
    return x
