"""Client.evaluate and AsyncClient.evaluate: the request they send, the Evaluation
they return, and its text table; the sync client against the real service in-process."""

from __future__ import annotations

import asyncio
import json

import httpx
import msgpack
import numpy as np
import pytest
from fastapi.testclient import TestClient

import embquant_client as ec
from embquant.api import create_app
from embquant.settings import Settings
from embquant_client._models import Evaluation

X = np.random.default_rng(2).standard_normal((200, 16)).astype(np.float32)


def test_sync_client_against_the_service():
    with TestClient(create_app(Settings(device="cpu"))) as tc:
        c = ec.Client("http://testserver", http_client=tc)
        out = c.evaluate(X, ["absmax", ("lloyd", {"bits": 2}), {"scheme": "lloyd", "params": {"bits": 4}}], k=5)
        assert isinstance(out, Evaluation) and len(out) == 3 and out.k == 5
        assert [r["bits"] for r in out.rows] == sorted(r["bits"] for r in out.rows)
        assert {(r["scheme"], r["params"].get("bits")) for r in out.rows} == {("absmax", None), ("lloyd", 2), ("lloyd", 4)}
        assert out.split["measured_rows"] == 90 and out.split["queries"] == 20
        assert out.pareto_rows and all(r["pareto"] for r in out.pareto_rows)
        table = str(out)
        lines = table.splitlines()
        assert lines[0].split() == ["setting", "bits", "rel.err", "recall@5", "scored", "pool", "encode/s", "codec",
                                    "B", "pareto"]
        assert len({len(line) for line in lines[2:5]} | {len(lines[1])}) <= 2  # aligned (pareto column may be blank)
        for r, line in zip(out.rows, lines[2:5]):
            assert line.startswith(r["scheme"]) and f"{r['relative_squared_error']:.4f}" in line
        with pytest.raises(ec.BadRequestError, match=r"candidates\[0\]"):
            c.evaluate(X, [("lloyd", {"bits": 99})])
        with pytest.raises(ValueError, match="one of them"):
            c.evaluate(X)


def _answer():
    return {"rows": [{"scheme": "binary", "params": {"rotate": True}, "bits": 1.0833, "relative_squared_error": 0.36,
                      "recall": 0.72, "recall_scored": 0.72, "pool": 4, "pool_candidates": 40, "encode_rows_per_s": 1e6,
                      "codec_bytes": 135, "pareto": True},
                     {"scheme": "bitcodes", "params": {"num_bits": 384}, "error": "stopped after 60 s", "pareto": False}],
            "k": 10, "metric": "cosine", "split": {"fit_rows": 4, "measured_rows": 4, "queries": 1}, "pareto": "x"}


def test_async_client_sends_the_budget_and_parses_the_table():
    seen = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=_answer())

    async def go():
        async with ec.AsyncClient("http://t", wire="base64",
                                  http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler),
                                                                base_url="http://t")) as c:
            return await c.evaluate(X, bits=1, queries=X[:3], k=10, metric="cosine", seed=4)

    out = asyncio.run(go())
    body = json.loads(seen[0].content)
    assert seen[0].url.path == "/evaluate" and body["bits"] == 1.0 and "candidates" not in body
    assert body["k"] == 10 and body["metric"] == "cosine" and body["seed"] == 4
    assert body["queries"]["shape"] == [3, 16] and body["vectors"]["shape"] == [200, 16]
    table = str(out)
    assert "binary rotate=True" in table and "4x (40)" in table and "1,000,000" in table
    assert "bitcodes num_bits=384  error: stopped after 60 s" in table


def test_msgpack_wire_and_no_retry_after_a_timeout(monkeypatch):
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(msgpack.unpackb(req.content))
        return httpx.Response(504, json={"error": {"type": "timeout", "message": "deadline"}})

    c = ec.Client("http://t", http_client=httpx.Client(transport=httpx.MockTransport(handler), base_url="http://t"))
    with pytest.raises(ec.APIStatusError):
        c.evaluate(X, [("lloyd", None)])
    assert len(calls) == 1  # an evaluation that may have run is not sent twice
    assert calls[0]["candidates"] == [{"scheme": "lloyd", "params": {}}]
    assert isinstance(calls[0]["vectors"]["data"], bytes)


def test_client_score_rescores_with_the_callers_floats():
    """Client.score(candidates=, vectors=): the pool of m on the codes, then the exact
    float top k of that pool; with m = N that is the exact float top k."""
    g = np.random.default_rng(4)
    base = g.standard_normal((120, 16)).astype(np.float32)
    queries = g.standard_normal((5, 16)).astype(np.float32)
    with TestClient(create_app(Settings(device="cpu"))) as tc:
        c = ec.Client("http://testserver", http_client=tc)
        enc = c.quantize(base, "binary", rotate=True)
        out = c.score(queries, enc, k=3, candidates=len(base), vectors=base)
        exact = queries.astype(np.float64) @ base.astype(np.float64).T
        assert np.array_equal(out.indices, np.argsort(-exact, axis=1, kind="stable")[:, :3])
        with pytest.raises(ec.BadRequestError, match="candidates"):
            c.score(queries, enc, k=5, candidates=2)
        # the Hamming first pass: with every code a candidate, the same exact top k
        ham = c.score(queries, enc, k=3, candidates=len(base), vectors=base, first_pass="hamming")
        assert np.array_equal(ham.indices, out.indices) and np.array_equal(ham.scores, out.scores)
        with pytest.raises(ec.BadRequestError, match="first_pass=hamming"):
            c.score(queries, c.quantize(base, "lloyd", bits=2), k=3, candidates=10, first_pass="hamming")
