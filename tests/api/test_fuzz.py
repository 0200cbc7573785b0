"""Mutated requests on every work route: never a 5xx.

Valid bodies of /fit, /quantize (a codec, and a scheme by name), /dequantize, /score
(top k, Hamming first pass with candidates, the full matrix) and /evaluate, for schemes
of each family, are mutated at random (seeded): keys dropped, values replaced by
values of other types, out of range, NaN or Inf, array bytes truncated, padded or
flipped, dtypes and shapes changed, a byte of the msgpack body itself flipped. Each
goes as msgpack or as JSON (arrays in base64). Every answer must be a 200 or a 4xx
whose body names the problem; numpy's and Python's runtime warnings are errors here,
so a check that only warns (NaN through a sum, say) shows up as a 500.
"""

from __future__ import annotations

import base64
import random
import warnings

import msgpack
import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from embquant.api import create_app
from embquant.settings import Settings

MP = {"content-type": "application/msgpack", "accept": "application/msgpack"}
SCHEMES = [("lloyd", {"bits": 4}), ("binary", {}), ("transform", {"bits": 2}), ("tcq", {"bits": 2}),
           ("hqq", {"bits": 4, "group_size": 8}), ("bitcodes", {"num_bits": 16, "iterations": 5}),
           ("absmax", {"bits": 8}), ("blockwise", {}), ("affine", {"bits": 4}), ("codebook", {})]
REQUESTS = 1500
ODD = [None, -1, 0, 1e308, float("nan"), "x", [], {}, True, 2**70, b"\x00" * 3, [1, 2], {"a": 1}, -2**63]


def arr(a: np.ndarray) -> dict:
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.tobytes()}


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(device="cpu", max_fit_seconds=5))) as c:
        yield c


def bodies(client) -> list[tuple[str, dict]]:
    x = np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = [("/evaluate", {"vectors": arr(x), "bits": 2, "k": 3})]
    for scheme, params in SCHEMES:
        r = client.post("/fit", content=msgpack.packb({"scheme": scheme, "params": params, "vectors": arr(x)}), headers=MP)
        assert r.status_code == 200, (scheme, r.text[:300])
        codec = msgpack.unpackb(r.content)["codec"]
        r = client.post("/quantize", content=msgpack.packb({"codec": codec, "vectors": arr(x)}), headers=MP)
        assert r.status_code == 200, (scheme, r.text[:300])
        enc = msgpack.unpackb(r.content)
        codes = {"codec": codec, "codes": enc["codes"], "side": enc.get("side")}
        out += [
            ("/fit", {"scheme": scheme, "params": params, "vectors": arr(x)}),
            ("/quantize", {"codec": codec, "vectors": arr(x[:3])}),
            ("/quantize", {"scheme": scheme, "params": {}, "vectors": arr(x[:3])}),
            ("/dequantize", codes),
            ("/score", {**codes, "queries": arr(x[:2]), "k": 3}),
            ("/score", {**codes, "queries": arr(x[:2]), "k": 3, "candidates": 5, "first_pass": "hamming"}),
            ("/score", {**codes, "queries": arr(x[:2]), "all": True, "metric": "l2"}),
        ]
    return out


def mutate(o, rnd: random.Random):
    if isinstance(o, dict) and o:
        o, k = dict(o), rnd.choice(sorted(o))
        r = rnd.random()
        if r < 0.15:
            del o[k]
        elif r < 0.3:
            o[k] = rnd.choice(ODD)
        else:
            o[k] = mutate(o[k], rnd)
        return o
    if isinstance(o, list) and o:
        o, i = list(o), rnd.randrange(len(o))
        o[i] = rnd.choice([None, -1, 0, 10**6, "x", 1.5, -(2**40)]) if rnd.random() < 0.3 else mutate(o[i], rnd)
        return o
    if isinstance(o, bytes):
        b, r = bytearray(o), rnd.random()
        if r < 0.3 and b:
            del b[rnd.randrange(len(b)):]
        elif r < 0.5:
            b += bytes(rnd.randrange(1, 9))
        elif b:
            for _ in range(rnd.randrange(1, 4)):
                b[rnd.randrange(len(b))] = rnd.randrange(256)
        return bytes(b)
    if isinstance(o, str):
        return rnd.choice([o + "x", "", "float16", "int64", "uint8", "<f4", o.upper(), "\x00"])
    if isinstance(o, bool):
        return not o
    if isinstance(o, int):
        return rnd.choice([o + 1, o - 1, -o, 0, 2**31, -1, 2**62, o * 1000])
    if isinstance(o, float):
        return rnd.choice([float("nan"), float("inf"), -o, 0.0, 1e-45, 3e38])
    if o is None:
        return rnd.choice([0, "x", {}, []])
    return o


def as_json(o):
    if isinstance(o, dict):
        if set(o) == {"dtype", "shape", "data"} and isinstance(o["data"], bytes):
            return {**o, "data": base64.b64encode(o["data"]).decode()}
        return {k: as_json(v) for k, v in o.items()}
    if isinstance(o, list):
        return [as_json(v) for v in o]
    if isinstance(o, bytes):
        return base64.b64encode(o).decode()
    if isinstance(o, float) and not np.isfinite(o):
        return str(o)
    return o


def test_mutated_requests_never_get_a_5xx(client):
    rnd = random.Random(20261128)
    valid = bodies(client)
    sent = answered_200 = 0
    failures = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("error", UserWarning)
        while sent < REQUESTS:
            path, body = rnd.choice(valid)
            for _ in range(rnd.randrange(1, 4)):
                body = mutate(body, rnd)
            try:
                if rnd.random() < 0.5:
                    data, ctype = msgpack.packb(body, use_bin_type=True), "application/msgpack"
                    if rnd.random() < 0.1:
                        data = bytearray(data)
                        data[rnd.randrange(len(data))] = rnd.randrange(256)
                        data = bytes(data)
                else:
                    data, ctype = orjson.dumps(as_json(body)), "application/json"
            except (OverflowError, TypeError, ValueError, orjson.JSONEncodeError):
                continue  # not encodable in that form (an int past 64 bits, say): not a request
            sent += 1
            r = client.post(path, content=data, headers={"content-type": ctype})
            if r.status_code == 200:
                answered_200 += 1
            elif r.status_code >= 500 or not r.json().get("error", {}).get("message"):
                failures.append(f"{r.status_code} {path} {r.text[:200]} <- {repr(body)[:300]}")
    assert not failures, "\n".join(failures[:5])
    # the mutations leave some requests valid: the check above saw answers of both kinds
    assert 0 < answered_200 < sent
