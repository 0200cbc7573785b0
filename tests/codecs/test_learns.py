"""codecs.learns(scheme, params) (the scheme's own Scheme.learns, or a centred codec)
is False only where the codec is a function of (params, dim): the service then
resolves a scheme given by name once and batches its requests."""

from __future__ import annotations

import pytest
import torch

from embquant import codecs

CASES = [(s.name, p) for s in codecs.all_schemes().values() for p in s.examples
         if not codecs.learns(s, codecs.parse_params(s, p))]


@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_oblivious_codecs_ignore_the_sample(name, params):
    scheme = codecs.get_scheme(name)
    p = codecs.parse_params(scheme, params)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(64, 32, generator=g)
    b = torch.randn(16, 32, generator=g) * 7 + 3
    assert codecs.fit(scheme, p, a).key == codecs.fit(scheme, p, b).key


def test_learning_settings_are_flagged():
    assert codecs.get_scheme("lloyd").learns(codecs.parse_params(codecs.get_scheme("lloyd"), {"mode": "fit_dim"}))
    assert not codecs.get_scheme("lloyd").learns(codecs.parse_params(codecs.get_scheme("lloyd"), {}))
    cb = codecs.get_scheme("codebook")
    assert cb.learns(codecs.parse_params(cb, {"scale": "codec"}))
    assert not cb.learns(codecs.parse_params(cb, {}))
    b = codecs.get_scheme("binary")
    assert b.learns(codecs.parse_params(b, {"scale": "global"}))
    # centring learns the sample's mean, whatever the scheme's own setting
    lloyd = codecs.get_scheme("lloyd")
    assert codecs.learns(lloyd, codecs.parse_params(lloyd, {"center": True}))
    assert not codecs.learns(lloyd, codecs.parse_params(lloyd, {}))
    # a learning setting gives different codecs for different samples
    g = torch.Generator().manual_seed(2)
    p = codecs.parse_params(cb, {"scale": "codec"})
    assert codecs.fit(cb, p, torch.randn(8, 16, generator=g)).key != codecs.fit(cb, p, 5 * torch.randn(8, 16, generator=g)).key
