"""End to end with an embedded LanceDB (examples/lancedb): a real `embquant serve`, real
MiniLM embeddings of real sentences, the codec kept in a table, codes in a
fixed_size_binary column, 1-bit sketches in a binary vector column searched by
LanceDB's own Hamming distance, candidates rescored from their codes; each step
checked against the same computation in numpy. Skipped where lancedb is not installed
(`make example-lancedb` installs it)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

lancedb = pytest.importorskip("lancedb")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "lancedb"))
sys.path.insert(1, str(ROOT / "examples" / "postgres"))

import flow  # noqa: E402  (examples/postgres/flow.py: fit_codecs, exact_top, recall_at_k)
import lance_flow  # noqa: E402
from embquant_client import Client, Encoded  # noqa: E402

K, CANDIDATES = 10, 200


@pytest.fixture(scope="module")
def data():
    from tests.support import corpus

    v = corpus.minilm(2000)
    return v[200:], v[:200]  # 1,800 documents, 200 other sentences as queries


@pytest.fixture(scope="module")
def store(server, data, tmp_path_factory):
    x, _ = data
    path = tmp_path_factory.mktemp("lancedb")
    db = lancedb.connect(str(path))
    with Client(server.url, timeout=120) as client:
        codec, sketch = flow.fit_codecs(client, x[:1000], "transform", {"bits": 4})
        lance_flow.store_codecs(db, {"codes": codec, "sketch": sketch})
        tbl = lance_flow.ingest(db, client, x, codec, sketch, chunk_rows=500, concurrency=2)
        yield db, path, tbl, client, codec, sketch


def test_codec_comes_back_from_its_table(store, data):
    db, _, _, client, codec, sketch = store
    x, _ = data
    for name, fitted in (("codes", codec), ("sketch", sketch)):
        back = lance_flow.load_codec(db, name)
        assert back.codec == fitted.codec and back.codec_id == fitted.codec_id and back.layout == fitted.layout
    again = client.quantize(x[:300], codec=lance_flow.load_codec(db, "codes"))
    np.testing.assert_array_equal(again.codes, client.quantize(x[:300], codec=codec).codes)
    with pytest.raises(LookupError, match="no codec named 'nope'"):
        lance_flow.load_codec(db, "nope")


def test_rows_hold_the_codes_and_sketches_the_service_gives(store, data):
    _, _, tbl, client, codec, sketch = store
    x, _ = data
    t = tbl.to_arrow().sort_by("id")
    assert t.num_rows == len(x) and t["id"].to_pylist() == list(range(len(x)))
    codes = lance_flow._fixed_binary(t["codes"])
    assert codes.shape == (len(x), 192)  # 4 bits x 384, no side values
    np.testing.assert_array_equal(Encoded.from_bytes(codes, codec=codec).codes, client.quantize(x, codec=codec).codes)
    bits = client.quantize(x, codec=sketch).bits()
    stored = np.stack([np.asarray(v, np.uint8) for v in t["sketch"].to_pylist()])
    np.testing.assert_array_equal(np.unpackbits(stored, axis=1, bitorder="little")[:, :bits.shape[1]], bits)
    # LanceDB's Hamming distance == the differing bits counted here
    res = tbl.search(stored[7], vector_column_name="sketch").distance_type("hamming").limit(len(x)) \
        .select(["id", "_distance"]).to_arrow()
    want = (bits != bits[7]).sum(1)
    np.testing.assert_array_equal(np.rint(res["_distance"].to_numpy()).astype(np.int64), want[res["id"].to_numpy()])


def test_search_is_the_two_pass_search_done_in_numpy(store, data):
    _, _, tbl, client, codec, sketch = store
    x, q = data
    found, _ = lance_flow.search(tbl, client, q, codec, sketch, k=K, candidates=CANDIDATES, batch=32)
    xb = client.quantize(x, codec=sketch).bits()
    qb = client.quantize(q, codec=sketch).bits()
    decoded = client.dequantize(client.quantize(x, codec=codec)).astype(np.float64)
    decoded /= np.linalg.norm(decoded, axis=1, keepdims=True)
    for j in range(len(q)):
        ham = (xb != qb[j]).sum(1)
        cut = np.sort(ham)[CANDIDATES - 1]
        sure = np.flatnonzero(ham < cut)  # in every first pass, whatever the ties at the cut
        s = decoded @ q[j]
        assert set(found[j]) <= set(np.flatnonzero(ham <= cut))
        assert s[sure].max() <= s[found[j]].max() + 1e-6
        assert np.sum(s[sure] > s[found[j]].min() + 1e-5) <= K - 1
        assert list(found[j]) == sorted(found[j], key=lambda i: (-s[i], i))  # best first


def test_recall_and_storage(store, data):
    _, path, tbl, client, codec, sketch = store
    x, q = data
    truth = flow.exact_top(x, q, K)
    found, stats = lance_flow.search(tbl, client, q, codec, sketch, k=K, candidates=CANDIDATES, truth=truth)
    assert flow.recall_at_k(found, truth) >= 0.95
    assert stats["first_pass_recall"] >= flow.recall_at_k(found, truth)
    st = lance_flow.storage(path, tbl)
    assert (st["rows"], st["codes_bytes"], st["sketch_bytes"]) == (len(x), 192, 48)
    assert st["disk_bytes_per_row"] < 4 * x.shape[1] / 2  # well under the float32 vector alone
