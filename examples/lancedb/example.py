"""embquant codes in an embedded LanceDB, end to end (`make example-lancedb`).

The Postgres example's data and service (examples/postgres: real sentences, MiniLM
embeddings, `embquant serve` on a free port unless --server), with LanceDB (from PyPI,
embedded: a directory, no server) as the store: a codec fitted once and kept in a
table; the documents ingested through the service as codes (fixed_size_binary) and
1-bit sketches (a binary vector column); held-out queries answered by LanceDB's own
Hamming search over the sketches, then a rescoring of the candidates from their codes;
recall@10 against exact float search, storage per vector and queries/s.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent / "postgres"))  # the data, the service and the measures

import numpy as np  # noqa: E402

import corpus_split  # noqa: E402
import embed  # noqa: E402
import lance_flow  # noqa: E402
from flow import exact_top, fit_codecs, print_runs, timed_runs  # noqa: E402  (examples/postgres/flow.py)
from embquant_client import Client, EmbquantClientError  # noqa: E402


def _postgres_example():
    """examples/postgres/example.py (its Service, log and parse_params), by path: both
    scripts are named example.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("postgres_example", HERE.parent / "postgres" / "example.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


_pg = _postgres_example()
Service, log = _pg.Service, _pg.log


def main(argv=None) -> int:
    ap = _pg.arguments(__doc__.splitlines()[0], "queries per /dequantize call")
    ap.add_argument("--db", type=Path, help="LanceDB directory (default: a temporary one, removed at exit)")
    a, params = _pg.parse(ap, argv)
    import lancedb

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    queries_txt, docs_txt = corpus_split.split(a.docs, a.queries)
    log(f"corpus: {len(docs_txt):,} documents and {len(queries_txt):,} held-out queries (examples/postgres/texts.py)")
    allv = embed.embed(queries_txt + docs_txt, corpus_split.CACHE, log=log)
    q, x = allv[:len(queries_txt)], allv[len(queries_txt):]
    log(f"embedded with all-MiniLM-L6-v2: {x.shape[0]:,} x {x.shape[1]} float32")
    service = None
    tmp = None
    try:
        if a.server:
            url = a.server
        else:
            service = Service()
            url = service.url
            log(f"embquant serve on {url}")
        if a.db is None:
            tmp = tempfile.TemporaryDirectory(prefix="embquant-lancedb-")
            db_dir = Path(tmp.name)
        else:
            db_dir = a.db
            if db_dir.exists() and any(db_dir.iterdir()):
                ap.error(f"--db {db_dir} is not empty")
        db = lancedb.connect(str(db_dir))
        with Client(url, timeout=600) as client:
            return run(a, params, db, db_dir, client, q, x, lancedb.__version__)
    finally:
        if service is not None:
            service.stop()
        if tmp is not None:
            tmp.cleanup()


def run(a, params, db, db_dir, client, q, x, version: str) -> int:
    sample = x[np.random.default_rng(1).choice(len(x), min(a.fit_rows, len(x)), replace=False)]
    t0 = time.perf_counter()
    codec, sketch = fit_codecs(client, sample, a.scheme, params)
    lance_flow.store_codecs(db, {"codes": codec, "sketch": sketch})
    log(f"fitted {a.scheme} {params} on {len(sample):,} rows in {time.perf_counter() - t0:.1f} s; codecs in table codecs")
    t0 = time.perf_counter()
    tbl = lance_flow.ingest(db, client, x, codec, sketch, log=log)
    t_ingest = time.perf_counter() - t0
    n = tbl.count_rows()
    log(f"ingested {n:,} rows in {t_ingest:.1f} s ({n / t_ingest:,.0f} rows/s, quantize + add)")
    codec, sketch = lance_flow.load_codec(db, "codes"), lance_flow.load_codec(db, "sketch")
    truth = exact_top(x, q, a.k)
    lance_flow.search(tbl, client, q[:a.batch], codec, sketch, k=a.k, candidates=a.candidates[0], batch=a.batch)
    runs = timed_runs(lambda qq, m, tr: lance_flow.search(tbl, client, qq, codec, sketch, k=a.k, candidates=m,
                                                          batch=a.batch, metric=a.metric, truth=tr),
                      q, truth, a.candidates)
    st = lance_flow.storage(db_dir, tbl)
    res = {"docs": n, "queries": len(q), "dim": x.shape[1], "scheme": a.scheme, "params": params,
           "code_bits_per_dim": 8 * st["codes_bytes"] / x.shape[1], "k": a.k, "batch": a.batch, "metric": a.metric,
           "runs": runs, "ingest_rows_per_s": n / t_ingest, "float32_bytes": 4 * x.shape[1], **st, "lancedb": version}
    print()
    print(f"documents {n:,} x {x.shape[1]} (all-MiniLM-L6-v2), {len(q):,} held-out queries, LanceDB {version}")
    print(f"codes     {a.scheme} {params}: {st['codes_bytes']} bytes ({res['code_bits_per_dim']:.2f} bits/dim) + sketch "
          f"{st['sketch_bytes']} bytes + id 8 = {st['codes_bytes'] + st['sketch_bytes'] + 8} bytes per vector; "
          f"float32 {4 * x.shape[1]:,} bytes")
    print(f"on disk   {st['disk_bytes_per_row']:.0f} bytes per row (the docs table's files)")
    print(f"ingest    {res['ingest_rows_per_s']:,.0f} rows/s (codes and sketches through the service, LanceDB add)")
    print(f"search    Hamming candidates from LanceDB (flat scan), rescored from their codes by {a.metric}:")
    print_runs(runs, a.k)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (EmbquantClientError, RuntimeError, LookupError) as e:
        print(f"example.py: error: {e}", file=sys.stderr)
        sys.exit(1)
