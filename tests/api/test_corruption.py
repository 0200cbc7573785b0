"""Corrupted codes, side values and codecs, for every scheme: always an answer
(200 with finite vectors, or a 4xx that says what is wrong), never a 5xx."""

from __future__ import annotations

import base64
import copy

import numpy as np
import pytest
from fastapi.testclient import TestClient

from embquant import codecs
from embquant.api import create_app
from embquant.settings import Settings

CASES = [(name, s.examples[0]) for name, s in codecs.all_schemes().items()]


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(device="cpu"))) as c:
        yield c


def b64(a: np.ndarray) -> dict:
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode()}


def answer_ok(r) -> None:
    assert r.status_code < 500, r.text[:300]
    if r.status_code == 200:
        v = np.frombuffer(base64.b64decode(r.json()["vectors"]["data"]), np.float32)
        assert np.isfinite(v).all()
    else:
        assert r.json()["error"]["message"]


def mutations(codec: dict, rng: np.random.Generator):
    for key, arr in codec["state"].items():
        raw = np.frombuffer(base64.b64decode(arr["data"]), arr["dtype"]).reshape(arr["shape"])
        for bad in (raw.reshape(-1)[:-1] if raw.size > 1 else np.zeros(0, raw.dtype),  # wrong shape
                    raw.astype(np.float64),  # wrong dtype
                    np.full_like(raw, np.nan) if raw.dtype.kind == "f" else np.full_like(raw, np.iinfo(raw.dtype).max),  # NaN / out of range
                    raw[::-1].copy(),  # reversed (unsorted tables)
                    np.full_like(raw, 3e38) if raw.dtype.kind == "f" else -raw):  # huge
            c = copy.deepcopy(codec)
            c["state"][key] = b64(np.ascontiguousarray(bad))
            yield f"state.{key}", c
        c = copy.deepcopy(codec)
        del c["state"][key]
        yield f"missing state.{key}", c
    for pname in codec["params"]:
        for bad in (None, -1, 3, 10**9, "x", [1]):
            c = copy.deepcopy(codec)
            c["params"][pname] = bad
            yield f"params.{pname}={bad!r}", c
    for dim in (codec["dim"] + 1, 1, 10**7):
        c = copy.deepcopy(codec)
        c["dim"] = dim
        yield f"dim={dim}", c


@pytest.mark.parametrize("name,params", CASES, ids=[c[0] for c in CASES])
def test_corrupted_inputs_never_give_5xx(client, name, params):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 40)).astype(np.float32)
    q = client.post("/quantize", json={"vectors": b64(x), "scheme": name, "params": params}).json()
    codec, codes, side = q["codec"], q["codes"], q["side"]
    words = np.frombuffer(base64.b64decode(codes["data"]), np.int64).reshape(codes["shape"])

    def deq(codes_arr, side_obj, codec_obj):
        body = {"codes": b64(codes_arr), "codec": codec_obj}
        if side_obj is not None:
            body["side"] = side_obj
        answer_ok(client.post("/dequantize", json=body))

    for _ in range(5):  # random words, padding bits included
        deq(rng.integers(-(2**63), 2**63 - 1, size=words.shape, dtype=np.int64), side, codec)
    if side is not None:
        s = np.frombuffer(base64.b64decode(side["data"]), np.float32).reshape(side["shape"])
        for bad in (np.full_like(s, 3e38), -s, np.zeros_like(s), s * 1e-45, np.full_like(s, 1e-30)):
            deq(words, b64(np.ascontiguousarray(bad, dtype=np.float32)), codec)
    for what, c in mutations(codec, rng):
        deq(words, side, c)
        answer_ok_q = client.post("/quantize", json={"vectors": b64(x), "codec": c})
        assert answer_ok_q.status_code < 500, (what, answer_ok_q.text[:300])
