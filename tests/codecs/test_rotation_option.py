"""Rotation is an option of every scalar scheme, applied by the core around the scheme."""

import pytest
import torch

from embquant import codecs

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
