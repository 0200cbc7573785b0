"""The LanceDB flow of the example, shared with tests/e2e/test_lancedb.py.

Tables of one embedded LanceDB database (a directory):
  codecs(name string, codec_id string, layout string, codec string)   -- JSON text, once
  docs(id int64, sketch fixed_size_list<uint8>[D/8], codes fixed_size_binary[S])

`codes` is ``Encoded.row_bytes()``'s row (8*words little-endian int64 code words, then
4*side float32 side values), the same value as the Postgres example's bytea and as
`embquant-client quantize`'s Parquet column; `sketch` is the vector's 1-bit code from a
`binary rotate=true scale=none` codec, packed 8 bits a byte, which LanceDB searches
itself with its `hamming` distance (a flat scan of the column). A query is answered in
two passes: the `candidates` nearest sketches by Hamming distance, from LanceDB, then
those candidates' codes decoded by the service and scored against the float query
(cosine by default, as examples/postgres/flow.py). No float vector is stored.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa

from embquant_client import Client, Codec, Encoded
from flow import rescore  # examples/postgres/flow.py: the second pass, shared


def sketch_bytes(enc: Encoded) -> np.ndarray:
    """1-bit codes as (N, ceil(D/8)) uint8, element j in bit j % 8 of byte j // 8."""
    return np.packbits(enc.bits(), axis=1, bitorder="little")


def store_codecs(db, codecs: dict[str, Codec]) -> None:
    names = list(codecs)
    db.create_table("codecs", pa.table({
        "name": names,
        "codec_id": [codecs[n].codec_id for n in names],
        "layout": [json.dumps(codecs[n].layout) for n in names],
        # JSON text: the codec's floats come back digit for digit
        "codec": [json.dumps(codecs[n].codec, allow_nan=False) for n in names],
    }))


def load_codec(db, name: str) -> Codec:
    rows = [r for r in db.open_table("codecs").to_arrow().to_pylist() if r["name"] == name]
    if not rows:
        raise LookupError(f"no codec named {name!r} in table codecs")
    r = rows[0]
    return Codec(codec=json.loads(r["codec"]), layout=json.loads(r["layout"]), codec_id=r["codec_id"])


def _rows(ids: np.ndarray, sketch: np.ndarray, codes: np.ndarray) -> pa.Table:
    n, nb = sketch.shape
    size = codes.shape[1]
    return pa.table({
        "id": pa.array(ids, pa.int64()),
        "sketch": pa.FixedSizeListArray.from_arrays(pa.array(sketch.reshape(-1), pa.uint8()), nb),
        "codes": pa.FixedSizeBinaryArray.from_buffers(pa.binary(size), n, [None, pa.py_buffer(codes.tobytes())]),
    })


def ingest(db, client: Client, x: np.ndarray, codec: Codec, sketch: Codec, *, chunk_rows: int = 8192,
           concurrency: int = 2, log=None):
    """Quantize `x` through the service (codes and sketches, ``quantize_bulk``) into a
    new table docs, ids 0.. in row order, one `add` per block. Returns the table."""
    tbl = None
    n = 0
    codes_it = client.quantize_bulk(x, codec, chunk_rows=chunk_rows, concurrency=concurrency)
    sketch_it = client.quantize_bulk(x, sketch, chunk_rows=chunk_rows, concurrency=concurrency)
    for enc, sk in zip(codes_it, sketch_it):
        if len(enc) != len(sk):
            raise RuntimeError(f"blocks of {len(enc)} codes and {len(sk)} sketches")
        batch = _rows(np.arange(n, n + len(enc)), sketch_bytes(sk), enc.row_bytes())
        if tbl is None:
            tbl = db.create_table("docs", batch)
        else:
            tbl.add(batch)
        n += len(enc)
        if log:
            log(f"ingested {n:,}/{len(x):,}")
    return tbl


def _fixed_binary(col) -> np.ndarray:
    """A fixed_size_binary column as an (N, width) uint8 array (no copy of each value)."""
    arr = col.combine_chunks()
    w = arr.type.byte_width
    return np.frombuffer(arr.buffers()[1], np.uint8, len(arr) * w, arr.offset * w).reshape(len(arr), w)


def search(tbl, client: Client, queries: np.ndarray, codec: Codec, sketch: Codec, *, k: int = 10,
           candidates: int = 200, batch: int = 32, metric: str = "cosine",
           truth: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """(Q, k) doc ids per query, best first, and timings: each query's `candidates`
    nearest sketches by Hamming distance from LanceDB (with their codes), one
    /dequantize call per batch of queries for their distinct candidates, then each
    query's k best candidates by `metric`. With `truth`, also `first_pass_recall`."""
    if metric not in ("cosine", "dot"):
        raise ValueError(f"metric must be 'cosine' or 'dot', not {metric!r}")
    out = np.full((len(queries), k), -1, np.int64)
    t_first = t_rescore = 0.0
    hits = 0
    for lo in range(0, len(queries), batch):
        q = np.ascontiguousarray(queries[lo:lo + batch], dtype=np.float32)
        t0 = time.perf_counter()
        qs = sketch_bytes(client.quantize(q, codec=sketch))
        found = [tbl.search(s, vector_column_name="sketch").distance_type("hamming").limit(candidates)
                 .select(["id", "codes", "_distance"]).to_arrow() for s in qs]
        t1 = time.perf_counter()
        ids = np.concatenate([f["id"].to_numpy() for f in found]).astype(np.int64)
        qi = np.concatenate([np.full(f.num_rows, j, np.int64) for j, f in enumerate(found)])
        codes = np.concatenate([_fixed_binary(f["codes"]) for f in found])
        hits += rescore(client, codec, q, qi, ids, codes, out[lo:lo + len(q)], metric,
                        None if truth is None else truth[lo:lo + len(q)])
        t_rescore += time.perf_counter() - t1
        t_first += t1 - t0
    stats = {"first_pass_s": t_first, "rescore_s": t_rescore}
    if truth is not None:
        stats["first_pass_recall"] = hits / truth.size
    return out, stats


def storage(db_dir, tbl) -> dict:
    """Bytes per row: the payload (codes, sketch, id) and the docs table's files on disk."""
    from pathlib import Path

    n = tbl.count_rows()
    sch = tbl.schema
    codes = sch.field("codes").type.byte_width
    sketch = sch.field("sketch").type.list_size
    files = [p for p in (Path(db_dir) / "docs.lance").rglob("*") if p.is_file()]
    disk = sum(p.stat().st_size for p in files)
    return {"rows": n, "codes_bytes": codes, "sketch_bytes": sketch, "disk_bytes_per_row": disk / max(n, 1)}
