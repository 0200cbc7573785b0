"""The fast exact bucketize equals torch.bucketize(right=True), value for value."""

import numpy as np
import pytest
import torch
from scipy.special import ndtri

from embquant.codecs import _scalar


def tables():
    n16 = ndtri(np.arange(1, 16) / 16)
    n256 = ndtri(np.arange(1, 256) / 256)
    uni = np.linspace(-1, 1, 255)
    nf4 = np.array([-1.0, -0.696, -0.525, -0.395, -0.284, -0.185, -0.091, 0.0, 0.080, 0.161, 0.246, 0.338, 0.441, 0.563, 0.723, 1.0])
    return {"gauss16": n16, "gauss256": n256, "uniform255": uni, "nf4mid": (nf4[1:] + nf4[:-1]) / 2,
            "two": np.array([-0.5, 0.5]), "clustered": np.concatenate([np.linspace(0, 1e-3, 20), [1.0, 2.0]])}


@pytest.fixture(autouse=True)
def _always_fast(monkeypatch):
    monkeypatch.setattr(_scalar, "_FAST_LEVELS", 2)  # exercise the grid on every table


@pytest.mark.parametrize("name", sorted(tables()))
def test_equals_binary_search_everywhere(name):
    t = torch.tensor(tables()[name], dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    span = float(t[-1] - t[0])
    parts = [torch.randn(200_000, generator=g) * span,  # beyond the range too
             t, torch.nextafter(t, torch.tensor(float("inf"))), torch.nextafter(t, torch.tensor(-float("inf"))),
             torch.tensor([0.0, -0.0, 1e30, -1e30, 1e-30, float(t[0]), float(t[-1])])]
    z = torch.cat(parts).reshape(-1, 1).repeat(1, 2)
    fast = _scalar.bucketize(z, t)
    ref = torch.bucketize(z.contiguous(), t, right=True)
    assert torch.equal(fast, ref)


def test_grid_is_built_once_per_tensor_and_released():
    t = torch.tensor(ndtri(np.arange(1, 16) / 16), dtype=torch.float32)
    z = torch.randn(50_000)
    _scalar.bucketize(z, t)
    assert id(t) in _scalar._cache
    key = id(t)
    del t
    import gc

    gc.collect()
    assert key not in _scalar._cache


@pytest.mark.parametrize("width", [1, 2, 3, 48, 64, 100, 384])
def test_fixed_sum_is_batch_invariant_and_correct(width):
    g = torch.Generator().manual_seed(width)
    x = torch.randn(257, width, generator=g) * torch.logspace(-3, 3, width)
    full = _scalar.fixed_sum(x, dim=1, keepdim=True)
    assert full.shape == (257, 1)
    assert torch.allclose(full.double(), x.double().sum(1, keepdim=True), rtol=1e-5, atol=1e-3)
    for lo, hi in [(0, 1), (5, 40), (100, 257)]:
        assert torch.equal(_scalar.fixed_sum(x[lo:hi], dim=1, keepdim=True), full[lo:hi])
    assert torch.equal(_scalar.fixed_sum(x.T, dim=0), full[:, 0])
    assert torch.equal(_scalar.fixed_mean(x, dim=1), full[:, 0] / width)
