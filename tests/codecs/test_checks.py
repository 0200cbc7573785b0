"""checks.all_finite: the sum-first finiteness test the codec checks use."""

from __future__ import annotations

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
