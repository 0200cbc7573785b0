"""The msgpack wire form, codec ids and scheme-by-name batching, in-process (ASGI)."""

from __future__ import annotations

import os

import msgpack
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from embquant import codecs
from embquant.api import create_app
from embquant.settings import Settings
from tests.support.api import b64, err, from_b64

MP = {"content-type": "application/msgpack"}
X = np.random.default_rng(5).standard_normal((33, 48)).astype(np.float32)


def arr(a: np.ndarray) -> dict:
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": a.astype(a.dtype.newbyteorder("<")).tobytes()}


def unarr(o: dict) -> np.ndarray:
    return np.frombuffer(o["data"], dtype=np.dtype(o["dtype"]).newbyteorder("<")).reshape(o["shape"])


def post_mp(client, path, obj, **headers):
    return client.post(path, content=msgpack.packb(obj, use_bin_type=True), headers={**MP, **headers})


def unpack(r) -> dict:
    assert r.headers["content-type"].startswith("application/msgpack"), r.headers
    return msgpack.unpackb(r.content, raw=False)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    app = create_app(Settings(device="cpu", max_body_bytes=1 << 20, codec_dir=str(tmp_path_factory.mktemp("codecs"))))
    with TestClient(app) as c:
        yield c


def test_msgpack_round_trip_equals_in_process_and_json(client):
    fitted = unpack(post_mp(client, "/fit", {"scheme": "lloyd", "params": {"bits": 4, "mode": "fit_dim"},
                                             "vectors": arr(X)}))
    assert len(fitted["codec_id"]) == 64
    codec = codecs.codec_from_json(fitted["codec"])
    want_codes, want_side = codecs.encode(codec, torch.from_numpy(X))
    r = post_mp(client, "/quantize", {"vectors": arr(X), "codec": fitted["codec"]})
    body = unpack(r)
    assert isinstance(body["codes"]["data"], bytes)
    assert np.array_equal(unarr(body["codes"]), want_codes.numpy())
    assert np.array_equal(unarr(body["side"]), want_side.numpy())
    assert body["codec_id"] == fitted["codec_id"]
    # the JSON form of the same request gives the same bits
    j = client.post("/quantize", json={"vectors": b64(X), "codec": fitted["codec"]}).json()
    assert np.array_equal(from_b64(j["codes"]), want_codes.numpy())
    y = unpack(post_mp(client, "/dequantize", {"codes": body["codes"], "side": body["side"],
                                               "codec_id": body["codec_id"]}))
    assert np.array_equal(unarr(y["vectors"]), codecs.decode(codec, want_codes, want_side).numpy())


def test_accept_picks_the_answer_form(client):
    r = post_mp(client, "/quantize", {"vectors": arr(X), "scheme": "absmax"}, accept="application/json")
    assert r.headers["content-type"] == "application/json"
    assert from_b64(r.json()["codes"]).shape == (33, 48 * 4 // 64)
    r = client.post("/quantize", json={"vectors": X.tolist(), "scheme": "absmax"}, headers={"accept": "application/msgpack"})
    assert isinstance(unpack(r)["codes"]["data"], bytes)
    # lists inside msgpack, when asked for
    r = post_mp(client, "/quantize", {"vectors": X.tolist(), "scheme": "absmax", "encoding": "json"})
    assert isinstance(unpack(r)["codes"], list)


@pytest.mark.parametrize("body,fragment", [
    (b"\xc1", "not valid msgpack"),
    (b"\x91" * 5000 + b"\xc0", "nested too deep"),
    (msgpack.packb([1, 2]), "must be a msgpack map"),
    (msgpack.packb({"vectors": msgpack.ExtType(5, b"x"), "scheme": "absmax"}), "vectors"),
    (msgpack.packb({1: 2}), "not valid msgpack"),
    (msgpack.packb({"vectors": {"dtype": "float32", "shape": [2, 3], "data": b"\0" * 5}, "scheme": "absmax"}),
     "5 bytes do not match"),
    (msgpack.packb({"vectors": {"dtype": "float32", "shape": [1, 2], "data": np.array([1, np.nan], "<f4").tobytes()},
                    "scheme": "absmax"}), "NaN or Inf"),
])
def test_bad_msgpack_bodies_get_400_naming_the_problem(client, body, fragment):
    err(client.post("/quantize", content=body, headers=MP), 400, "validation", fragment)


def test_codec_by_id_and_unknown_id(client):
    fitted = client.post("/fit", json={"scheme": "distributional", "params": {"bits": 3}, "vectors": b64(X)}).json()
    cid = fitted["codec_id"]
    a = client.post("/quantize", json={"vectors": b64(X), "codec_id": cid}).json()
    b = client.post("/quantize", json={"vectors": b64(X), "codec": fitted["codec"]}).json()
    assert a["codes"] == b["codes"] and a["codec_id"] == b["codec_id"] == cid
    err(client.post("/quantize", json={"vectors": b64(X), "codec_id": "0" * 64}), 404, "unknown_codec",
        "not known to this replica", "send the codec")
    err(client.post("/dequantize", json={"codes": a["codes"], "codec_id": "0" * 64}), 404, "unknown_codec")
    err(client.post("/quantize", json={"vectors": b64(X), "codec_id": "../etc/passwd"}), 400, "validation", "64")
    err(client.post("/quantize", json={"vectors": b64(X), "codec_id": cid, "codec": fitted["codec"]}), 400,
        "validation", "exactly one")
    err(client.post("/dequantize", json={"codes": a["codes"]}), 400, "validation", "codec or codec_id")


def test_codec_dir_serves_a_restarted_replica_and_refuses_altered_files(client, tmp_path):
    st = Settings(device="cpu", codec_dir=str(tmp_path))
    with TestClient(create_app(st)) as first:
        fitted = first.post("/fit", json={"scheme": "lloyd", "params": {"mode": "fit_global"}, "vectors": b64(X)}).json()
    cid = fitted["codec_id"]
    assert os.path.exists(tmp_path / f"{cid}.json")
    with TestClient(create_app(st)) as second:  # a new process: an empty memory cache
        r = second.post("/quantize", json={"vectors": b64(X), "codec_id": cid})
        assert r.status_code == 200, r.text
    (tmp_path / f"{cid}.json").write_bytes((tmp_path / f"{cid}.json").read_bytes().replace(b'"dim":48', b'"dim":47'))
    with TestClient(create_app(st)) as third:
        err(third.post("/quantize", json={"vectors": b64(X), "codec_id": cid}), 404, "unknown_codec")


def test_codec_dir_is_bounded_in_bytes(tmp_path):
    with TestClient(create_app(Settings(device="cpu", codec_dir=str(tmp_path), codec_dir_bytes=4000))) as c:
        for i in range(6):
            x = X * (i + 1)
            assert c.post("/fit", json={"scheme": "lloyd", "params": {"mode": "fit_global"}, "vectors": b64(x)}).status_code == 200
    sizes = [p.stat().st_size for p in tmp_path.glob("*.json")]
    assert 0 < len(sizes) < 6 and sum(sizes) <= 4000


def test_schemes_that_learn_nothing_resolve_by_name_and_batch(client):
    """absmax by name: the same codec id every time, encoded in the batch lane; a
    scheme that learns is fitted on the request's own rows, in the fit lane."""
    ids = {client.post("/quantize", json={"vectors": b64(X * s), "scheme": "absmax", "params": {"bits": 5}}).json()["codec_id"]
           for s in (1, 3)}
    assert len(ids) == 1
    (cid,) = ids  # an id answered is an id the replica resolves
    assert client.post("/quantize", json={"vectors": b64(X), "codec_id": cid}).status_code == 200
    fit_count = lambda: sum(float(l.split()[-1]) for l in client.get("/metrics").text.splitlines()
                            if l.startswith("embquant_fit_seconds_count"))
    before = fit_count()
    client.post("/quantize", json={"vectors": b64(X), "scheme": "absmax"})
    assert fit_count() == before
    a = client.post("/quantize", json={"vectors": b64(X), "scheme": "distributional", "params": {"bits": 3}}).json()
    b = client.post("/quantize", json={"vectors": b64(2 * X + 1), "scheme": "distributional", "params": {"bits": 3}}).json()
    assert fit_count() == before + 2 and a["codec_id"] != b["codec_id"]


def test_large_base64_answers_are_streamed_and_equal(client, monkeypatch):
    """Base64 arrays over STREAM_BYTES are written in pieces (the answer never exists
    whole as a string); the JSON, its Content-Length and its arrays are the same."""
    from embquant.api import bodies

    x = np.random.default_rng(8).standard_normal((701, 48)).astype(np.float32)
    body = {"vectors": b64(x), "scheme": "absmax", "params": {"bits": 5}, "quality": True}
    whole = client.post("/quantize", json=body)
    dq_body = {"codes": whole.json()["codes"], "side": whole.json()["side"], "codec": whole.json()["codec"]}
    whole_dq = client.post("/dequantize", json=dq_body)
    monkeypatch.setattr(bodies, "STREAM_BYTES", 0)
    monkeypatch.setattr(bodies, "_PIECE", 3 * 1000)  # several pieces per array
    streamed = client.post("/quantize", json=body)
    streamed_dq = client.post("/dequantize", json=dq_body)
    for a, b in ((whole, streamed), (whole_dq, streamed_dq)):
        assert b.status_code == 200 and int(b.headers["content-length"]) == len(b.content)
        assert b.json() == a.json()
    assert np.array_equal(from_b64(streamed_dq.json()["vectors"]), from_b64(whole_dq.json()["vectors"]))
