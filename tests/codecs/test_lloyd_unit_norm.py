"""lloyd with norm='unit': exactly `bits` per dimension, no side value."""

import pytest
import torch

from embquant import codecs
from embquant.errors import InvalidInput


def test_four_bits_per_dimension_at_the_gaussian_optimum(minilm):
    x = torch.from_numpy(minilm)
    codec = codecs.fit("lloyd", {"bits": 4, "norm": "unit"}, x)
    codes, side = codecs.encode(codec, x)
    assert side is None and codec.layout.bits_per_vector() == 4 * 384
    y = codecs.decode(codec, codes, side)
    rel = float(((x - y) ** 2).sum() / (x**2).sum())
    assert rel <= 0.0095, rel  # Lloyd-Max on N(0,1): 0.009497; measured 0.00939 on these 600


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_matches_lloyd_max_on_rotated_unit_vectors(bits):
    g = torch.Generator().manual_seed(bits)
    x = torch.randn(2000, 256, generator=g, dtype=torch.float64)
    x = (x / x.norm(dim=1, keepdim=True)).float()
    codec = codecs.fit("lloyd", {"bits": bits, "norm": "unit"}, x)
    y = codecs.decode(codec, *codecs.encode(codec, x))
    rel = float(((x - y) ** 2).sum() / (x**2).sum())
    expected = {1: 0.3634, 2: 0.1175, 3: 0.03454, 4: 0.009497}[bits]
    assert rel == pytest.approx(expected, rel=0.03)


def test_non_unit_vectors_are_refused_with_the_row():
    x = torch.randn(5, 64)
    x = x / x.norm(dim=1, keepdim=True)
    x[3] *= 1.1
    codec = codecs.fit("lloyd", {"norm": "unit"}, x[:3])
    with pytest.raises(InvalidInput, match="row 3 has norm 1.1"):
        codecs.encode(codec, x)
