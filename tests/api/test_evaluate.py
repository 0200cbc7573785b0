"""POST /evaluate: every candidate fitted on one split of the sample and measured on
the other, each figure checked against the same measurement done here by hand."""

from __future__ import annotations

import importlib
import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from embquant import codecs
from embquant.api import create_app
from embquant.settings import Settings
from tests.support.api import b64, err

ev = importlib.import_module("embquant.codecs.evaluate")
RNG = np.random.default_rng(3)
SMALL = RNG.standard_normal((300, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app(Settings(device="cpu", max_evaluate_rows=5000, max_evaluate_candidates=6))) as c:
        yield c


def _brute_top(q: np.ndarray, x: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q.astype(np.float64) @ x.astype(np.float64).T), axis=1, kind="stable")[:, :k]


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def test_each_figure_is_the_measurement_done_by_hand(client, minilm):
    """On real MiniLM embeddings (600 sentences), three candidates; every figure of
    every row recomputed here from the documented split."""
    x = minilm
    cands = [{"scheme": "lloyd", "params": {"bits": 4}}, {"scheme": "lloyd", "params": {"bits": 1, "norm": "unit"}},
             {"scheme": "distributional", "params": {"bits": 2}}]
    r = client.post("/evaluate", json={"vectors": b64(x), "candidates": cands, "k": 10, "seed": 7})
    assert r.status_code == 200, r.text
    out = r.json()
    fit_i, base_i, q_i = ev.split(600, 7, True)
    assert out["split"] == {"fit_rows": 270, "measured_rows": 270, "queries": 60, "queries_held_out": True, "seed": 7}
    assert len(set(fit_i) | set(base_i) | set(q_i)) == 600  # disjoint, the whole sample
    fit_x, base, q = x[fit_i], x[base_i], x[q_i]
    truth = _brute_top(q, base, 10)
    rows = out["rows"]
    assert [row["bits"] for row in rows] == sorted(row["bits"] for row in rows)
    by = {(row["scheme"], row["params"].get("bits")): row for row in rows}
    for c in cands:
        row = by[(c["scheme"], c["params"]["bits"])]
        assert row["params"] == c["params"]
        codec = codecs.fit(c["scheme"], c["params"], torch.from_numpy(fit_x))
        codes, side = codecs.encode(codec, torch.from_numpy(base))
        y = codecs.decode(codec, codes, side).numpy().astype(np.float64)
        assert row["bits"] == codec.layout.bits_per_vector() / 384
        assert row["relative_squared_error"] == pytest.approx(((base - y) ** 2).sum() / (base.astype(np.float64) ** 2).sum(),
                                                              rel=1e-9)
        assert row["recall"] == pytest.approx(_recall(_brute_top(q, y, 10), truth), abs=0.005)  # ties aside
        assert row["recall_scored"] == pytest.approx(row["recall"], abs=0.005)  # the estimator scores y exactly
        pool = np.argsort(-(q.astype(np.float64) @ y.T), axis=1, kind="stable")
        ladder = [[m, _recall(pool[:, : m * 10], truth)] for m in (1, 2, 4, 8, 16)]
        assert np.allclose([g for _, g in row["pool_recall"]], [g for _, g in ladder], atol=0.005)
        want = next((m for m, g in row["pool_recall"] if g >= 0.99), None)
        assert row["pool"] == want and row["pool_candidates"] == (None if want is None else want * 10)
        assert row["codec_bytes"] == len(__import__("json").dumps(codec.to_json(), separators=(",", ":")))
        assert row["encode_rows_per_s"] > 0 and row["fit_seconds"] >= 0
    assert by[("lloyd", 4)]["recall"] > by[("lloyd", 1)]["recall"] + 0.1
    assert by[("lloyd", 4)]["relative_squared_error"] < by[("lloyd", 1)]["relative_squared_error"] / 5
    assert by[("lloyd", 1)]["score_path"] == "asymmetric" and by[("distributional", 2)]["score_path"] == "exact"
    # the front by its definition: nothing at fewer or equal bits recalls as much or more
    for row in rows:
        dominated = any(o is not row and o["bits"] <= row["bits"] and o["recall_scored"] >= row["recall_scored"]
                        and (o["bits"], o["recall_scored"]) != (row["bits"], row["recall_scored"]) for o in rows)
        assert row["pareto"] is (not dominated)
    assert by[("lloyd", 1)]["pareto"] and by[("lloyd", 4)]["pareto"]


def test_pareto_front_on_known_rows():
    rows = [{"bits": 1.0, "recall_scored": 0.7}, {"bits": 1.08, "recall_scored": 0.69}, {"bits": 2.0, "recall_scored": 0.9},
            {"bits": 2.0, "recall_scored": 0.85}, {"bits": 4.0, "recall_scored": 0.9}, {"bits": 1.0, "error": "x"},
            {"bits": 8.0, "recall_scored": 0.99}]
    ev.mark_pareto(rows)
    assert [r["pareto"] for r in rows] == [True, False, True, False, False, False, True]


def test_queries_given_split_the_sample_in_halves(client):
    q = RNG.standard_normal((20, 32)).astype(np.float32)
    r = client.post("/evaluate", json={"vectors": b64(SMALL), "queries": b64(q), "k": 5, "metric": "l2",
                                       "candidates": [{"scheme": "absmax", "params": {"bits": 8}}]})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["split"] == {"fit_rows": 150, "measured_rows": 150, "queries": 20, "queries_held_out": False, "seed": 0}
    row = out["rows"][0]
    assert out["metric"] == "l2" and row["recall"] >= 0.95 and row["pool"] == 1 and row["pareto"]


def test_a_bit_budget_runs_the_built_in_settings_under_it(client):
    r = client.post("/evaluate", json={"vectors": b64(SMALL), "bits": 1, "k": 5})
    assert r.status_code == 200, r.text
    rows = r.json()["rows"]
    got = sorted((row["scheme"], tuple(sorted(row["params"].items()))) for row in rows)
    want = sorted((n, tuple(sorted({**p, **({"max_seconds": 30.0} if n == "bitcodes" else {})}.items())))
                  for n, p in ev.recommended(32, 1, unit_norm=False))
    assert got == want
    # the recommended list's two 1-bit entries (GET /schemes), tcq with its gain for rows not of unit norm
    assert got == [("tcq", (("bits", 1), ("norm", "row"))), ("transform", (("bits", 1), ("trellis", True)))]
    for row in rows:
        assert "error" not in row, row
        scheme = codecs.get_scheme(row["scheme"])
        lay = scheme.layout(codecs.parse_params(scheme, row["params"]), 32)
        assert lay.bits * lay.symbols <= 32  # code bits; the row's bits count side values and word padding
        assert row["bits"] == lay.bits_per_vector() / 32
    # a higher budget adds the wider settings; unit vectors get tcq without its gain
    unit = SMALL / np.linalg.norm(SMALL, axis=1, keepdims=True)
    assert ("tcq", {"bits": 2, "norm": "unit"}) in ev.recommended(32, 2, unit_norm=True)
    assert len(ev.recommended(32, 4, unit_norm=True)) == 8  # 1, 2, 3 and 4 bits, each kind
    assert ("lloyd", {"bits": 8, "norm": "row", "mode": "fit_global"}) in ev.recommended(32, 8, unit_norm=False)
    assert all(n == "tcq" for n, _ in ev.recommended(4096, 4, unit_norm=True))  # transform refuses D > 2048
    r = client.post("/evaluate", json={"vectors": b64(unit[:200]), "bits": 1, "k": 5})
    oblivious = [row for row in r.json()["rows"] if row["scheme"] == "tcq"]
    assert oblivious[0]["params"] == {"bits": 1, "norm": "unit"} and oblivious[0]["bits_per_vector"] == 64  # no gain


def test_bad_requests_are_refused_naming_what(client):
    base = {"vectors": b64(SMALL)}
    err(client.post("/evaluate", json={**base, "candidates": [{"scheme": "lloyd"}, {"scheme": "nope"}]}), 400,
        "unknown_scheme", "candidates[1]", "nope")
    err(client.post("/evaluate", json={**base, "candidates": [{"scheme": "lloyd", "params": {"bits": 99}}]}), 400,
        "validation", "candidates[0]", "lloyd bits=99")
    err(client.post("/evaluate", json={**base, "candidates": [{"scheme": "lloyd"}], "bits": 2}), 400, "validation",
        "one of them")
    err(client.post("/evaluate", json=base), 400, "validation", "candidates", "bits")
    err(client.post("/evaluate", json={**base, "bits": 0.5}), 400, "validation", "0.5 bits")
    err(client.post("/evaluate", json={**base, "candidates": [{"scheme": "lloyd"}] * 7}), 400, "validation",
        "EMBQUANT_MAX_EVALUATE_CANDIDATES")
    big = np.zeros((5001, 4), np.float32)
    err(client.post("/evaluate", json={"vectors": b64(big), "bits": 1}), 400, "validation", "EMBQUANT_MAX_EVALUATE_ROWS")
    err(client.post("/evaluate", json={**base, "bits": 1, "queries": b64(SMALL[:5, :16])}), 400, "validation",
        "16 dimensions")
    err(client.post("/evaluate", json={"vectors": b64(SMALL[:12]), "bits": 1, "k": 10}), 400, "validation", "recall@10")
    # a candidate that fails on this sample: unit-norm lloyd on vectors that are not
    err(client.post("/evaluate", json={**base, "candidates": [{"scheme": "absmax"},
                                                              {"scheme": "lloyd", "params": {"norm": "unit"}}]}),
        400, "validation", "candidates[1] (lloyd norm=unit)", "norm")
    err(client.post("/evaluate", json={**base, "candidates": [{"scheme": "bitcodes", "params": {"max_seconds": 3000}}]}),
        400, "validation", "candidates[0]", "EMBQUANT_MAX_FIT_SECONDS")


def test_a_candidate_past_max_fit_seconds_is_stopped_and_the_rest_go_on():
    """bitcodes may train for all of max_fit_seconds (1 s); its encode and measurement
    then run past the candidate's bound: it is stopped, and lloyd is still measured."""
    with TestClient(create_app(Settings(device="cpu", max_fit_seconds=1.0))) as c:
        t0 = time.monotonic()
        r = c.post("/evaluate", json={"vectors": b64(SMALL), "k": 5, "candidates": [
            {"scheme": "bitcodes", "params": {"num_bits": 64, "iterations": 1000, "max_seconds": 1.0}},
            {"scheme": "lloyd", "params": {"bits": 2}}]})
        assert r.status_code == 200, r.text
        assert time.monotonic() - t0 < 20
    rows = {row["scheme"]: row for row in r.json()["rows"]}
    assert "stopped after 1 s" in rows["bitcodes"]["error"] and rows["bitcodes"]["pareto"] is False
    assert "bits" not in rows["bitcodes"]
    assert "error" not in rows["lloyd"] and rows["lloyd"]["pareto"] is True


def test_evaluations_run_in_the_fit_lane(monkeypatch):
    """With one fit thread and no fit queue, a second evaluation while one runs is
    refused 429 (the fit lane's bound), and encodes are answered meanwhile."""
    release, started = threading.Event(), threading.Event()
    real = ev.fit

    def slow_fit(scheme, params, x):
        started.set()
        while not release.is_set():
            codecs.checkpoint()
            time.sleep(0.005)
        return real(scheme, params, x)

    monkeypatch.setattr(ev, "fit", slow_fit)
    body = {"vectors": b64(SMALL), "k": 5, "candidates": [{"scheme": "lloyd", "params": {"bits": 2}}]}
    with TestClient(create_app(Settings(device="cpu", fit_workers=1, fit_queue_size=0))) as c:
        first = {}
        t = threading.Thread(target=lambda: first.setdefault("r", c.post("/evaluate", json=body)))
        t.start()
        try:
            assert started.wait(10)
            err(c.post("/evaluate", json=body), 429, "overloaded", "fits are running")
            enc = c.post("/quantize", json={"vectors": b64(SMALL[:4]), "scheme": "absmax"})
            assert enc.status_code == 200, enc.text
        finally:
            release.set()
            t.join(20)
        assert first["r"].status_code == 200, first["r"].text
