"""End to end with a real PostgreSQL (examples/postgres): a throwaway server from
Debian's package started by a fixture, a real `embquant serve`, real MiniLM
embeddings of real sentences. The codec kept in a table, codes in bytea, 1-bit
sketches in bit(D) searched by Hamming distance in SQL, candidates rescored from
their codes; every step checked against the same computation done here in numpy."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "postgres"))

import pgtemp  # noqa: E402

try:
    pgtemp.find_bindir()
except pgtemp.PostgresUnavailable as e:  # CI installs it (.ci/run); a bare machine may not have it
    pytest.skip(f"PostgreSQL server binaries unavailable: {e}", allow_module_level=True)

import psycopg  # noqa: E402

import flow  # noqa: E402
from embquant_client import Client, Encoded  # noqa: E402

K, CANDIDATES = 10, 200


def unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def pg():
    with pgtemp.TempPostgres() as p:
        yield p


@pytest.fixture(scope="module")
def data():
    from tests.support import corpus

    v = corpus.minilm(2000)
    return v[200:], v[:200]  # 1,800 documents, 200 other sentences as queries


@pytest.fixture(scope="module")
def store(pg, server, data):
    x, _ = data
    with psycopg.connect(pg.conninfo) as conn, Client(server.url, timeout=120) as client:
        flow.create_schema(conn, x.shape[1])
        codec, sketch = flow.fit_codecs(client, x[:1000], "transform", {"bits": 4})
        flow.store_codec(conn, "codes", codec)
        flow.store_codec(conn, "sketch", sketch)
        conn.commit()
        n = flow.ingest(conn, client, x, codec, sketch, chunk_rows=500, concurrency=2)
        yield conn, client, codec, sketch, n


def test_codec_comes_back_from_its_table_and_encodes_the_same(store, data):
    conn, client, codec, sketch, _ = store
    x, _ = data
    for name, fitted in (("codes", codec), ("sketch", sketch)):
        back = flow.load_codec(conn, name)
        assert back.codec == fitted.codec and back.codec_id == fitted.codec_id and back.layout == fitted.layout
    again = client.quantize(x[:300], codec=flow.load_codec(conn, "codes"))
    np.testing.assert_array_equal(again.codes, client.quantize(x[:300], codec=codec).codes)
    with pytest.raises(LookupError, match="no codec named 'nope'"):
        flow.load_codec(conn, "nope")


def test_rows_hold_the_codes_and_sketches_the_service_gives(store, data):
    conn, client, codec, sketch, n = store
    x, _ = data
    assert n == len(x) == conn.execute("SELECT count(*) FROM docs").fetchone()[0]
    rows = conn.execute("SELECT id, codes, sketch::text FROM docs ORDER BY id").fetchall()
    assert [r[0] for r in rows] == list(range(len(x)))
    direct = client.quantize(x, codec=codec)
    from_db = Encoded.from_bytes([r[1] for r in rows], codec=codec)
    np.testing.assert_array_equal(from_db.codes, direct.codes)
    assert len(rows[0][1]) == 8 * codec.layout["words"] + 4 * (codec.layout.get("side") or 0) == 192  # 4 bits x 384
    bits = client.quantize(x, codec=sketch).bits()
    as_text = np.array([[c == "1" for c in r[2]] for r in rows], np.uint8)
    np.testing.assert_array_equal(as_text, bits)
    assert 0.4 < bits.mean() < 0.6  # signs of rotated vectors: about half set
    # Hamming distance in SQL == counted here, for random pairs
    rng = np.random.default_rng(0)
    for a, b in rng.integers(0, len(x), (30, 2)).tolist():
        got = conn.execute("SELECT bit_count(d1.sketch # d2.sketch) FROM docs d1, docs d2 "
                           "WHERE d1.id = %s AND d2.id = %s", (a, b)).fetchone()[0]
        assert got == int((bits[a] != bits[b]).sum())


def test_search_is_the_two_pass_search_done_in_numpy(store, data):
    conn, client, codec, sketch, _ = store
    x, q = data
    found, _ = flow.search(conn, client, q, codec, sketch, k=K, candidates=CANDIDATES, batch=32)
    xb = client.quantize(x, codec=sketch).bits().astype(np.float64)
    qb = client.quantize(q, codec=sketch).bits().astype(np.float64)
    ham = np.rint(qb @ (1 - xb).T + (1 - qb) @ xb.T).astype(np.int64)  # (Q, N) differing bits
    decoded = unit(client.dequantize(client.quantize(x, codec=codec)))
    for j in range(len(q)):
        cut = np.sort(ham[j])[CANDIDATES - 1]
        sure = np.flatnonzero(ham[j] < cut)  # in every first pass, whatever the ties at the cut
        s = decoded @ q[j]
        assert set(found[j]) <= set(np.flatnonzero(ham[j] <= cut))
        # the answer is the best k of a pool holding `sure`: nothing in `sure` beats its k-th
        assert s[sure].max() <= s[found[j]].max() + 1e-6
        kth = s[found[j]].min()
        assert np.sum(s[sure] > kth + 1e-5) <= K - 1
        assert list(found[j]) == sorted(found[j], key=lambda i: (-s[i], i))  # best first


@pytest.mark.parametrize("metric", ["cosine", "dot"])
def test_all_rows_as_candidates_gives_the_codes_exact_ranking(store, data, metric):
    conn, client, codec, sketch, _ = store
    x, q = data
    found, _ = flow.search(conn, client, q[:20], codec, sketch, k=K, candidates=len(x), batch=20, metric=metric)
    decoded = client.dequantize(client.quantize(x, codec=codec)).astype(np.float64)
    if metric == "cosine":
        decoded = unit(decoded)
    want = flow.exact_top(decoded, q[:20], K)
    s = q[:20].astype(np.float64) @ decoded.T
    # the same scores, best first (ids may differ only where two scores tie to rounding)
    np.testing.assert_allclose(np.take_along_axis(s, found, 1), np.take_along_axis(s, want, 1), rtol=0, atol=1e-12)
    assert (found == want).mean() > 0.99
    with pytest.raises(ValueError, match="metric must be"):
        flow.search(conn, client, q[:2], codec, sketch, metric="l2")


def test_recall_against_exact_float_search(store, data):
    conn, client, codec, sketch, _ = store
    x, q = data
    truth = flow.exact_top(x, q, K)
    found, stats = flow.search(conn, client, q, codec, sketch, k=K, candidates=CANDIDATES, truth=truth)
    recall = flow.recall_at_k(found, truth)
    assert stats["first_pass_recall"] >= 0.97, stats
    assert recall >= 0.95, recall  # the target, 4 bits per dimension
    # and a first pass too small to hold the neighbours loses them: the measure can fail
    worse, _ = flow.search(conn, client, q, codec, sketch, k=K, candidates=K)
    assert flow.recall_at_k(worse, truth) < recall - 0.1


def test_storage_per_row(store, data):
    conn, *_ = store
    st = flow.storage(conn)
    assert st["rows"] == len(data[0])
    assert st["codes_bytes"] == 192 and st["sketch_bytes"] == 48
    assert 240 < st["heap_bytes_per_row"] < 4 * 384  # codes + sketch + row overhead, well under float32
