"""The HTTP API in-process (ASGI, lifespan run by TestClient): forms, errors, docs."""

from __future__ import annotations


import numpy as np
import pytest
from fastapi.testclient import TestClient

from embquant import codecs
from embquant.api import create_app
from embquant.api.wire import EXAMPLES
from embquant.settings import Settings
from tests.support.api import b64, err, from_b64


@pytest.fixture(scope="module")
def client():
    app = create_app(Settings(device="cpu", max_body_bytes=256 * 1024, max_rows=5000))
    with TestClient(app) as c:
        yield c






X = np.random.default_rng(1).standard_normal((20, 32)).astype(np.float32)




def test_health_ready_metrics(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz").json()
    assert r["status"] == "ready" and r["device"] == "cpu"
    client.post("/quantize", json={"vectors": X.tolist(), "scheme": "absmax"})
    text = client.get("/metrics").text
    assert 'embquant_requests_total{route="/quantize",status="200"}' in text
    assert "embquant_batch_rows_bucket" in text
    client.post("/quantize", content=b"x" * 300_000)
    assert 'status="413"' in client.get("/metrics").text


def test_schemes_generated_from_configs(client):
    doc = client.get("/schemes").json()
    by = {s["name"]: s for s in doc["schemes"]}
    assert set(by) == set(codecs.all_schemes())
    assert by["absmax"]["params"]["bits"] == {
        "default": 4, "type": "integer", "minimum": 2, "maximum": 8, "description": "bits per dimension"
    }
    assert "least significant bits first" in doc["packing"]["rule"]


def test_quantize_dequantize_json_matches_in_process(client):
    r = client.post("/quantize", json={"vectors": X.tolist(), "scheme": "absmax", "params": {"bits": 6}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["shape"] == [20, 32]
    codec = codecs.codec_from_json(body["codec"])
    import torch

    codes, side = codecs.encode(codec, torch.from_numpy(X))
    assert np.array_equal(np.array(body["codes"], dtype=np.int64), codes.numpy())
    assert np.allclose(np.array(body["side"], dtype=np.float32), side.numpy())
    r2 = client.post("/dequantize", json={"codes": body["codes"], "side": body["side"], "codec": body["codec"]})
    y = np.array(r2.json()["vectors"], dtype=np.float32)
    assert np.allclose(y, codecs.decode(codec, codes, side).numpy())


def test_base64_form_is_exact_and_echoed(client):
    r = client.post("/quantize", json={"vectors": b64(X), "scheme": "distributional", "params": {"bits": 4}})
    body = r.json()
    assert isinstance(body["codes"], dict) and body["codes"]["dtype"] == "int64"
    codes = from_b64(body["codes"])
    r2 = client.post("/dequantize", json={"codes": body["codes"], "codec": body["codec"]})
    y = from_b64(r2.json()["vectors"])
    assert y.dtype == np.float32 and y.shape == X.shape
    # asking for the other form
    r3 = client.post("/dequantize", json={"codes": body["codes"], "codec": body["codec"], "encoding": "json"})
    assert np.array_equal(np.array(r3.json()["vectors"], dtype=np.float32), y)
    assert codes.shape[0] == 20


def test_fit_then_quantize_with_codec(client):
    fit = client.post("/fit", json={"scheme": "distributional", "vectors": X.tolist(), "params": {"bits": 3}}).json()
    codec = fit["codec"]
    a = client.post("/quantize", json={"vectors": X[:5].tolist(), "codec": codec}).json()
    b = client.post("/quantize", json={"vectors": X.tolist(), "codec": codec}).json()
    assert a["codes"] == b["codes"][:5]  # the codec, not the batch, sets the statistics
    c = client.post("/quantize", json={"vectors": X.tolist(), "codec": codec, "include_codec": False}).json()
    assert "codec" not in c and c["codes"] == b["codes"]


def test_quality_on_demand(client):
    q = client.post("/quantize", json={"vectors": X.tolist(), "scheme": "absmax", "params": {"bits": 8}, "quality": True}).json()["quality"]
    assert 0 < q["relative_squared_error"] < 1e-3 and q["mean_cosine"] > 0.999


@pytest.mark.parametrize(
    "body,status,type_,fragments",
    [
        ({"vectors": [[1, 2], [3]], "scheme": "absmax"}, 400, "validation", ["ragged"]),
        ({"vectors": [], "scheme": "absmax"}, 400, "validation", ["empty"]),
        ({"vectors": [[]], "scheme": "absmax"}, 400, "validation", ["empty"]),
        ({"vectors": [1.0, 2.0], "scheme": "absmax"}, 400, "validation", ["2-D"]),
        ({"vectors": [["a", "b"]], "scheme": "absmax"}, 400, "validation", ["numbers"]),
        ({"vectors": [[1e39, 0.0]], "scheme": "absmax"}, 400, "validation", ["NaN or Inf"]),
        ({"vectors": [[1.0, 2.0]], "scheme": "nope"}, 400, "unknown_scheme", ["known schemes", "absmax"]),
        ({"vectors": [[1.0, 2.0]], "scheme": "absmax", "params": {"bits": 99}}, 400, "validation", ["bits"]),
        ({"vectors": [[1.0, 2.0]], "scheme": "absmax", "params": {"nope": 1}}, 400, "validation", ["nope"]),
        ({"vectors": [[1.0, 2.0]]}, 400, "validation", ["scheme", "codec"]),
        ({"scheme": "absmax"}, 400, "validation", ["vectors"]),
        ({"vectors": [[1.0, 2.0]], "scheme": "absmax", "surprise": 1}, 400, "validation", ["surprise"]),
        ({"vectors": {"dtype": "float32", "shape": [2, 2], "data": "AAAA"}, "scheme": "absmax"}, 400, "validation", ["bytes"]),
        ({"vectors": {"dtype": "complex64", "shape": [1, 1], "data": ""}, "scheme": "absmax"}, 400, "validation", ["dtype"]),
        ({"vectors": {"dtype": "float32", "shape": [1, 1], "data": "!!"}, "scheme": "absmax"}, 400, "validation", ["base64"]),
        ({"vectors": {"dtype": "float32", "shape": [False], "data": ""}, "scheme": "absmax"}, 400, "validation", ["shape"]),
        ({"vectors": {"dtype": {}, "shape": [], "data": ""}, "scheme": "absmax"}, 400, "validation", ["dtype"]),
        ({"vectors": {"dtype": "float32", "shape": [2**62, 2**62], "data": ""}, "scheme": "absmax"}, 400, "validation", ["shape"]),
        ({"vectors": [[1.0, 2.0]], "scheme": "absmax", "timeout_s": 5e-324}, 400, "validation", ["timeout_s"]),
        ({"vectors": [[1.0] * 100_000], "scheme": "absmax"}, 413, "payload_too_large", ["limit"]),
    ],
)
def test_bad_quantize_requests(client, body, status, type_, fragments):
    err(client.post("/quantize", json=body), status, type_, *fragments)


def test_nan_in_base64_refused(client):
    a = X.copy()
    a[3, 4] = np.nan
    err(client.post("/quantize", json={"vectors": b64(a), "scheme": "absmax"}), 400, "validation", "NaN", "[3, 4]")


def test_fit_time_is_bounded_by_the_server(client):
    body = {"scheme": "bitcodes", "params": {"num_bits": 8, "max_seconds": 3600}, "vectors": X.tolist()}
    err(client.post("/fit", json=body), 400, "validation", "max_seconds=3600", "EMBQUANT_MAX_FIT_SECONDS")


def test_not_json_and_wrong_body(client):
    h = {"content-type": "application/json"}
    err(client.post("/quantize", content=b"{nope", headers=h), 400, "validation", "not valid JSON")
    err(client.post("/quantize", content=b"[1, 2]", headers=h), 400, "validation", "object")
    err(client.post("/quantize", content=b"", headers=h), 400, "validation", "empty")
    err(client.get("/nowhere"), 404, "not_found")


def test_too_many_rows(client):
    err(client.post("/quantize", json={"vectors": b64(np.zeros((5001, 2), np.float32)), "scheme": "absmax"}), 400, "validation", "5000")


def _encoded(client, **params):
    return client.post("/quantize", json={"vectors": X.tolist(), "scheme": "absmax", "params": params or {"bits": 4}}).json()


def test_dequantize_errors(client):
    q = _encoded(client)
    codes, side, codec = q["codes"], q["side"], q["codec"]
    err(client.post("/dequantize", json={"codes": [r + [0] for r in codes], "side": side, "codec": codec}), 400, "codec_mismatch", "words per row")
    err(client.post("/dequantize", json={"codes": codes, "codec": codec}), 400, "codec_mismatch", "side values")
    err(client.post("/dequantize", json={"codes": codes, "side": side[:3], "codec": codec}), 400, "codec_mismatch", "side values have shape")
    err(client.post("/dequantize", json={"codes": [[1.5] * len(codes[0])], "side": [[1.0]], "codec": codec}), 400, "validation", "integers")
    # a symbol value the codec cannot produce (absmax 4 bits has 15 levels: 15 is invalid)
    bad = [[-1] * len(codes[0])]
    err(client.post("/dequantize", json={"codes": bad, "side": [[1.0]], "codec": codec}), 400, "codec_mismatch", "out of range")
    err(client.post("/dequantize", json={"codes": codes, "side": side, "codec": {**codec, "format_version": 99}}), 400, "unsupported_version", "format_version")
    err(client.post("/dequantize", json={"codes": codes, "side": side, "codec": {**codec, "scheme_version": 7}}), 400, "unsupported_version", "version")
    err(client.post("/dequantize", json={"codes": codes, "side": side, "codec": {**codec, "scheme": "zzz"}}), 400, "unknown_scheme")
    err(client.post("/dequantize", json={"codes": codes, "side": side, "codec": {**codec, "dim": -1}}), 400, "validation", "dim")
    err(client.post("/dequantize", json={"codes": codes, "side": side, "codec": {**codec, "params": {"bits": 40}}}), 400, "validation", "bits")
    err(client.post("/quantize", json={"vectors": X[:, :5].tolist(), "codec": codec}), 400, "codec_mismatch", "dimensions")


def test_corrupted_codec_state_refused(client):
    q = client.post("/quantize", json={"vectors": X.tolist(), "scheme": "distributional"}).json()
    codec = q["codec"]
    broken = {**codec, "state": {k: v for k, v in codec["state"].items() if k != "levels"}}
    err(client.post("/dequantize", json={"codes": q["codes"], "codec": broken}), 400, "codec_mismatch", "levels")
    nan = np.array([np.nan], np.float32)
    broken = {**codec, "state": {**codec["state"], "scale": b64(nan)}}
    err(client.post("/dequantize", json={"codes": q["codes"], "codec": broken}), 400, "validation", "NaN")


def test_openapi_examples_work(client):
    spec = client.get("/openapi.json").json()
    ran = 0
    for path, item in spec["paths"].items():
        for method, op in item.items():
            content = op.get("requestBody", {}).get("content", {}).get("application/json", {})
            for name, ex in content.get("examples", {}).items():
                r = client.request(method.upper(), path, json=ex["value"])
                assert r.status_code == 200, (path, name, r.text)
                ran += 1
    assert ran == len(EXAMPLES)
    assert client.get("/docs").status_code == 200
