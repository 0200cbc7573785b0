"""Settings that cannot work are refused with a 400 that says why; a setting that is for
Hamming search only is accepted with a `warnings` list in the /fit and /quantize answers
(docs/schemes.md, "Settings refused or warned about")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from embquant import codecs
from embquant.api import create_app
from embquant.codecs import tables
from embquant.errors import InvalidInput
from embquant.settings import Settings
from tests.support.api import b64, err


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(device="cpu"))) as c:
        yield c


def _rse(x: np.ndarray, y: np.ndarray) -> float:
    return float(((x.astype(np.float64) - y) ** 2).sum() / (x.astype(np.float64) ** 2).sum())


# ------------------------------------------------------------------ refused: cannot work

@pytest.mark.parametrize("route", ["/fit", "/quantize"])
@pytest.mark.parametrize("scheme,params,fragments", [
    ("affine", {"bits": 1}, ("affine needs bits >= 2", "one of the two levels sits at zero", "use binary")),
    ("affine", {"bits": 1, "symmetric": True}, ("affine needs bits >= 2",)),
    ("codebook", {"table": "linear", "bits": 1}, ("table 'linear' needs bits >= 2", "levels are -1 and +1")),
    ("blockwise", {"table": "linear", "bits": 1, "block_size": 64}, ("table 'linear' needs bits >= 2",)),
    ("codebook", {"table": "dynamic_unsigned", "rotate": True}, ("for non-negative data", "rotate=true")),
    ("blockwise", {"table": "dynamic_unsigned", "rotate": True}, ("for non-negative data", "rotate=true")),
])
def test_settings_that_cannot_work_are_refused(client, minilm, route, scheme, params, fragments):
    r = client.post(route, json={"vectors": b64(minilm[:50]), "scheme": scheme, "params": params})
    err(r, 400, "validation", f"invalid params for scheme {scheme!r}", *fragments)


def test_linear_one_bit_is_worse_than_sending_nothing(minilm):
    """The reason for the refusal, measured: levels -1 and +1 put every coordinate at
    +- the row's absmax (error several times the signal), where sign bits times the
    mean |x| (binary) stay below half of it."""
    x = minilm[:300].astype(np.float64)
    lv = tables.get_table("linear", 1).astype(np.float64)
    amax = np.abs(x).max(1, keepdims=True)
    y = np.where(x / amax > 0, lv[1], lv[0]) * amax
    assert _rse(x, y) > 2.0
    b = codecs.fit("binary", {}, torch.from_numpy(minilm[:300]))
    yb = codecs.decode(b, *codecs.encode(b, torch.from_numpy(minilm[:300]))).numpy()
    assert _rse(x, yb) < 0.5


# ------------------------------------------------------------- dynamic_unsigned on signed data

@pytest.mark.parametrize("scheme,params", [
    ("codebook", {"table": "dynamic_unsigned"}),
    ("codebook", {"table": "dynamic_unsigned", "scale": "codec"}),
    ("blockwise", {"table": "dynamic_unsigned", "block_size": 32}),
])
def test_dynamic_unsigned_refuses_negative_values_naming_them(client, scheme, params):
    x = np.abs(np.random.default_rng(1).standard_normal((6, 32))).astype(np.float32)
    x[2, 5] = -0.25
    x[4, 7] = -1.5
    for route in ("/fit", "/quantize"):
        r = client.post(route, json={"vectors": b64(x), "scheme": scheme, "params": params})
        err(r, 400, "validation", "for non-negative data", "2 of 192 values are negative",
            "row 2, dimension 5: -0.25", "the smallest -1.5", "use table 'dynamic'")
    # the same data without its negative values is encoded, and decodes within the table's reach
    ok = np.abs(x)
    r = client.post("/quantize", json={"vectors": b64(ok), "scheme": scheme, "params": params,
                                       "include_codec": True, "quality": True})
    assert r.status_code == 200, r.text
    assert "warnings" not in r.json()
    assert r.json()["quality"]["relative_squared_error"] < 1e-3
    # a codec fitted on non-negative data refuses signed vectors sent with it (by value and by id)
    body = r.json()
    for ref in ({"codec": body["codec"]}, {"codec_id": body["codec_id"]}):
        r2 = client.post("/quantize", json={"vectors": b64(x), **ref})
        err(r2, 400, "validation", "2 of 192 values are negative")


def test_dynamic_unsigned_in_process_fit_refuses_signed_sample(minilm):
    with pytest.raises(InvalidInput, match="values are negative"):
        codecs.fit("codebook", {"table": "dynamic_unsigned"}, torch.from_numpy(minilm[:20]))


# ------------------------------------------------------------------ warned: Hamming search only

def test_binary_scale_none_is_answered_with_a_warning(client, minilm):
    x = minilm[:200]
    r = client.post("/fit", json={"vectors": b64(x), "scheme": "binary", "params": {"scale": "none"}})
    assert r.status_code == 200, r.text
    (w,) = r.json()["warnings"]
    assert "Hamming search only" in w and "scale='row'" in w
    r = client.post("/quantize", json={"vectors": b64(x), "scheme": "binary", "params": {"scale": "none"},
                                       "quality": True})
    assert r.status_code == 200, r.text
    assert r.json()["warnings"] == [w]
    # what the warning says: decoding to +-1 has an error hundreds of times the signal
    assert r.json()["quality"]["relative_squared_error"] > 100
    # and with the codec it answered, by id, the warning comes again
    r = client.post("/quantize", json={"vectors": b64(x), "codec_id": r.json()["codec_id"]})
    assert r.json()["warnings"] == [w]


@pytest.mark.parametrize("scheme,params", [("binary", {}), ("binary", {"scale": "global"}), ("lloyd", {"bits": 2}),
                                           ("affine", {"bits": 2})])
def test_no_warnings_key_for_settings_that_decode(client, minilm, scheme, params):
    for route in ("/fit", "/quantize"):
        r = client.post(route, json={"vectors": b64(minilm[:64]), "scheme": scheme, "params": params})
        assert r.status_code == 200, r.text
        assert "warnings" not in r.json()
