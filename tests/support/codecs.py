"""Test-only helpers about the codecs (moved out of the service, issue 6): the dense
rotation matrix, the transform's predicted distortion, bitcodes-pytorch's bit
helpers that the tests compare against the reference package, the rows the
kernel tests encode, and the database and queries the scoring tests score."""

from __future__ import annotations

import numpy as np
import torch

from embquant.codecs import rotation, transform


def rotation_matrix(seed: int, dim: int) -> torch.Tensor:
    """The dense (D, D) float64 matrix R with rotation.forward(x) == x @ R.T."""
    return rotation.forward(torch.eye(dim, dtype=torch.float64), seed).T.contiguous()


def predicted_distortion(variances: np.ndarray, alloc: np.ndarray) -> float:
    """The squared error per vector predicted on Gaussian data with these component
    variances for a transform bit allocation: ``sum lambda_i d(b_i)``."""
    d = np.asarray(transform.distortions())
    return float(np.sum(np.asarray(variances, dtype=np.float64) * d[np.asarray(alloc, dtype=np.int64)]))


def to_bits(indices: np.ndarray, num_bits: int) -> np.ndarray:
    """Integers -> their ``num_bits`` lowest bits, most significant first, as int64 0/1
    along a new last axis (the order of ``bitcodes_pytorch.to_bits``)."""
    shifts = np.arange(num_bits - 1, -1, -1, dtype=np.int64)
    return ((np.asarray(indices).astype(np.int64)[..., None] >> shifts) & 1).astype(np.int64)


def to_decimal(bits: np.ndarray) -> np.ndarray:
    """0/1 values along the last axis, most significant first -> int64 (the inverse of
    `to_bits`, as ``bitcodes_pytorch.to_decimal``)."""
    b = np.asarray(bits)
    weights = np.left_shift(np.int64(1), np.arange(b.shape[-1] - 1, -1, -1, dtype=np.int64))
    return (b.astype(np.int64) * weights).sum(axis=-1)


def kernel_rows(n: int, d: int, seed: int = 0, unit: bool = False) -> torch.Tensor:
    """(n, d) unit rows for the kernel tests; unless ``unit``, row 1 is zero and rows 2
    and 3 are scaled by 1e30 (near float32's top) and 1e-30."""
    g = torch.Generator().manual_seed(seed * 7919 + d)
    x = torch.randn(n, d, generator=g)
    x = x / x.norm(dim=1, keepdim=True)
    if not unit and n > 3:
        x[1] = 0.0  # a zero row
        x[2] *= 1e30  # near float32's top
        x[3] *= 1e-30
    return x


def anisotropic(dim: int, n: int, nq: int, seed: int = 0, unit: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(x (n, dim), q (nq, dim)) float32 for the scoring tests: Gaussian with a scale per
    dimension from 0.2 to 3 (a few heavy coordinates, as embeddings have), the rows
    normalised with ``unit``."""
    rng = np.random.default_rng(seed + dim)
    x = (rng.standard_normal((n, dim)) * rng.uniform(0.2, 3.0, dim)).astype(np.float32)
    q = (rng.standard_normal((nq, dim)) * rng.uniform(0.2, 3.0, dim)).astype(np.float32)
    if unit:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.from_numpy(x), torch.from_numpy(q)
