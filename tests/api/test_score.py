"""POST /score: top-k (or every score) of float queries against codes, equal to
decoding every code and scoring by brute force (float64, numpy), for every scheme."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from embquant import codecs
from embquant.api import create_app
import importlib

score_mod = importlib.import_module("embquant.codecs.score")
from embquant.settings import Settings
from tests.support.api import b64, err, from_b64

CASES = [(name, s.examples[0]) for name, s in codecs.all_schemes().items()]
RNG = np.random.default_rng(11)
DOCS = RNG.standard_normal((300, 48)).astype(np.float32)
QUERIES = RNG.standard_normal((7, 48)).astype(np.float32)


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(device="cpu", max_score_pairs=100_000))) as c:
        yield c


def brute(y: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    y, q = y.astype(np.float64), q.astype(np.float64)
    if metric == "dot":
        return q @ y.T
    if metric == "cosine":
        return (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (y / np.maximum(np.linalg.norm(y, axis=1), 1e-30)[:, None]).T
    return ((q[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def check_topk(scores: np.ndarray, idx: np.ndarray, ref: np.ndarray, metric: str, k: int) -> None:
    """The top k equal the reference's, ties aside: scores match, and every index
    returned has a reference score as good as the k-th best."""
    order = np.sort(ref, axis=1)
    kth = order[:, k - 1] if metric == "l2" else order[:, -k]
    got = np.take_along_axis(ref, idx, axis=1)
    assert np.allclose(scores, got, rtol=1e-4, atol=1e-4)
    tol = 1e-4 * np.abs(order).max()
    if metric == "l2":
        assert (got <= kth[:, None] + tol).all()
    else:
        assert (got >= kth[:, None] - tol).all()
    assert all(len(set(r)) == k for r in idx)  # no index twice


@pytest.mark.parametrize("name,params", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("metric", ["dot", "cosine", "l2"])
def test_top10_equals_decode_then_brute_force(client, name, params, metric):
    codec = codecs.fit(name, params, torch.from_numpy(DOCS))
    codes, side = codecs.encode(codec, torch.from_numpy(DOCS))
    y = codecs.decode(codec, codes, side).numpy()
    body = {"queries": b64(QUERIES), "codes": b64(codes.numpy()), "codec": codec.to_json(), "k": 10, "metric": metric}
    if side is not None:
        body["side"] = b64(side.numpy())
    r = client.post("/score", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    s, i = from_b64(out["scores"]), from_b64(out["indices"])
    assert s.shape == i.shape == (7, 10) and out["metric"] == metric
    check_topk(s, i, brute(y, QUERIES, metric), metric, 10)


def test_all_scores_and_chunking_changes_nothing(client, monkeypatch):
    codec = codecs.fit("lloyd", {"bits": 4}, torch.from_numpy(DOCS))
    codes, side = codecs.encode(codec, torch.from_numpy(DOCS))
    q = torch.from_numpy(QUERIES)
    full, none = codecs.score(codec, q, codes, side, None, "dot")
    assert none is None and full.shape == (7, 300)
    y = codecs.decode(codec, codes, side).numpy()
    assert np.allclose(full.numpy(), brute(y, QUERIES, "dot"), rtol=1e-4, atol=1e-4)
    a = codecs.score(codec, q, codes, side, 25, "l2")
    monkeypatch.setattr(score_mod, "SCORE_CHUNK_VALUES", 48 * 7)  # 7 rows per chunk
    b = codecs.score(codec, q, codes, side, 25, "l2")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    r = client.post("/score", json={"queries": QUERIES.tolist(), "codes": b64(codes.numpy()), "side": b64(side.numpy()),
                                    "codec": codec.to_json(), "all": True})
    assert np.allclose(np.array(r.json()["scores"]), full.numpy(), rtol=1e-5, atol=1e-5)


def test_ties_keep_the_lower_index():
    codec = codecs.fit("binary", {"scale": "none"}, torch.from_numpy(DOCS))
    x = np.repeat(DOCS[:1], 5, axis=0)
    codes, side = codecs.encode(codec, torch.from_numpy(x))
    _, idx = codecs.score(codec, torch.from_numpy(QUERIES[:1]), codes, side, 3, "dot")
    assert idx.tolist() == [[0, 1, 2]]


def test_score_errors(client):
    codec = codecs.fit("absmax", {"bits": 4}, torch.from_numpy(DOCS))
    codes, side = codecs.encode(codec, torch.from_numpy(DOCS))
    base = {"codes": b64(codes.numpy()), "side": b64(side.numpy()), "codec": codec.to_json()}
    err(client.post("/score", json={**base, "queries": b64(QUERIES[:, :40])}), 400, "codec_mismatch", "40 dimensions")
    err(client.post("/score", json={**base, "queries": b64(QUERIES), "metric": "hamming"}), 400, "validation", "metric")
    err(client.post("/score", json={**base, "queries": b64(QUERIES), "k": 0}), 400, "validation", "k")
    big = np.zeros((400, 48), np.float32)
    err(client.post("/score", json={**base, "queries": b64(big)}), 400, "validation", "EMBQUANT_MAX_SCORE_PAIRS")
    c5 = codecs.fit("absmax", {"bits": 5}, torch.from_numpy(DOCS))  # 12 symbols per word: 4 unused bits
    codes5, side5 = codecs.encode(c5, torch.from_numpy(DOCS))
    bad = codes5.numpy().copy()
    bad[3, 0] |= np.int64(1) << 62
    err(client.post("/score", json={"queries": b64(QUERIES), "codes": b64(bad), "side": b64(side5.numpy()),
                                    "codec": c5.to_json()}), 400, "codec_mismatch", "row 3")
    err(client.post("/score", json={"queries": b64(QUERIES), "codes": b64(codes.numpy())}), 400, "validation", "codec")
    # k beyond the codes: every code, best first
    r = client.post("/score", json={**base, "queries": b64(QUERIES), "k": 1000})
    assert from_b64(r.json()["indices"]).shape == (7, 300)


def test_a_bad_row_is_named_by_its_place_in_the_request(client, monkeypatch):
    """The route leaves the symbol checks to the scoring (one pass over the codes);
    a bad row far past the first chunk is still named by its own index."""
    monkeypatch.setattr(score_mod, "SCORE_CHUNK_VALUES", 48 * 16)  # 16 rows per chunk
    for name in ("distributional", "absmax"):  # the exact path, the asymmetric one
        c5 = codecs.fit(name, {"bits": 5}, torch.from_numpy(DOCS))
        codes, side = codecs.encode(c5, torch.from_numpy(DOCS))
        bad = codes.numpy().copy()
        bad[250, 0] |= np.int64(1) << 62
        body = {"queries": b64(QUERIES), "codes": b64(bad), "codec": c5.to_json()}
        if side is not None:
            body["side"] = b64(side.numpy())
        err(client.post("/score", json=body), 400, "codec_mismatch", "row 250")


def test_reference_decode_names_a_bad_row_across_its_chunks(monkeypatch):
    from embquant.codecs import core, kernels
    from embquant.errors import CodecMismatch

    monkeypatch.setattr(core, "CHUNK_VALUES", 48 * 16)  # 16 rows per chunk
    monkeypatch.setattr(core, "CPU_CHUNK_VALUES", 48 * 16)
    c5 = codecs.fit("absmax", {"bits": 5}, torch.from_numpy(DOCS))
    codes, side = codecs.encode(c5, torch.from_numpy(DOCS))
    bad = codes.clone()
    bad[250, 0] |= 1 << 62
    with kernels.using("torch"), pytest.raises(CodecMismatch, match="row 250:"):
        codecs.decode(c5, bad, side)
