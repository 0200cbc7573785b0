"""checks.all_finite: the finiteness test the codec checks use."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from embquant.codecs.checks import all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_all_finite(dtype):
    x = torch.randn(300, 7).to(dtype)
    assert all_finite(x)
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[123, 4] = bad
        assert not all_finite(y)
        assert not all_finite(y[100:200])  # a view
        assert all_finite(y[:100])
    y = x.clone()
    y[0, 0], y[1, 1] = float("inf"), float("-inf")  # a sum of NaN, not of infinity
    assert not all_finite(y)
    # finite values whose sum overflows: the elementwise check decides
    big = torch.full((10, 3), float(torch.finfo(dtype).max), dtype=dtype)
    assert not bool(torch.isfinite(big.sum())) and all_finite(big)
    assert all_finite(torch.empty(0, 5, dtype=dtype))


def test_all_finite_of_integers_and_transposed():
    assert all_finite(torch.arange(10))
    x = torch.from_numpy(np.full((4, 5), np.nan, np.float32)).T
    assert not all_finite(x)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_all_finite_of_numpy_arrays(dtype):
    """numpy arrays (the API's request arrays, a kernel's side values): the elementwise test
    of a small one (the slices), the min and max of a large one (the whole, 21,000 values)."""
    x = np.random.default_rng(0).standard_normal((3000, 7)).astype(dtype)
    assert all_finite(x)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[123, 4] = bad
        assert not all_finite(y) and not all_finite(y[100:200]) and all_finite(y[:100])
    assert all_finite(np.full((10, 3), np.finfo(dtype).max, dtype))  # finite values whose own sum overflows
    assert all_finite(np.empty((0, 5), dtype)) and all_finite(np.arange(10))


def test_all_finite_of_large_float32_arrays():
    """Past _SMALL values a contiguous float32 array is checked by its dot product
    with itself; a non-finite value anywhere, or values whose squares overflow it, go
    on to the min and the max, which decide."""
    x = np.random.default_rng(1).standard_normal((4096, 384)).astype(np.float32)
    assert all_finite(x)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[4000, 383] = bad
        assert not all_finite(y)
        assert not all_finite(y.T)  # not contiguous: the min and the max
        assert all_finite(y[:4000])
    huge = np.full((200, 384), 3e19, np.float32)  # finite, but x . x overflows
    with np.errstate(over="ignore"):
        assert not np.isfinite(np.dot(huge.ravel(), huge.ravel()))
    assert all_finite(huge)
    y = x.copy()
    y[0, 0], y[1, 1] = np.inf, -np.inf
    assert not all_finite(y)


@pytest.mark.parametrize("shape", [(4, 4), (100, 384), (300, 384)])
def test_all_finite_warns_of_nothing(shape):
    """NaN, Inf (+Inf beside -Inf: their sum is invalid) and overflow are answers, not
    warnings: under a filter that turns RuntimeWarning into errors (as a test run or a
    strict deployment may set) a bad request still gets its 400, never a 500. The
    fuzzing of /score found the small-array sum warning."""
    x = np.ones(shape, np.float32)
    x[0, 0], x[-1, -1] = np.inf, -np.inf
    big = np.full(shape, 3e38, np.float32)
    nan = np.ones(shape, np.float32)
    nan[1, 1] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not all_finite(x) and not all_finite(x.T) and not all_finite(nan) and not all_finite(nan.T)
        assert all_finite(big) and all_finite(big.T)
