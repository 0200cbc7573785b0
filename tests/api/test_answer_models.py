"""The OpenAPI answer models (api.wire, issue 11) describe what the routes really answer:
a real answer of every route validates against its documented model, which forbids
fields it does not name."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from embquant.api import create_app
from embquant.api import wire
from embquant.settings import Settings
from tests.support.api import b64


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(device="cpu"))) as c:
        yield c


def test_every_route_documents_its_answer(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path, ops in paths.items():
        if path in ("/metrics", "/docs", "/redoc") or path.startswith("/static"):
            continue
        for op in ops.values():
            schema = op["responses"]["200"]["content"]["application/json"]["schema"]
            assert schema.get("$ref", "").startswith("#/components/schemas/"), (path, schema)


def test_real_answers_match_their_models(client):
    x = np.random.default_rng(0).standard_normal((60, 16)).astype(np.float32)
    wire.SchemesAnswer.model_validate(client.get("/schemes").json())
    wire.LimitsAnswer.model_validate(client.get("/limits").json())
    wire.HealthAnswer.model_validate(client.get("/healthz").json())
    wire.ReadyAnswer.model_validate(client.get("/readyz").json())
    fit = client.post("/fit", json={"vectors": b64(x), "scheme": "binary", "params": {"scale": "none"}}).json()
    assert fit.get("warnings")  # the optional field is exercised too
    wire.FitAnswer.model_validate(fit)
    q = client.post("/quantize", json={"vectors": b64(x), "scheme": "lloyd", "params": {"bits": 4},
                                       "quality": True, "include_codec": True}).json()
    wire.QuantizeAnswer.model_validate(q)
    assert q["quality"] and q["codec"]
    wire.QuantizeAnswer.model_validate(client.post("/quantize", json={"vectors": x.tolist(), "codec_id": q["codec_id"]}).json())
    d = client.post("/dequantize", json={"codes": q["codes"], "side": q["side"], "codec_id": q["codec_id"]}).json()
    wire.DequantizeAnswer.model_validate(d)
    s = client.post("/score", json={"queries": b64(x[:3]), "codes": q["codes"], "side": q["side"],
                                    "codec_id": q["codec_id"], "k": 5, "candidates": 10}).json()
    wire.ScoreAnswer.model_validate(s)
    e = client.post("/evaluate", json={"vectors": b64(np.tile(x, (4, 1)) + 0.01), "bits": 2, "k": 5}).json()
    wire.EvaluateAnswer.model_validate(e)
